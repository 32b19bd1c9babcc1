"""Fine-tuning figures for docs/benchmarks.md: accuracy and wall time per strategy, and the
embedding-cache speed-up, each a real `edgetl finetune` process.

    .venv/bin/python benchmarks/bench_finetune.py                     # everything (long)
    .venv/bin/python benchmarks/bench_finetune.py --only h-lin --only h-lin-cached --repeat 5
    .venv/bin/python benchmarks/bench_finetune.py --only h-lin --only h-partial --seed 0 --seed 1 --seed 2
    .venv/bin/python benchmarks/bench_finetune.py --only h-lin-288 --only h-partial-288 --only h-full-288
    .venv/bin/python benchmarks/bench_finetune.py --only h-lin --seed 0 --seed 1 --seed 2 --refit-study

A "warm" case reuses the cache the case before it filled; when it runs the same command as
that cold case (h-lin-cached), its speed-up is the cold run's wall time over its own.

Early stopping selects on the run's selection split (held out of the training images);
top1 is on the validation split, which no decision saw. `--refit-study` also refits each
linear run's head on train + selection for its kept number of epochs and reports that
head's validation top1: the measurement behind not refitting (edgetl/transfer/run.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HYM = DATA / "hymenoptera_data"
DIGITS = DATA / "sign_language_digits"

# name -> (data, extra finetune args, cache: "cold" uses a fresh cache dir, "warm" the previous one)
CASES = {
    "h-lin": (HYM, ["--strategy", "linear"], "cold"),
    "h-lin-cached": (HYM, ["--strategy", "linear"], "warm"),
    "h-partial": (HYM, ["--strategy", "partial"], "warm"),
    "h-partial-lr1e-4": (HYM, ["--strategy", "partial", "--lr", "1e-4"], "warm"),
    "h-full": (HYM, ["--strategy", "full"], "warm"),
    "h-full-lr1e-4": (HYM, ["--strategy", "full", "--lr", "1e-4"], "warm"),
    # Input resolution (--input-size): Lite0 is pretrained at 224; ants/bees are often small in the frame.
    "h-lin-256": (HYM, ["--strategy", "linear", "--input-size", "256"], "cold"),
    "h-lin-288": (HYM, ["--strategy", "linear", "--input-size", "288"], "cold"),
    "h-lin-288-cached": (HYM, ["--strategy", "linear", "--input-size", "288"], "warm"),
    "h-partial-288": (HYM, ["--strategy", "partial", "--input-size", "288"], "warm"),
    "h-full-288": (HYM, ["--strategy", "full", "--input-size", "288"], "warm"),
    "d-lin": (DIGITS, ["--strategy", "linear", "--val-split", "0.2", "--seed", "0"], "cold"),
    "d-partial": (DIGITS, ["--strategy", "partial", "--val-split", "0.2", "--seed", "0"], "warm"),
    "d-full": (DIGITS, ["--strategy", "full", "--val-split", "0.2", "--seed", "0", "--epochs", "4"], "warm"),
}


def refit_correct(run_dir: Path, cache_dir: Path) -> int:
    """Validation images a linear head gets right when refit on train + selection for the run's
    kept number of epochs, from the same seed (the loop of edgetl.transfer.train.train_head
    without early stopping: nothing is held out any more)."""
    import numpy as np
    import torch
    from torch import nn

    from edgetl.backbones import get_spec
    from edgetl.data import split_from_record
    from edgetl.transfer.config import DEFAULTS, FinetuneConfig
    from edgetl.transfer.features import EmbeddingCache
    from edgetl.transfer.pretrained import PretrainedBackbone
    from edgetl.transfer.run import seed_everything
    from edgetl.transfer.train import FunctionalAdamW

    m = json.loads((run_dir / "metrics.json").read_text())
    cfg = FinetuneConfig(**m["config"])
    spec = get_spec(cfg.backbone)
    backbone = PretrainedBackbone(spec, cfg.weights, cache_dir)
    cache = EmbeddingCache(backbone.digest, backbone.module, spec.preprocess("NCHW", cfg.input_size), cache_dir)
    split = split_from_record(m["data"])
    items = split.train + split.selection
    x = torch.from_numpy(cache.embed([p for p, _ in items]))
    y = torch.tensor([c for _, c in items])
    vx, vy = torch.from_numpy(cache.embed([p for p, _ in split.val])), np.array([c for _, c in split.val])
    seed_everything(cfg.seed)
    head = nn.Linear(spec.embedding_dim, len(split.labels))
    model = nn.Sequential(nn.Dropout(cfg.dropout), head)
    opt = FunctionalAdamW(head.parameters(), lr=cfg.lr or DEFAULTS["linear"]["lr"], weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(m["best_epoch"] + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return int((head(vx).argmax(1).numpy() == vy).sum())


@click.command()
@click.option("--only", multiple=True, type=click.Choice(list(CASES)), help="Run only these cases.")
@click.option("--runs-dir", default=str(REPO / "runs"), show_default=True, help="Where the runs are written.")
@click.option("--repeat", default=1, show_default=True, help="Run the chosen cases this many times over.")
@click.option("--seed", "seeds", multiple=True, type=int,
              help="Run the chosen cases once per seed (replaces a case's own --seed); repeatable.")
@click.option("--results", default=str(REPO / "benchmarks" / "results-finetune.json"), show_default=True)
@click.option("--refit-study", is_flag=True, help="Also score a head refit on train + selection (linear runs).")
def main(only, runs_dir, repeat, seeds, results, refit_study):
    cache_root = Path(tempfile.mkdtemp(prefix="edgetl-bench-cache-"))
    rows, cache, cold = [], None, (None, None)
    runs = [(r, seed, n) for r in range(repeat) for seed in (seeds or [None]) for n in (only or CASES)]
    for rep, seed, base_name in runs:
        data, args, mode = CASES[base_name]
        name = base_name
        if seed is not None:
            args = [a for i, a in enumerate(args) if a != "--seed" and (i == 0 or args[i - 1] != "--seed")]
            args, name = [*args, "--seed", str(seed)], f"{base_name}-s{seed}"
        if mode == "cold" or cache is None:
            cache = cache_root / f"{name}-{rep}"
        out = Path(runs_dir) / name
        cmd = [str(REPO / ".venv" / "bin" / "edgetl"), "finetune", str(data), *args, "--out", str(out),
               "--cache-dir", str(cache), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cold = (args, wall) if mode == "cold" else cold
        if proc.returncode != 0:
            sys.exit(f"{name} failed: {proc.stderr.strip().splitlines()[-1]}")
        m = json.loads((out / "metrics.json").read_text())
        sel = m.get("selection") if isinstance(m.get("selection"), dict) else {"split": "val", "n": m["n"]}
        refit = refit_correct(out, cache) if refit_study and m["strategy"] == "linear" else None
        rows.append({"case": name, "strategy": m["strategy"], "top1": m["top1"], "balanced": m["balanced_accuracy"],
                     "correct": round(m["top1"] * m["n"]), "n": m["n"], "wall_s": wall,
                     "kept": f"{m['kept_phase']} {m['best_epoch']}", "selection": f"{sel['split']} ({sel['n']})",
                     "refit_correct": refit,
                     "embed_s": m["seconds"]["embedding"], "cache": mode,
                     "epochs": sum(h["phase"] == m["strategy"] for h in m["history"]),  # of the final phase
                     "speedup": cold[1] / wall if mode == "warm" and cold[0] == args else None,
                     "command": " ".join(cmd[1:])})
    table = Table(title="edgetl finetune (2 vCPU x86_64, no GPU)")
    for col in ("case", "strategy", "top1", "correct/n", "balanced", "selected on", "kept", "refit correct",
                "epochs", "wall s", "embedding s", "cache", "speed-up vs cold"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["case"], r["strategy"], f"{r['top1']:.4f}", f"{r['correct']}/{r['n']}", f"{r['balanced']:.4f}",
                      r["selection"], r["kept"], "" if r["refit_correct"] is None else f"{r['refit_correct']}/{r['n']}",
                      str(r["epochs"]), f"{r['wall_s']:.1f}", f"{r['embed_s']:.1f}", r["cache"],
                      f"{r['speedup']:.1f}x" if r["speedup"] else "")
    Console(width=160).print(table)
    Path(results).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
