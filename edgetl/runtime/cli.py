"""`edgetl-device`: the device-side CLI. Imports no torch, timm or onnx (a test enforces it)."""

from __future__ import annotations

import click

from edgetl.clikit import run_group, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Run, evaluate and adapt an edgetl bundle on the device.

    Add --debug anywhere to see tracebacks.
    """
    setup_logging(verbose)


from edgetl.runtime.commands import evaluate_cmd, predict_cmd  # noqa: E402

cli.add_command(predict_cmd)
cli.add_command(evaluate_cmd)

from edgetl.runtime.engine_cmd import build_engine_cmd  # noqa: E402

cli.add_command(build_engine_cmd)

from edgetl.ondevice.cli import COMMANDS as ONDEVICE_COMMANDS  # noqa: E402

for _command in ONDEVICE_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    run_group(cli)
