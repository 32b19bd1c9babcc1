"""DANN: domain-adversarial fine-tuning of a run on unlabeled field images (Ganin et al., 2016).

A small domain classifier reads the embedding through a gradient reversal layer: it learns to
tell source (the run's labelled training images) from target (the unlabeled field images),
and the backbone, receiving its gradient reversed, learns to make them indistinguishable while
the head keeps classifying the source images:

    backbone + head minimise   L_class(source) - lambda * L_domain(source, target)
    domain classifier minimises L_domain(source, target)

with lambda = 2 / (1 + exp(-10 p)) - 1 ramped over the planned steps (p from 0 to 1), so the
domain classifier learns first and the reversed gradient, noisy at the start, grows later.
Only the backbone's top `unfreeze` stages (partial) or all of them (full) train, from the
run's weights; BatchNorm keeps its running statistics (edgetl.transfer.strategies), so the
adapted backbone has the same keys and exports like any other.

Two stop rules, whichever comes first (the kept epoch is the early-stopping one either way):
  early stopping  the source *selection* split's balanced accuracy (edgetl.transfer.train's
                  EarlyStopping: ties to the lower loss), `patience` epochs without a better
                  one; the best epoch's weights are restored. Never the validation split.
  domain collapse the domain classifier is at chance for COLLAPSE_EPOCHS epochs in a row:
                  its mean loss over the epoch at least COLLAPSE_LOSS (0.97 ln 2) and its
                  accuracy at most COLLAPSE_ACCURACY (0.55) on the epoch's balanced source and
                  target batches. The reversed gradient then carries no information about the
                  shift any more; further epochs only push the features around at random.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetl.core.metrics import balanced_accuracy
from edgetl.core.options import opt
from edgetl.core.progress import track
from edgetl.data import ImageDataset, train_transform
from edgetl.errors import EdgetlError
from edgetl.model import Classifier
from edgetl.transfer.config import AUGMENTS, DEFAULTS, FinetuneConfig
from edgetl.transfer.cpu import as_input, channels_last, chunks
from edgetl.transfer.strategies import freeze_for, param_groups, set_train_mode
from edgetl.transfer.train import EarlyStopping, FunctionalAdamW, predict_logits

log = logging.getLogger("edgetl")

STRATEGIES = ("partial", "full")
COLLAPSE_LOSS = 0.97 * math.log(2.0)  # binary cross-entropy of a classifier at chance: ln 2
COLLAPSE_ACCURACY = 0.55  # chance is 0.5 on balanced batches; 0.05 is ~2 standard errors of an epoch's 300-400
                          # domain predictions (demo set, hymenoptera)
COLLAPSE_EPOCHS = 2
DOMAIN_HIDDEN = 256


@dataclass(frozen=True)
class DannConfig:
    """DANN's training options; the rest (weight decay, layer decay, ...) are finetune's defaults."""

    strategy: str = opt("partial", "partial: the top `unfreeze` backbone stages train; full: all of them.",
                        choices=STRATEGIES)
    unfreeze: int = opt(3, "partial: number of top backbone stages to train.", lo=1, hi=64)
    epochs: int = opt(DEFAULTS["partial"]["epochs"], "Maximum epochs (passes over the source training images).",
                      lo=1, hi=1000)
    patience: int = opt(DEFAULTS["partial"]["patience"], "Early-stopping patience on the selection split.",
                        lo=1, hi=1000)
    lr: float = opt(DEFAULTS["partial"]["lr"], "Head and domain-classifier learning rate; backbone stages get less.",
                    lo=0.0, hi=10.0)
    backbone_lr_ratio: float = opt(FinetuneConfig.backbone_lr_ratio, "Top backbone stage lr = lr x ratio; each "
                                   "lower stage x finetune's layer decay.", lo=0.0, hi=10.0)
    batch_size: int = opt(32, "Source images per step (and as many target images).", lo=1, hi=4096)
    augment: str = opt("light", "Augmentation of source and target images.", choices=AUGMENTS)
    seed: int = opt(0, "Seeds the domain classifier and the batch order.", lo=0, hi=2**32 - 1)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise EdgetlError(f"dann strategy '{self.strategy}' is not one of {', '.join(STRATEGIES)}: DANN "
                              "trains backbone stages, so a linear (frozen-backbone) strategy cannot carry it")

    @classmethod
    def for_run(cls, metrics: dict, strategy: str | None = None, **overrides) -> "DannConfig":
        """The run's own finetune options where DANN has them, else the defaults.

        Args:
            metrics: the run's metrics.json (its `strategy` and `config`).
            strategy: partial or full; None: the run's if it fine-tuned its backbone, else partial.
            **overrides: any other field (None: not given).

        Returns:
            The seed, unfreeze, batch size and augmentation of the run; its epochs, lr, patience
            and backbone lr ratio only when it trained with the same strategy (a linear run's
            are the probe's).
        """
        config = metrics.get("config") or {}
        run_strategy = metrics.get("strategy")
        strategy = strategy or (run_strategy if run_strategy in STRATEGIES else "partial")
        keep = ("unfreeze", "batch_size", "augment", "seed") + \
            (("epochs", "lr", "patience", "backbone_lr_ratio") if run_strategy == strategy else ())
        values = {k: config[k] for k in keep if config.get(k) is not None}
        values.update({k: v for k, v in DEFAULTS.get(strategy, {}).items() if k not in values})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(strategy=strategy, **values)

    def to_dict(self) -> dict:
        return asdict(self)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -lambda backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    """The gradient reversal layer: x forward, -lam * gradient backward."""
    return _ReverseGradient.apply(x, lam)


def ramp(progress: float) -> float:
    """DANN's lambda schedule: 0 at the start, 0.46 at 1/10 of the steps, 0.99 at the half."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class DomainClassifier(nn.Module):
    """Embedding -> one hidden layer -> the logit of "target"."""

    def __init__(self, dim: int, hidden: int = DOMAIN_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def domain_collapsed(history: list[dict]) -> bool:
    """The collapse rule (module docstring): the last COLLAPSE_EPOCHS epochs all at chance."""
    recent = history[-COLLAPSE_EPOCHS:]
    return len(recent) == COLLAPSE_EPOCHS and all(
        h["domain_loss"] >= COLLAPSE_LOSS and h["domain_accuracy"] <= COLLAPSE_ACCURACY for h in recent)


STOP_RULE = (f"early stopping on the source selection split's balanced accuracy (patience epochs without a better "
             f"one; the best epoch kept), or domain collapse: the domain classifier at chance (mean loss >= "
             f"{COLLAPSE_LOSS:.3f} = 0.97 ln 2 and accuracy <= {COLLAPSE_ACCURACY}) for {COLLAPSE_EPOCHS} epochs in "
             f"a row, or the maximum epochs")


@dataclass
class DannResult:
    """The adapted model (a copy; the run's is untouched) and how it was trained."""

    model: Classifier
    history: list[dict]
    stopped: dict
    info: dict = field(default_factory=dict)


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def train_dann(model: Classifier, preprocess, train_items: list, sel_items: list, target_paths: list,
               cfg: DannConfig = DannConfig(), split: str = "selection") -> DannResult:
    """Domain-adversarial fine-tuning of a copy of `model` (see the module docstring).

    Args:
        model: the run's classifier (not modified).
        preprocess: the run's preprocessing.
        train_items: labelled source training images, (path, class) pairs.
        sel_items: the selection split, (path, class) pairs: early stopping scores it; never
            the validation split.
        target_paths: the unlabeled target images.
        cfg: DannConfig.
        split: the name of the split `sel_items` is, recorded in every history row.

    Returns:
        DannResult: the model at the kept epoch, one history row per epoch (the kept one has
        kept=True), `stopped` (rule, epoch) and `info` (config, lambda schedule, image counts).

    Raises:
        EdgetlError: no training images, or fewer than 2 target images.
    """
    if len(train_items) < 2 or len(target_paths) < 2 or not sel_items:
        raise EdgetlError(f"dann needs labelled source images, a selection split and unlabeled target images; got "
                          f"{len(train_items)} training, {len(sel_items)} selection and {len(target_paths)} target")
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(model)
    trainable = freeze_for(cfg.strategy, model.backbone, cfg.unfreeze)
    domain = DomainClassifier(model.head.in_features)
    channels_last(model)  # in place, before the optimisers hold the parameters
    defaults = FinetuneConfig()
    groups = param_groups(model, trainable, cfg.lr, cfg.backbone_lr_ratio, defaults.layer_decay,
                          defaults.weight_decay, l2sp=False)
    groups.append({"params": list(domain.parameters()), "lr": cfg.lr, "weight_decay": defaults.weight_decay,
                   "name": "domain"})
    # One functional AdamW per learning rate (FunctionalAdamW has one lr); cosine decay per epoch as finetune's.
    opts = [(FunctionalAdamW(g["params"], g["lr"], g["weight_decay"]), g["lr"]) for g in groups]
    class_loss_fn = nn.CrossEntropyLoss(label_smoothing=defaults.label_smoothing)
    domain_loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    transform = train_transform(preprocess, cfg.augment)
    source = DataLoader(ImageDataset(train_items, preprocess, transform), batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed), num_workers=0)
    target = _cycle(DataLoader(ImageDataset([(p, -1) for p in target_paths], preprocess, transform),
                               batch_size=cfg.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(cfg.seed + 1), num_workers=0))
    total_steps = cfg.epochs * len(source)
    sel_y = np.array([c for _, c in sel_items])
    stopper, history, step, rule = EarlyStopping(cfg.patience), [], 0, "maximum epochs"
    with track(f"DANN ({cfg.strategy}) fine-tuning", total_steps) as task:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            for o, base in opts:
                o.lr = base * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
            set_train_mode(model)  # BatchNorm statistics stay the run's
            domain.train()
            class_total = domain_total = 0.0
            seen = domain_seen = domain_right = 0
            for xs, ys in source:
                xt, _ = next(target)
                n = min(len(xs), len(xt))  # balanced domain batches: chance is 0.5 and ln 2
                lam = ramp(step / total_steps)
                for o, _ in opts:
                    o.zero_grad()
                for part in chunks(len(ys)):  # as train_backbone: BatchNorm frozen, so chunk gradients add up
                    fs = model.backbone(as_input(xs[part]))
                    loss = class_loss_fn(model.head(model.dropout(fs)), ys[part]) * (len(ys[part]) / len(ys))
                    class_total += loss.item() * len(ys)
                    d_part = slice(part.start, min(part.stop, n))
                    if d_part.stop > d_part.start:
                        ft = model.backbone(as_input(xt[d_part]))
                        feats = torch.cat([fs[: d_part.stop - d_part.start], ft])
                        labels = torch.cat([torch.zeros(len(ft)), torch.ones(len(ft))])
                        logits = domain(reverse_gradient(feats, lam))
                        d_loss = domain_loss_fn(logits, labels) / (2 * n)
                        loss = loss + d_loss
                        domain_total += d_loss.item() * 2 * n
                        domain_right += int(((logits > 0).float() == labels).sum())
                        domain_seen += 2 * len(ft)
                    loss.backward()
                for o, _ in opts:
                    o.step()
                seen += len(ys)
                step += 1
                task.advance()
            logits = predict_logits(model, sel_items, preprocess)
            pred = logits.argmax(1)
            sel_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(sel_y)))
            row = {"phase": "dann", "epoch": epoch, "split": split, "train_loss": class_total / seen,
                   "domain_loss": domain_total / domain_seen, "domain_accuracy": domain_right / domain_seen,
                   "lambda": round(lam, 4), "selection_loss": sel_loss,
                   "selection_top1": float((pred == sel_y).mean()),
                   "selection_balanced_accuracy": balanced_accuracy(sel_y, pred, model.head.out_features),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            log.info("dann epoch %d: class loss %.3f, domain loss %.3f (accuracy %.3f, lambda %.2f), %s top1 %.3f, "
                     "balanced %.3f", epoch, row["train_loss"], row["domain_loss"], row["domain_accuracy"], lam, split,
                     row["selection_top1"], row["selection_balanced_accuracy"])
            if stopper.update(row["selection_balanced_accuracy"], sel_loss, epoch, model):
                rule = "early stopping"
                break
            if domain_collapsed(history):
                rule = "domain collapse"
                break
    model.load_state_dict(stopper.best_state)
    history[stopper.best_epoch]["kept"] = True
    stopped = {"rule": rule, "after_epoch": len(history) - 1, "kept_epoch": stopper.best_epoch,
               "criterion": STOP_RULE}
    info = {"config": cfg.to_dict(), "trainable_stages": len(trainable), "n_source": len(train_items),
            "n_target": len(target_paths), "selection": {"split": split, "n": len(sel_items)},
            "lambda_schedule": "2 / (1 + exp(-10 p)) - 1, p = step / (epochs x steps per epoch)",
            "objective": "backbone and head: source cross-entropy - lambda x domain BCE (gradient reversal); "
                         "domain classifier: domain BCE", "domain_classifier": f"{model.head.in_features}-"
                                                                             f"{DOMAIN_HIDDEN}-1, ReLU, dropout 0.5"}
    log.info("dann stopped after epoch %d (%s); kept epoch %d", stopped["after_epoch"], rule, stopper.best_epoch)
    return DannResult(model.eval(), history, stopped, info)
