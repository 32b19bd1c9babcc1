"""Host commands for targets and export: parse options, call the library, print."""

from __future__ import annotations

import json

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
    table = Table(title="edgetl targets")
    for col in ("name", "runtime", "cpu / gpu", "precisions", "default", "threads", "layout",
                "budget ms", "tol. pts", "calibration"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.name, t.runtime, t.cpu or t.gpu_arch or "-", ", ".join(t.precisions), t.default_precision,
                      str(t.threads), t.layout, f"{t.latency_budget_ms:g}", f"{t.accuracy_tolerance_pts:g}",
                      t.calibration)
    stdout.print(table)
