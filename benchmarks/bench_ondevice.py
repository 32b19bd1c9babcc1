"""On-device adaptation figures on a real hymenoptera INT8 bundle (docs/benchmarks.md).

  1. add-class: a third class from 10 images; its held-out recognition, ants/bees before/after
  2. retrain on 100 images: wall time with embeddings cached, fit time, peak RSS of the whole
     `edgetl-device retrain` process (/usr/bin/time -v), torch/timm/onnx never imported
  3. SIGKILL at seeded random moments during retrain: corrupt stores after each kill
  4. guardrail: retrain on ants/bees with swapped labels is refused, the old head stays

Every step runs the real `edgetl-device` CLI in a subprocess on a copy of the bundle.

  python benchmarks/bench_ondevice.py --bundle dist/h-int8
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgetl.backends import Backbone
from edgetl.bundle import Bundle
from edgetl.ondevice.embedcache import embed_files
from edgetl.ondevice.guardrail import accuracy
from tests.killtest import kill_retrain
from edgetl.bundle.heads import HeadStore
from edgetl.core.images import scan_images

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEVICE_CLI = str(Path(sys.executable).with_name("edgetl-device"))
# Runs the device CLI and reports, at exit, whether any host-only package got imported.
PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('HOST_MODULES=' + ','.join(m for m in ('torch', 'timm', 'onnx') "
         "if m in sys.modules), file=sys.stderr))\n"
         "from edgetl.cli.device import main\n"
         "sys.argv[0] = 'edgetl-device'\n"
         "main()\n")
ENV = {**os.environ, "COLUMNS": "300"}
console = Console()


def device(*args) -> subprocess.CompletedProcess:
    return subprocess.run([DEVICE_CLI, *map(str, args)], capture_output=True, text=True, env=ENV)


def fresh_copy(bundle: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("heads", "cache"))
    return dst


def folder(root: Path, classes: dict[str, list[Path]]) -> Path:
    for label, paths in classes.items():
        (root / label).mkdir(parents=True)
        for p in paths:
            shutil.copyfile(p, root / label / p.name)
    return root


def labelled_accuracy(bundle: Path, items: dict[str, list[Path]]) -> dict[str, float]:
    """Top-1 of the bundle's active head per true label, through the device embedding path."""
    b = Bundle.open(bundle)
    _, head = b.active_head()
    out = {}
    for label, paths in items.items():
        emb, _ = embed_files(b, paths, lambda: Backbone.open(b))
        out[label] = accuracy(head, emb, [label] * len(paths))
    return out


def bench_add_class(bundle: Path, work: Path, new_class: Path, shots: int, seed: int) -> list[tuple]:
    b = fresh_copy(bundle, work, "add-class")
    images, _ = scan_images(new_class)
    rng = random.Random(seed)
    rng.shuffle(images)
    support, held = images[:shots], images[shots:]
    val = {lab: scan_images(DATA / "hymenoptera_data" / "val" / lab)[0] for lab in ("ants", "bees")}
    before = labelled_accuracy(b, val)
    t0 = time.perf_counter()
    result = device("add-class", b, "sign 5", *support, "--json")
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"add-class failed: {result.stderr}")
    after = labelled_accuracy(b, {**val, "sign 5": held})
    n_val = sum(len(v) for v in val.values())
    old_before = sum(before[k] * len(val[k]) for k in val) / n_val
    old_after = sum(after[k] * len(val[k]) for k in val) / n_val
    return [
        ("1 add-class", f"'sign 5' recognised on its {len(held)} held-out images ({shots} shots)",
         f"{100 * after['sign 5']:.1f}%", ">= 90%", after["sign 5"] >= 0.90),
        ("1 add-class", f"ants/bees top-1 on {n_val} val images, before -> after",
         f"{100 * old_before:.1f}% -> {100 * old_after:.1f}%", "within 2 points",
         abs(old_before - old_after) * 100 <= 2.0),
        ("1 add-class", "add-class wall time (process, 10 images embedded)", f"{seconds:.2f} s", "", True),
    ]


