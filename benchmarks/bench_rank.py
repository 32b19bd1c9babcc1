"""Transferability ranking vs the real thing, for docs/benchmarks.md ("Transferability ranking").

For each data set, every candidate is fine-tuned for real (`edgetl finetune --strategy linear`,
its validation top-1 is the truth), then `edgetl rank` scores the same candidates on the same
training split, once with a fresh cache (the cost of ranking from nothing) and once over the
fine-tunes' cache (a rank after anything embedded those images). Reported: Kendall's tau-b
between each score and the real top-1, the top-1 the top-ranked candidate gets against the
best candidate's, and the wall times. Every step is a real CLI process.

    .venv/bin/python benchmarks/bench_rank.py                        # hymenoptera and digits
    .venv/bin/python benchmarks/bench_rank.py --only hymenoptera --out rank.json
    .venv/bin/python benchmarks/bench_rank.py --only digits --shared-cache /tmp/rank-cache   # loaded machine
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgetl.rank import parse_candidate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EDGETL = str(Path(sys.executable).with_name("edgetl"))
# name -> (folder, extra args for both finetune and rank): the digits have no split, so both
# commands split them the same way (val_split 0.2, seed 0).
DATASETS = {
    "hymenoptera": (DATA / "hymenoptera_data", []),
    "digits": (DATA / "sign_language_digits", ["--val-split", "0.2", "--seed", "0"]),
}
CANDIDATES = ["tf_efficientnet_lite0@224", "tf_efficientnet_lite0@288", "tf_efficientnet_lite1",
              "tf_efficientnet_lite2"]


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) pairs over the pairs not tied in each variable."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    n = concordant + discordant
    denom = math.sqrt((n + ties_x) * (n + ties_y))
    return (concordant - discordant) / denom if denom else float("nan")


def timed(args: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([EDGETL, *args, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"edgetl {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def bench(name: str, candidates: list[str], work: Path, shared_cache: Path | None = None) -> dict:
    """Fine-tune each candidate, then rank them cold and warm (see the module docstring).

    With `shared_cache`, every step uses that one cache and rank runs first: the fine-tunes
    then embed only the validation images, and "cold" holds only what the cache lacked. Half
    the embedding work, for a loaded machine; the cost comparison then comes from a run without.
    """
    data, extra = DATASETS[name]
    ft_cache, rank_cache = work / f"{name}-ft-cache", work / f"{name}-rank-cache"
    load = [os.getloadavg()[0]]
    rank_args = ["rank", str(data), *[a for c in candidates for a in ("--candidate", c)], *extra]
    if shared_cache:
        ft_cache = rank_cache = shared_cache
        cold, cold_s = timed([*rank_args, "--cache-dir", str(rank_cache)])
        load.append(os.getloadavg()[0])
    truth = {}
    for cand in candidates:
        backbone, _, size = cand.partition("@")
        metrics, seconds = timed(["finetune", str(data), "--strategy", "linear", "--backbone", backbone,
                                  *(["--input-size", size] if size else []), *extra,
                                  "--out", str(work / f"{name}-{cand}"), "--cache-dir", str(ft_cache)])
        truth[cand] = {"top1": metrics["top1"], "n": metrics["n"], "seconds": seconds}
        load.append(os.getloadavg()[0])
    if not shared_cache:
        cold, cold_s = timed([*rank_args, "--cache-dir", str(rank_cache)])
        load.append(os.getloadavg()[0])
    warm, warm_s = timed([*rank_args, "--cache-dir", str(ft_cache)])
    load.append(os.getloadavg()[0])
    by_name = {s["name"]: s for s in cold["candidates"]}
    rows = []
    for cand in candidates:
        score = by_name[parse_candidate(cand).name]  # backbone@size, the size resolved as finetune does
        rows.append({"candidate": score["name"], **truth[cand], "logme": score["logme"],
                     "knn_top1": score["knn_top1"], "rank_embed_seconds": score["embed_seconds"],
                     "rank_score_seconds": score["score_seconds"]})
    top1 = [r["top1"] for r in rows]
    best = max(top1)
    n_val = rows[0]["n"]
    result = {"data": name, "shared_cache": bool(shared_cache), "n_train": cold["candidates"][0]["n"], "n_val": n_val, "rows": rows,
              "rank_cold_seconds": cold_s, "rank_warm_seconds": warm_s,
              "finetune_seconds": sum(r["seconds"] for r in rows), "load_1min": load}
    for score in ("logme", "knn_top1"):
        pick = max(rows, key=lambda r: (r[score], r["logme"]))
        result[score] = {"tau_b": kendall_tau_b([r[score] for r in rows], top1), "pick": pick["candidate"],
                         "gap_pts": 100 * (best - pick["top1"]), "gap_images": round((best - pick["top1"]) * n_val)}
    return result


def show(result: dict, console: Console) -> None:
    table = Table(title=f"{result['data']}: {result['n_train']} training images scored, {result['n_val']} val")
    for col in ("candidate", "val top1 (linear probe)", "finetune s", "LogME", "5-NN", "rank embed s"):
        table.add_column(col)
    for r in sorted(result["rows"], key=lambda r: -r["logme"]):
        table.add_row(r["candidate"], f"{r['top1']:.4f} ({round(r['top1'] * r['n'])}/{r['n']})",
                      f"{r['seconds']:.1f}", f"{r['logme']:.4f}", f"{r['knn_top1']:.4f}",
                      f"{r['rank_embed_seconds']:.1f}")
    console.print(table)
    for score in ("logme", "knn_top1"):
        s = result[score]
        console.print(f"{score}: tau_b {s['tau_b']:.3f}, picks {s['pick']}, gap {s['gap_pts']:.2f} pts "
                      f"({s['gap_images']} images)")
    console.print(f"rank cold {result['rank_cold_seconds']:.1f} s, rank warm {result['rank_warm_seconds']:.1f} s, "
                  f"linear fine-tunes {result['finetune_seconds']:.1f} s; 1-min load {result['load_1min']}")


@click.command()
@click.option("--only", "only", multiple=True, type=click.Choice(list(DATASETS)), help="Data sets (default all).")
@click.option("--candidate", "candidates", multiple=True, help=f"Default: {' '.join(CANDIDATES)}.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--shared-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="One cache for every step, rank first (half the embedding work; see bench()).")
def main(only, candidates, out, shared_cache):
    console = Console()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as work:
        for name in only or DATASETS:
            results.append(bench(name, list(candidates or CANDIDATES), Path(work),
                                 shared_cache / name if shared_cache else None))
            show(results[-1], console)
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
