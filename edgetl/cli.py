"""`edgetl`: the host CLI. Thin: parse options, call the library, print."""

from __future__ import annotations

import click

from edgetl.clikit import run_group, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """edgetl: fine-tune a compact backbone, compile it per edge device, ship a bundle.

    \b
    Typical flow:
      edgetl finetune images/ --out runs/a            # train (transfer learning)
      edgetl export runs/a --target rpi5 --out dist/rpi5
      edgetl-device predict dist/rpi5 photo.jpg       # on the board, no torch
      edgetl build edgetl.yaml                        # every target + report, for CI

    Add --debug anywhere to see tracebacks.
    """
    setup_logging(verbose)


from edgetl.export.commands import targets_cmd  # noqa: E402  (commands register after the group exists)

cli.add_command(targets_cmd)


def main() -> None:
    run_group(cli)
