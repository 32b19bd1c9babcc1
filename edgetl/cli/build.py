"""`edgetl build`: the click shell over edgetl.build (registered on the host CLI in host.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgetl.cli.common import escape, json_text, one_line, progress_bars, stdout


def _result_files(paths) -> list[Path]:
    """--device-results values: files, or folders whose *.json files are taken (sorted)."""
    out = []
    for p in paths:
        out += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return out


@click.command("build", context_settings={"max_content_width": 100})
@click.argument("project", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"), show_default=True,
              help="Output folder: OUT/<target>/ bundles, OUT/candidates/, summary.json, report.md, junit.xml.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Exports run in this many worker processes at once.")
@click.option("--device-results", "device_results", multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="`edgetl-device benchmark --json` output of a bundle (a file, or a folder of *.json); repeat it. "
                   "Board latency then replaces host latency for selection and the budget gate.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage cache (default $EDGETL_CACHE/build, else ~/.cache/edgetl/build).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json.")
def build_cmd(project: Path, out: Path, jobs: int, device_results, cache_dir, as_json: bool) -> None:
    """Build every target's bundle from a project file (edgetl.yaml).

    Fine-tunes each candidate once, exports it to every target, verifies each bundle with
    the device runtime, times it on this host, picks per target the most accurate candidate
    that fits the latency budget (decided on the selection split, reported on validation),
    applies the gates and writes OUT/<target>/, summary.json, report.md and junit.xml.
    Every stage is cached by the content of its inputs: a rerun with nothing changed takes
    seconds. Exit 1 when a gate fails (one stderr line per failure), 2 for a bad project file.

    \b
    Examples:
      edgetl build edgetl.yaml --out dist
      edgetl build edgetl.yaml --out dist --jobs 2 --json > summary.json
      edgetl build edgetl.yaml --out dist --device-results bench/   # after edgetl-device benchmark on the boards
    """
    from rich.table import Table

    from edgetl.build import build
    from edgetl.yamlcfg import ConfigError

    try:
        with progress_bars():
            result = build(project, out, jobs=jobs, device_results=_result_files(device_results), cache_dir=cache_dir)
    except ConfigError as exc:
        raise click.UsageError(one_line(exc)) from None
    summary = result.summary
    if as_json:
        click.echo(json_text(summary))
    else:
        table = Table(title=escape(f"edgetl build: {out}"),
                      caption="top-1 on the validation split · latency: median on this host (or the device, marked d)")
        for col in ("target", "candidate", "precision", "FP32", "quantized", "drop", "ms", "budget", "gates"):
            table.add_column(col, no_wrap=col in ("target", "candidate"))
        for name, t in summary["targets"].items():
            m, prec = t.get("metrics") or {}, t["precision"]
            fp32, quant = (m.get("fp32") or {}).get("top1"), (m.get(prec) or {}).get("top1")
            lat = t.get("latency_ms") or {}
            ms = (f"{lat['device']['median']:.1f} d" if "device" in lat else
                  f"{lat['host']['median']:.1f}" if "host" in lat else "-")
            failed = [g["name"] for g in t["gates"] if not g["passed"]]
            table.add_row(escape(name), escape(t.get("candidate") or "-"), prec,
                          "-" if fp32 is None else f"{fp32:.4f}", "-" if quant is None else f"{quant:.4f}",
                          "-" if fp32 is None or quant is None else f"{100 * (fp32 - quant):.2f}", ms,
                          f"{t['latency_budget_ms']:g}", "[green]pass[/]" if not failed else
                          "[red]FAIL[/] " + escape(", ".join(failed)))
        stdout.print(table)
        reused = sum(1 for s in summary["stages"] if s["reused"])
        click.echo(f"{reused} of {len(summary['stages'])} stages reused; wrote {out}/ "
                   f"({', '.join(p.name for p in result.files)})")
    for message in result.failures:
        print(f"error: {one_line(message)}", file=sys.stderr)
    if not result.passed:
        sys.exit(1)
