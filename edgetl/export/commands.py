"""Host commands for targets and export: parse options, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from edgetl.clikit import stdout
from edgetl.targets import list_targets


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets_cmd(as_json: bool) -> None:
    """List the deployment targets (targets/*.yaml)."""
    targets = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in targets], indent=2))
        return
    table = Table(title="edgetl targets", caption="* the default precision · budget: latency per image, ms · "
                                                  "tol.: accepted top-1 loss when quantized, points")
    for col in ("name", "runtime", "chip", "precisions", "threads", "layout", "budget", "tol.", "calibration"):
        table.add_column(col, no_wrap=col in ("name", "precisions", "runtime"))  # names are what --target takes
    for t in targets:
        precisions = ", ".join(f"{p}*" if p == t.default_precision else p for p in t.precisions)
        table.add_row(t.name, t.runtime, t.cpu or t.gpu_arch or "-", precisions, str(t.threads), t.layout,
                      f"{t.latency_budget_ms:g}", f"{t.accuracy_tolerance_pts:g}", t.calibration)
    stdout.print(table)


@click.command("export")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--target", "target", required=True, help="Target name (see `edgetl targets`) or a target YAML path.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), help="Default: the target's.")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration images (default: the run's training split).")
@click.option("--calib-recipe", help="Calibration recipe name or YAML path (default: the target's).")
@click.option("--val", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Validation class folders (default: the run's validation split).")
@click.option("--fused", is_flag=True, help="Also write a single-file model (image -> logits).")
@click.option("--allow-accuracy-drop", is_flag=True, help="Exit 0 even if the quantized model misses the tolerance.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(run: Path, target: str, out: Path, precision: str | None, calib: Path | None, calib_recipe: str | None,
               val: Path | None, fused: bool, allow_accuracy_drop: bool, as_json: bool) -> None:
    """Export RUN as a bundle for a target, evaluated with the device runtime."""
    from edgetl.export.pipeline import ExportOptions, export_run

    manifest = export_run(run, ExportOptions(target=target, out=out, precision=precision, calib=calib,
                                             calib_recipe=calib_recipe, fused=fused,
                                             allow_accuracy_drop=allow_accuracy_drop, val=val))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    m = manifest["metrics"]
    table = Table(title=f"{out}: {manifest['target']['name']} {manifest['precision']} ({manifest['format']})")
    for col in ("model", "top1", "balanced acc.", "size MB", "host ms/img"):
        table.add_column(col)
    for prec in dict.fromkeys(["fp32", manifest["precision"]]):
        table.add_row(prec, f"{m[prec]['top1']:.4f}", f"{m[prec]['balanced_accuracy']:.4f}",
                      f"{m['size_bytes'][prec] / 1e6:.2f}", f"{m[prec]['latency_ms']['inference_mean']:.1f}")
    stdout.print(table)
    if "gate" in m:
        g = m["gate"]
        verdict = "[green]pass[/]" if g["passed"] else "[red]FAIL (accepted)[/]"
        stdout.print(f"accuracy gate: drop {g['drop_pts']:.2f} pts, tolerance {g['tolerance_pts']:g} pts: {verdict}")
