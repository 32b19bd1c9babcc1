"""`edgetl finetune`: data -> (linear probe) -> (partial/full fine-tune) -> RUN/ files."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.backbones import get_spec
from edgetl.bundle.manifest import MANIFEST
from edgetl.core.fsutil import staged_replace
from edgetl.data import SELECTION_MIN_CLASS_IMAGES, carve_selection, data_root, load_split
from edgetl.errors import EdgetlError
from edgetl.core.progress import reporting
from edgetl.transfer import distributed
from edgetl.transfer.config import DEFAULTS, STRATEGIES, FinetuneConfig
from edgetl.transfer.features import EmbeddingCache
from edgetl.transfer.pretrained import PretrainedBackbone
from edgetl.transfer.strategies import backbone_stages, choose_strategy, freeze_for
from edgetl.transfer.joint import JointClassifier
from edgetl.transfer.joint import setup as joint_setup
from edgetl.transfer.train import predict_logits, train_backbone, train_head
from edgetl.core.metrics import classification_metrics
from edgetl.model import Classifier, save_run
from edgetl.report.curves import plot_history

log = logging.getLogger("edgetl")

RUN_FILES = ("model.pt", "labels.txt", "metrics.json", "training_curve.png")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU kernels are deterministic at a fixed thread count


def check_run_destination(out: Path) -> None:
    """Refuse an `out` whose content replacing it would lose: only a new or empty folder, or an
    earlier run holding nothing but run files, may be replaced."""
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"'{out}' exists and is not a folder; pass a new or empty folder as the run folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / MANIFEST).is_file():
        raise EdgetlError(f"'{out}' is an exported bundle (it has {MANIFEST}), not a run; refusing to replace it. "
                          "Pass a new or empty folder as the run folder")
    if not any((out / name).is_file() for name in ("model.pt", "metrics.json")):
        raise EdgetlError(f"'{out}' is not empty and not an edgetl run (no model.pt or metrics.json); refusing to "
                          "replace it. Pass a new or empty folder as the run folder")
    # The new run replaces the folder whole, so anything else in it would be deleted silently.
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if others:
        raise EdgetlError(f"'{out}' is an earlier run that also holds {', '.join(others)}; replacing the run would "
                          "delete them. Move them out, or pass a new or empty folder as the run folder")


def finetune(data: str | Path, out: str | Path, cfg: FinetuneConfig = FinetuneConfig(), tasks: tuple = (),
             default_weight: float = 1.0) -> dict:
    """Train on `data`, write RUN/model.pt, labels.txt, metrics.json, training_curve.png.

    The files are written to a staging folder beside `out` and swapped into place together,
    so a run killed while writing leaves the earlier run whole, never a mix of both.

    Launched by torchrun (`torchrun --nproc-per-node N -m edgetl.cli.host finetune ...`), the
    N processes train as one (edgetl/transfer/distributed.py): rank 0 writes the run, reports
    progress and returns the same metrics as every other rank.

    With extra `tasks` (`edgetl.multitask.TaskSpec`) and a partial or full strategy, the
    backbone trains on every task's weighted loss (edgetl/transfer/joint.py; the primary's
    weight is `default_weight`); their heads are fitted afterwards (`multitask.fit_task_heads`).
    """
    if cfg.strategy not in STRATEGIES:
        raise EdgetlError(f"--strategy '{cfg.strategy}' is not one of {', '.join(STRATEGIES)}")
    with distributed.session() as dist, reporting(None if dist.rank0 else _no_progress):
        return _finetune(data, out, cfg, dist, tuple(tasks), default_weight)


def _no_progress(description: str, done: int, total: int) -> None:
    """The progress callback of torchrun's ranks other than 0: one set of bars, rank 0's."""


def _finetune(data: str | Path, out: str | Path, cfg: FinetuneConfig, dist: distributed.Context, tasks: tuple = (),
              default_weight: float = 1.0) -> dict:
    out = Path(out)
    out = out.resolve() if out.is_symlink() else out  # replace the folder a link points to, keep the link
    if dist.rank0:  # the only writer; if it refuses, torchrun stops the other ranks
        check_run_destination(out)  # before the slow part, not after an hour of training
    started = time.perf_counter()
    seed_everything(cfg.seed)
    # Under torchrun the ranks on one node share its cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
    data = data_root(data)
    spec = get_spec(cfg.backbone)
    preprocess = spec.preprocess("NCHW", cfg.input_size)
    log.info("%s: %d px input (resize to %d, centre crop)%s", spec.name, preprocess.size, preprocess.resize,
             "" if preprocess.size == spec.size else f"; its pretrained size is {spec.size}")
    backbone = PretrainedBackbone(spec, cfg.weights, cfg.cache_dir, write_cache=dist.rank0)
    cache = EmbeddingCache(backbone.digest, backbone.module, preprocess, cfg.cache_dir,
                           about={"backbone": spec.name, "weights": backbone.origin, "preprocess": preprocess.to_dict()},
                           dist=dist)
    # Files whose content is already embedded decoded fine before: the scan skips re-decoding them.
    split = carve_selection(load_split(data, cfg.val_split, cfg.seed, known_good=cache.contains))
    dist.check_same({k: v for k, v in split.describe().items() if k.endswith("_files") or k == "labels"},
                    f"list of images in '{split.root}'")
    log.info("data '%s' (%s): %d classes, %d train, %d selection, %d val images", split.root, split.layout,
             len(split.labels), len(split.train), len(split.selection), len(split.val))
    # Early stopping and the probe-vs-fine-tuned choice score the selection split; the
    # validation split is embedded and scored once, for the reported metrics, after every
    # decision is made.
    sel_items, sel_name = split.selection, "selection"
    if not sel_items:
        # No class has 3 training images: holding any out would leave a class nearly
        # untrained. Decisions then score the training images themselves: still never the
        # validation split, but blind to overfitting (in practice the last epoch is kept).
        sel_items, sel_name = split.train, "train"
        log.warning("no class has %d training images, so no selection split was held out; early stopping scores "
                    "the training images (it cannot see overfitting). Add images per class for an honest choice",
                    SELECTION_MIN_CLASS_IMAGES)

    strategy, reason = cfg.strategy, "chosen with --strategy"
    if strategy == "auto":
        # By the images trained on plus those held out: the count of the user's data.
        strategy, reason = choose_strategy(split.train + split.selection, split.labels)
        log.info("strategy auto -> %s: %s", strategy, reason)
    defaults = DEFAULTS[strategy]
    epochs = cfg.epochs or defaults["epochs"]
    lr = cfg.lr or defaults["lr"]
    patience = cfg.patience or defaults["patience"]

    # Every strategy starts with a linear probe on cached embeddings: it is the whole job
    # for `linear`, and for partial/full it gives the head a sane start so the first
    # backbone updates are not driven by a random head (LP-FT, Kumar et al., 2022).
    t0 = time.perf_counter()
    train_x = cache.embed([p for p, _ in split.train], "embedding train images")
    sel_x = cache.embed([p for p, _ in sel_items], f"embedding {sel_name} images") if sel_name != "train" else train_x
    # Embedded now with the rest (one timed stage), used only for the final metrics below.
    val_x = cache.embed([p for p, _ in split.val], "embedding val images")
    t_embed = time.perf_counter() - t0
    train_y = [c for _, c in split.train]
    sel_y = [c for _, c in sel_items]
    val_y = [c for _, c in split.val]
    # Reseed: the head and training start from the same random state whatever ran before, so a
    # run from the cache matches the run that filled it (building the backbone forks the RNG too).
    seed_everything(cfg.seed)
    head = nn.Linear(spec.embedding_dim, len(split.labels))
    lp = DEFAULTS["linear"]
    history = None
    if dist.rank0:  # seconds of work; the other ranks take its result, so all start fine-tuning alike
        history = train_head(head, cfg.dropout, train_x, train_y, sel_x, sel_y, cfg,
                             epochs if strategy == "linear" else lp["epochs"], lr if strategy == "linear" else lp["lr"],
                             patience if strategy == "linear" else lp["patience"], split=sel_name)
    if dist.is_distributed:
        head_state, history = dist.broadcast((head.state_dict(), history))
        head.load_state_dict(head_state)
    t_head = time.perf_counter() - t0 - t_embed
    # No refit on train + selection once the epoch is chosen. Export decisions score the
    # selection split as images the shipped model never trained on (edgetl/recovery.py,
    # the build's candidate choice), and metrics.json's selection score describes exactly
    # the shipped head; a refit would void both. What it would buy is small: refitting the
    # probe for the kept number of epochs on the 15 % more images gave 144/146/145 instead
    # of 142/143/145 of 153 on hymenoptera (seeds 0-2) and 384 = 384 of 411 on the digits
    # (bench_finetune.py --refit-study; docs/benchmarks.md "Honest selection (issue 16)").

    joint = None  # several tasks fine-tuned together (partial/full with extra tasks)
    if strategy == "linear":
        with torch.no_grad():
            logits = head(torch.from_numpy(val_x)).numpy()
    else:
        probe = next(h for h in history if h.get("kept"))
        start = (probe["selection_balanced_accuracy"], probe["selection_loss"])
        train_items, fit_sel_items = split.train, sel_items
        if tasks:
            joint, task_heads, train_items, fit_sel_items, start = joint_setup(
                tasks, default_weight, split, sel_items, train_x, sel_x, head, cfg, dist)
            model = JointClassifier(backbone.module(), spec.embedding_dim, head, cfg.dropout, task_heads)
            log.info("joint %s fine-tuning of %d tasks, loss weights %s", strategy, len(joint.names),
                     dict(zip(joint.names, joint.weights)))
        else:
            model = Classifier(backbone.module(), spec.embedding_dim, len(split.labels), cfg.dropout, head=head)
        trainable = freeze_for(strategy, model.backbone, cfg.unfreeze)
        log.info("%s: top %d of %d backbone stages train; BatchNorm keeps its pretrained running statistics",
                 strategy, len(trainable), len(backbone_stages(model.backbone)))
        history += train_backbone(model, trainable, train_items, fit_sel_items, preprocess, cfg, epochs, lr,
                                  patience, strategy, start=start, split=sel_name, dist=dist, joint=joint)
        if dist.rank0 and not any(h.get("kept") for h in history if h["phase"] == strategy):
            log.warning("%s: no epoch beat the linear probe it started from on the %s split (%s %.4f); keeping the "
                        "linear-probe model (backbone unchanged). On data like this, --strategy linear gives the "
                        "same model in a fraction of the time", strategy, sel_name,
                        "balanced accuracy" if joint is None else "tasks' weighted balanced accuracy", start[0])
        logits = predict_logits(model, split.val, preprocess, dist)[:, :len(split.labels)]  # the primary head's
    if not dist.rank0:
        return dist.broadcast(None)  # rank 0 writes the run, then sends every rank its metrics

    metrics = classification_metrics(val_y, logits.argmax(1), split.labels)
    # check_run_destination again before the swap: something may have been put there during training.
    with staged_replace(out, before_swap=lambda: check_run_destination(out)) as stage:
        save_run(stage / "model.pt", spec=spec, labels=split.labels, preprocess=preprocess,
                 weights_origin=backbone.origin, strategy=strategy, dropout=cfg.dropout,
                 backbone_state=backbone.state_dict(), head=head)
        (stage / "labels.txt").write_text("\n".join(split.labels) + "\n", encoding="utf-8")
        kept = [h for h in history if h.get("kept")][-1]  # the fine-tuned epoch, else the probe's
        plot_history(history, stage / "training_curve.png", f"{spec.name} · {strategy} · {split.root.name}",
                     reported=metrics["top1"])
        metrics.update({
            "strategy": strategy,
            "strategy_reason": reason,
            "backbone": spec.name,
            "weights": backbone.origin,
            "config": cfg.to_dict(),
            "history": history,
            "best_epoch": kept["epoch"],
            "kept_phase": kept["phase"],
            "selection": {
                "split": sel_name,
                "n": len(sel_items),
                "fraction": split.selection_fraction,
                "used_for": ["early stopping"] + ([] if strategy == "linear" else ["probe vs fine-tuned"]),
                "criterion": "balanced accuracy, ties to the lower loss",
                "top1": kept["selection_top1"],
                "balanced_accuracy": kept["selection_balanced_accuracy"],
                "reported_on": "val: scored once, after every decision",
            },
            "seconds": {"embedding": t_embed, "linear_head": t_head, "total": time.perf_counter() - started},
            "data": split.describe(),
        })
        if dist.is_distributed:
            metrics["distributed"] = dist.describe()
        if joint is not None:
            metrics["joint_training"] = joint.describe()
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    return dist.broadcast(metrics)
