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
from edgetl.data import data_root, load_split
from edgetl.errors import EdgetlError
from edgetl.transfer.config import DEFAULTS, STRATEGIES, FinetuneConfig
from edgetl.transfer.features import EmbeddingCache
from edgetl.transfer.pretrained import PretrainedBackbone
from edgetl.transfer.strategies import backbone_stages, choose_strategy, freeze_for
from edgetl.transfer.train import predict_logits, train_backbone, train_head
from edgetl.core.metrics import classification_metrics
from edgetl.model import Classifier, save_run
from edgetl.report.curves import plot_history

log = logging.getLogger("edgetl")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU kernels are deterministic at a fixed thread count


def finetune(data: str | Path, out: str | Path, cfg: FinetuneConfig = FinetuneConfig()) -> dict:
    """Train on `data`, write RUN/model.pt, labels.txt, metrics.json, training_curve.png."""
    if cfg.strategy not in STRATEGIES:
        raise EdgetlError(f"--strategy '{cfg.strategy}' is not one of {', '.join(STRATEGIES)}")
    started = time.perf_counter()
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(out)
    data = data_root(data)
    spec = get_spec(cfg.backbone)
    preprocess = spec.preprocess("NCHW", cfg.input_size)
    log.info("%s: %d px input (resize to %d, centre crop)%s", spec.name, preprocess.size, preprocess.resize,
             "" if preprocess.size == spec.size else f"; its pretrained size is {spec.size}")
    backbone = PretrainedBackbone(spec, cfg.weights, cfg.cache_dir)
    cache = EmbeddingCache(backbone.digest, backbone.module, preprocess, cfg.cache_dir,
                           about={"backbone": spec.name, "weights": backbone.origin, "preprocess": preprocess.to_dict()})
    # Files whose content is already embedded decoded fine before: the scan skips re-decoding them.
    split = load_split(data, cfg.val_split, cfg.seed, known_good=cache.contains)
    log.info("data '%s' (%s): %d classes, %d train, %d val images", split.root, split.layout, len(split.labels),
             len(split.train), len(split.val))

    strategy, reason = cfg.strategy, "chosen with --strategy"
    if strategy == "auto":
        strategy, reason = choose_strategy(split.train, split.labels)
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
    val_x = cache.embed([p for p, _ in split.val], "embedding val images")
    t_embed = time.perf_counter() - t0
    train_y = [c for _, c in split.train]
    val_y = [c for _, c in split.val]
    # Reseed: the head and training start from the same random state whatever ran before, so a
    # run from the cache matches the run that filled it (building the backbone forks the RNG too).
    seed_everything(cfg.seed)
    head = nn.Linear(spec.embedding_dim, len(split.labels))
    lp = DEFAULTS["linear"]
    history = train_head(head, cfg.dropout, train_x, train_y, val_x, val_y, cfg,
                         epochs if strategy == "linear" else lp["epochs"], lr if strategy == "linear" else lp["lr"],
                         patience if strategy == "linear" else lp["patience"])
    t_head = time.perf_counter() - t0 - t_embed

    if strategy == "linear":
        with torch.no_grad():
            logits = head(torch.from_numpy(val_x)).numpy()
    else:
        model = Classifier(backbone.module(), spec.embedding_dim, len(split.labels), cfg.dropout, head=head)
        trainable = freeze_for(strategy, model.backbone, cfg.unfreeze)
        log.info("%s: top %d of %d backbone stages train; BatchNorm keeps its pretrained running statistics",
                 strategy, len(trainable), len(backbone_stages(model.backbone)))
        probe = next(h for h in history if h.get("kept"))
        history += train_backbone(model, trainable, split.train, split.val, preprocess, cfg, epochs, lr, patience,
                                  strategy, start=(probe["val_balanced_accuracy"], probe["val_loss"]))
        if not any(h.get("kept") for h in history if h["phase"] == strategy):
            log.warning("%s: no epoch beat the linear probe it started from on the validation split (balanced "
                        "accuracy %.4f); keeping the linear-probe model (backbone unchanged). On data like "
                        "this, --strategy linear gives the same model in a fraction of the time", strategy,
                        probe["val_balanced_accuracy"])
        logits = predict_logits(model, split.val, preprocess)

    metrics = classification_metrics(val_y, logits.argmax(1), split.labels)
    out.mkdir(parents=True, exist_ok=True)
    save_run(out / "model.pt", spec=spec, labels=split.labels, preprocess=preprocess, weights_origin=backbone.origin,
             strategy=strategy, dropout=cfg.dropout, backbone_state=backbone.state_dict(), head=head)
    (out / "labels.txt").write_text("\n".join(split.labels) + "\n", encoding="utf-8")
    kept = [h for h in history if h.get("kept")][-1]  # the fine-tuned epoch, else the probe's
    plot_history(history, out / "training_curve.png", f"{spec.name} · {strategy} · {split.root.name}")
    metrics.update({
        "strategy": strategy,
        "strategy_reason": reason,
        "backbone": spec.name,
        "weights": backbone.origin,
        "config": cfg.to_dict(),
        "history": history,
        "best_epoch": kept["epoch"],
        "kept_phase": kept["phase"],
        "selection": "early stopping on validation balanced accuracy (the same split these metrics use)",
        "seconds": {"embedding": t_embed, "linear_head": t_head, "total": time.perf_counter() - started},
        "data": split.describe(),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metrics