def bench_retrain(bundle: Path, work: Path, new_class: Path) -> list[tuple]:
    b = fresh_copy(bundle, work, "retrain")
    train = DATA / "hymenoptera_data" / "train"
    data = folder(work / "retrain-data", {
        "ants": scan_images(train / "ants")[0][:35], "bees": scan_images(train / "bees")[0][:35],
        "sign 5": scan_images(new_class)[0][-30:],
    })

    def timed_run():
        cmd = ["/usr/bin/time", "-v", sys.executable, "-c", PROBE, "retrain", str(b), str(data), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"retrain failed: {proc.stderr[-2000:]}")
        rss_mb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
        host = re.search(r"HOST_MODULES=(.*)", proc.stderr).group(1).strip()
        return wall, rss_mb, host, json.loads(proc.stdout)

    cold_wall, cold_rss, cold_host, _ = timed_run()
    shutil.rmtree(b / "heads")  # the cached run starts from the same factory head; the cache stays
    warm_wall, warm_rss, warm_host, summary = timed_run()
    m = summary["metrics"]
    ref = next(c for c in m["guardrail"]["checks"] if c["name"] == "reference")
    return [
        ("2 retrain", f"{m['images']} images, embeddings computed (cold cache): wall, peak RSS",
         f"{cold_wall:.2f} s, {cold_rss:.0f} MB", "<= 300 MB", cold_rss <= 300),
        ("2 retrain", "same, embeddings cached: whole process wall time", f"{warm_wall:.2f} s", "<= 5 s",
         warm_wall <= 5.0),
        ("2 retrain", "  of which fit (softmax regression) + guardrail",
         f"{m['fit_seconds']:.3f} s ({m['steps']} steps)", "", True),
        ("2 retrain", "  peak RSS (cached run)", f"{warm_rss:.0f} MB", "<= 300 MB", warm_rss <= 300),
        ("2 retrain", "host modules imported (torch, timm, onnx)", cold_host or warm_host or "none", "none",
         not (cold_host or warm_host)),
        ("2 retrain", "held-out top-1 of the new head", f"{100 * m['held_out_top1']:.1f}%", "", True),
        ("2 retrain", f"reference set ({ref['n']} val embeddings) old-class top-1, factory -> new head",
         f"{100 * ref['old_accuracy']:.1f}% -> {100 * ref['new_accuracy']:.1f}%", "within 2 points",
         ref["drop_points"] <= 2.0),
    ]


def bench_kills(bundle: Path, work: Path, new_class: Path, kills: int, seed: int) -> list[tuple]:
    b = fresh_copy(bundle, work, "kill")
    train = DATA / "hymenoptera_data" / "train"
    data = folder(work / "kill-data", {
        "ants": scan_images(train / "ants")[0][:10], "bees": scan_images(train / "bees")[0][:10],
        "sign 5": scan_images(new_class)[0][:10],
    })
    r = kill_retrain(DEVICE_CLI, b, data, kills, seed, ENV)
    return [
        ("3 kill test", f"SIGKILLs during retrain (seed {seed}): anywhere, in the {r.window_s:.2f} s fit+write "
         "window, or <= 10 ms into the head write",
         f"{r.kills} kills, {r.completed} runs completed", ">= 50", r.kills >= 50),
        ("3 kill test", "kills that left crash leftovers (temp / unindexed head file)", str(r.leftovers), "", True),
        ("3 kill test", "corrupt stores after a kill (open, active loads, all versions intact)", str(r.corrupt), "0",
         r.corrupt == 0),
    ]


def bench_guardrail(bundle: Path, work: Path) -> list[tuple]:
    b = fresh_copy(bundle, work, "guardrail")
    train = DATA / "hymenoptera_data" / "train"
    # Ants filed as bees and bees as ants.
    data = folder(work / "mislabelled", {"ants": scan_images(train / "bees")[0][:40],
                                          "bees": scan_images(train / "ants")[0][:40]})
    result = device("retrain", b, data, "--json")
    summary = json.loads(result.stdout)
    ref = next(c for c in summary["metrics"]["guardrail"]["checks"] if c["name"] == "reference")
    active = HeadStore(b).active_version()
    return [
        ("4 guardrail", "retrain on 80 ants/bees images with swapped labels: exit code", str(result.returncode),
         "3 (refused)", result.returncode == 3),
        ("4 guardrail", f"reference set ({ref['n']} val embeddings) old -> new head",
         f"{100 * ref['old_accuracy']:.1f}% -> {100 * ref['new_accuracy']:.1f}%", "refused if drop > 2 points",
         True),
        ("4 guardrail", "active head version afterwards", str(active), "0 (factory)", active == 0),
    ]


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A hymenoptera (ants, bees) bundle, e.g. from `edgetl export runs/h-lin --target rpi5 "
                   "--precision int8`.")
@click.option("--new-class", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=DATA / "sign_language_digits" / "5", show_default=True)
@click.option("--shots", default=10, show_default=True)
@click.option("--kills", default=60, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(bundle: Path, new_class: Path, shots: int, kills: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ondevice-") as tmp:
        work = Path(tmp)
        rows = bench_add_class(bundle, work, new_class, shots, seed)
        rows += bench_retrain(bundle, work, new_class)
        rows += bench_kills(bundle, work, new_class, kills, seed)
        rows += bench_guardrail(bundle, work)
    table = Table(title=f"on-device adaptation, {bundle} ({Bundle.open(bundle).manifest.precision})")
    for col in ("part", "measure", "value", "required", "ok"):
        table.add_column(col)
    for part, what, value, need, ok in rows:
        table.add_row(part, what, value, need, "yes" if ok else "[red]NO[/]")
    console.print(table)
    if not all(r[-1] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
