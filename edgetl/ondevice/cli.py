"""The `edgetl-device` commands that adapt the head: add-class, retrain, heads, rollback.

Exit codes: 0 done, 1 error, 3 the guardrail refused the new head (the old one stays active).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from edgetl.clikit import stderr, stdout
from edgetl.errors import EdgetlError
from edgetl.ondevice import guardrail
from edgetl.ondevice.localdata import MIN_IMAGES

GUARDRAIL_EXIT = 3

_bundle_arg = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
_guard_opts = [
    click.option("--tolerance", type=click.FloatRange(0, 100), default=guardrail.DEFAULT_TOLERANCE, show_default=True,
                 help="Percentage points of old-class accuracy the new head may lose."),
    click.option("--force", is_flag=True, help="Activate the new head even if the guardrail refuses it."),
    click.option("--min-images", type=click.IntRange(1), default=MIN_IMAGES, show_default=True,
                 help="Fewest usable images a class needs."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _guarded(f):
    for opt in reversed(_guard_opts):
        f = opt(f)
    return f


def _finish(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    m = summary["metrics"]
    checks = m["guardrail"]["checks"]
    if not as_json:
        table = Table(title=f"{summary['action']}: guardrail (old-class accuracy)", title_justify="left")
        for col in ("set", "n", "before", "after", "drop (points)"):
            table.add_column(col, justify="left" if col == "set" else "right")
        for c in checks:
            table.add_row(c["name"], str(c["n"]), f"{100 * c['old_accuracy']:.1f}%", f"{100 * c['new_accuracy']:.1f}%",
                          f"{c['drop_points']:.1f}")
        stdout.print(table)
    if summary["activated"]:
        note = " [bold red](FORCED past the guardrail)[/]" if summary["forced"] else ""
        stderr.print(f"head version {summary['version']} is active (parent {summary['parent']}); "
                     f"fitted in {m['fit_seconds']:.2f}s{note}")
        return
    print(f"error: guardrail refused the new head; version {summary['parent']} stays active. "
          f"{' '.join(m['guardrail']['reasons'])}. Check the labels of the local data, or pass --force",
          file=sys.stderr)
    sys.exit(GUARDRAIL_EXIT)


@click.command("add-class")
@_bundle_arg
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_guarded
def add_class_cmd(bundle, name, images, tolerance, force, min_images, as_json):
    """Add class NAME to the head from a few IMAGES (files or folders) by weight imprinting."""
    from edgetl.ondevice.imprint import add_class

    _finish(add_class(bundle, name, list(images), min_images=min_images, tolerance=tolerance, force=force), as_json)


@click.command("retrain")
@_bundle_arg
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split.")
@_guarded
def retrain_cmd(bundle, data, seed, tolerance, force, min_images, as_json):
    """Refit the head on DATA/<class>/* (old and new classes) and activate it if it passes the guardrail."""
    from edgetl.ondevice.retrain import retrain

    _finish(retrain(bundle, data, min_images=min_images, seed=seed, tolerance=tolerance, force=force), as_json)


@click.command("heads")
@_bundle_arg
@click.option("--json", "as_json", is_flag=True, help="Print the index (and integrity) as JSON.")
def heads_cmd(bundle, as_json):
    """List the head versions in BUNDLE, the active one marked."""
    from edgetl.ondevice.store import HeadStore

    store = HeadStore(bundle)
    if not store.exists():
        if as_json:
            click.echo(json.dumps({"active": 0, "versions": [], "factory_only": True}))
        else:
            stderr.print("no head store yet: the factory head (version 0) is active")
        return
    index = store.index()
    problems = store.verify()
    if as_json:
        click.echo(json.dumps({**index, "problems": problems}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"heads in {store.dir} (* active)", title_justify="left")
    for col in ("", "ver", "parent", "created (UTC)", "source", "classes", "held-out", "reference", "sha256"):
        table.add_column(col, overflow="fold")
    for e in index["versions"]:
        m = e.get("metrics") or {}
        held = m.get("held_out_top1")
        checks = {c["name"]: c for c in (m.get("guardrail") or {}).get("checks", [])}
        ref = f"{100 * checks['reference']['new_accuracy']:.1f}%" if "reference" in checks else ""
        if m.get("forced"):
            ref += " [red]FORCED[/]"
        table.add_row("*" if e["version"] == index["active"] else "", str(e["version"]),
                      "" if e["parent"] is None else str(e["parent"]), e["created"][:16].replace("T", " "),
                      e["source"], str(len(e["labels"])), "" if held is None else f"{100 * held:.1f}%", ref,
                      e["sha256"][:8])
    stdout.print(table)
    for p in problems:
        stderr.print(f"[red]problem:[/] {p}")


@click.command("rollback")
@_bundle_arg
@click.argument("version", type=int, required=False)
def rollback_cmd(bundle, version):
    """Make VERSION (default: the active head's parent) the active head again."""
    from edgetl.ondevice.bundle import open_bundle

    b = open_bundle(bundle)
    if not b.store.exists():
        raise EdgetlError(f"'{bundle}' has no head store; the factory head is already active")
    with b.store.writer(b.factory) as writer:
        index = b.store.index()
        active = index["active"]
        if version is None:
            version = b.store.entry(active, index)["parent"]
            if version is None:
                raise EdgetlError(f"version {active} (the factory head) is active and has no parent; "
                                  "pass a VERSION to roll forward")
        writer.activate(version)
    stderr.print(f"head version {version} is active (was {active})")


COMMANDS = (add_class_cmd, retrain_cmd, heads_cmd, rollback_cmd)
