"""Training loops: the head on cached embeddings, and the backbone on augmented images.

Both stop early on the balanced accuracy of the selection split (images held out of the
training data, edgetl.data.carve_selection) and restore the best weights. The validation
split is never passed in here: metrics.json's reported numbers come from images no
decision looked at. History rows name the split their `selection_*` numbers come from.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.optim.adamw import adamw
from torch.utils.data import DataLoader, DistributedSampler

from edgetl.data import ImageDataset, train_transform
from edgetl.transfer.config import FinetuneConfig
from edgetl.transfer.cpu import CHUNK, as_input, channels_last, chunks
from edgetl.transfer.distributed import Context
from edgetl.core.progress import track
from edgetl.transfer.strategies import param_groups, set_train_mode

log = logging.getLogger("edgetl")
from edgetl.core.metrics import balanced_accuracy


class EarlyStopping:
    """Keeps the epoch with the best selection-split balanced accuracy. Accuracy on a few
    dozen or hundred images moves in steps, so ties are common; a tie goes to the lower
    selection loss (the more confident of equally accurate models) instead of to whichever
    came first."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = (-1.0, float("inf"))
        self.best_epoch = -1
        self.best_state = None

    def start_from(self, score: float, loss: float, module: nn.Module) -> None:
        """Make the starting weights a candidate (epoch -1): training must beat them to count."""
        self.best, self.best_epoch = (score, loss), -1
        self.best_state = copy.deepcopy(module.state_dict())

    def update(self, score: float, loss: float, epoch: int, module: nn.Module) -> bool:
        """Record the epoch; True when training should stop."""
        best_score, best_loss = self.best
        if score > best_score + 1e-6 or (score > best_score - 1e-6 and loss < best_loss):
            self.best, self.best_epoch = (score, loss), epoch
            self.best_state = copy.deepcopy(module.state_dict())
        return epoch - self.best_epoch >= self.patience


class FunctionalAdamW:
    """torch's AdamW update (`torch.optim.adamw.adamw`, the functional API the AdamW class
    calls), with its state held here.

    Why not `torch.optim.AdamW`: an Optimizer's first use imports torch._dynamo, about 2 s
    on this 2-core machine and most of a linear probe whose embeddings are all cached. The
    update is the same computation: tests/test_optim.py checks it bit for bit against
    torch.optim.AdamW over several steps.
    """

    def __init__(self, params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.tensor(0.0) for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        pick = lambda xs: [xs[i] for i in with_grad]  # noqa: E731
        adamw(pick(self.params), [self.params[i].grad for i in with_grad], pick(self.exp_avgs),
              pick(self.exp_avg_sqs), [], pick(self.steps), foreach=False, amsgrad=False, beta1=self.betas[0],
              beta2=self.betas[1], lr=self.lr, weight_decay=self.weight_decay, eps=self.eps, maximize=False)


def train_head(head: nn.Linear, dropout: float, train_x, train_y, sel_x, sel_y, cfg: FinetuneConfig,
               epochs: int, lr: float, patience: int, split: str = "selection") -> list[dict]:
    """Softmax regression on frozen embeddings (feature extraction). Seconds on a CPU.

    Args:
        head: the linear head, trained in place; it ends with the best epoch's weights.
        dropout: dropout on the embedding during training.
        train_x, train_y: training embeddings [N, D] (float32) and class indices.
        sel_x, sel_y: the selection split's embeddings and class indices, which early
            stopping scores; never the validation split.
        cfg: batch size, weight decay, label smoothing, seed.
        epochs, lr, patience: the schedule.
        split: the name of the split `sel_x` comes from, recorded in every history row.

    Returns:
        One row per epoch: phase, epoch, split, train_loss, selection_loss, selection_top1,
        selection_balanced_accuracy; the restored epoch's row has kept=True.
    """
    num_classes = head.out_features
    model = nn.Sequential(nn.Dropout(dropout), head)
    opt = FunctionalAdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    vx, vy = torch.from_numpy(sel_x), np.asarray(sel_y)
    gen = torch.Generator().manual_seed(cfg.seed)
    stopper, history = EarlyStopping(patience), []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(tx), generator=gen)
        total = 0.0
        for start in range(0, len(tx), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = loss_fn(model(tx[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = head(vx)
            sel_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(vy.astype(np.int64))))
        pred = logits.argmax(1).numpy()
        bacc = balanced_accuracy(vy, pred, num_classes)
        history.append({"phase": "linear", "epoch": epoch, "split": split, "train_loss": total / len(tx),
                        "selection_loss": sel_loss, "selection_top1": float((pred == vy).mean()),
                        "selection_balanced_accuracy": bacc})
        if stopper.update(bacc, sel_loss, epoch, head):
            break
    head.load_state_dict(stopper.best_state)
    history[stopper.best_epoch]["kept"] = True  # the weights that were restored
    return history


def predict_logits(model: nn.Module, items, preprocess, dist: Context = Context()) -> np.ndarray:
    """[N, classes] logits of `items` ((path, class) pairs) in eval mode. Under torchrun each
    rank scores a contiguous share and every rank gets all the rows back, in order."""
    channels_last(model).eval()
    loader = DataLoader(ImageDataset(items[dist.shard(len(items))], preprocess), batch_size=CHUNK, shuffle=False)
    out = [np.zeros((0, sum(h.out_features for h in model.heads())), np.float32)]  # a rank whose share is empty
    with torch.inference_mode():
        for x, _ in loader:
            out.append(model(as_input(x).to(dist.device)).cpu().numpy())
    return dist.gather_rows(np.concatenate(out))


def train_backbone(model, trainable_stages, train_items, sel_items, preprocess, cfg: FinetuneConfig,
                   epochs: int, lr: float, patience: int, strategy: str,
                   start: tuple[float, float] | None = None, split: str = "selection",
                   dist: Context = Context(), joint=None) -> list[dict]:
    """Fine-tune the trainable stages and the head on augmented images.

    Args:
        model: the Classifier, trained in place; it ends with the best epoch's weights.
        trainable_stages: the backbone stages that train (`freeze_for`).
        train_items: (path, class) pairs trained on.
        sel_items: (path, class) pairs early stopping scores: the selection split, never
            the validation split.
        preprocess: the run's preprocessing (NCHW).
        cfg, epochs, lr, patience: options and schedule.
        strategy: "partial" or "full", the phase name in the history.
        start: the model's selection-split (balanced accuracy, loss) as it enters (the linear
            probe's). The starting weights stay a candidate, so fine-tuning never hands back
            a model that is worse on the selection split than the probe it began from; if no
            epoch beats it, no history row is marked kept and the caller keeps the probe.
        split: the name of the split `sel_items` is, recorded in every history row.
        dist: under torchrun, the process group: the model trains as DistributedDataParallel,
            each rank on a 1/N share of every `cfg.batch_size` batch (so a step sees as many
            images as in one process, and the same learning rates apply), and rank 0's
            early-stopping decision is every rank's.
        joint: several tasks at once (`edgetl.transfer.joint.JointTasks`): `model` is a
            JointClassifier, every item's class is a label vector, the loss is the tasks'
            weighted sum and early stopping compares their weighted mean balanced accuracy
            (`start` is then the probes' weighted figures).

    Returns:
        One row per epoch (as `train_head`'s, plus seconds); the restored epoch's row has
        kept=True.
    """
    num_classes = model.head.out_features
    # To the device and channels-last before the optimiser and the L2-SP reference capture the parameters.
    channels_last(model.to(dist.device))
    l2sp_ref = None
    if cfg.l2sp > 0:
        l2sp_ref = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.requires_grad}
    groups = param_groups(model, trainable_stages, lr, cfg.backbone_lr_ratio, cfg.layer_decay, cfg.weight_decay,
                          l2sp=l2sp_ref is not None)
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    transform = train_transform(preprocess, cfg.augment)
    dataset = ImageDataset(train_items, preprocess, transform)
    if dist.is_distributed:
        # Every rank gets as many images (the sampler pads by repeating a few), hence as many
        # steps: a rank with one step more would wait for the others' gradients forever.
        sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed)
        loader = DataLoader(dataset, batch_size=-(-cfg.batch_size // dist.world_size), sampler=sampler,
                            num_workers=0)
    else:
        sampler = None
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed), num_workers=0)
    ddp = dist.wrap(model)  # the module trained through; `model` (unwrapped) is scored and saved
    sel_y = np.array([c for _, c in sel_items])
    stopper, history = EarlyStopping(patience), []
    if start is not None:
        stopper.start_from(*start, model)
    with track(f"{strategy} fine-tuning", epochs * len(loader)) as task:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            set_train_mode(model)
            total, seen = 0.0, 0
            for x, y in loader:
                x, y = x.to(dist.device), y.to(dist.device)
                opt.zero_grad()
                batch_loss = 0.0
                parts = chunks(len(y))
                for k, part in enumerate(parts):  # gradients of the chunks add up to the batch's (cpu.py)
                    # DDP averages gradients across ranks once per step, in the last chunk's backward.
                    with ddp.no_sync() if dist.is_distributed and k < len(parts) - 1 else nullcontext():
                        out = ddp(as_input(x[part]))
                        loss = (loss_fn(out, y[part]) if joint is None else
                                joint.loss(out, y[part], cfg.label_smoothing)) * (len(y[part]) / len(y))
                        loss.backward()
                    batch_loss += loss.item()
                if l2sp_ref is not None:
                    # Outside DDP's reduction, which needs none: the penalty's gradient is the same
                    # on every rank, as their weights are (tests/test_distributed.py checks they stay so).
                    penalty = 0.5 * cfg.l2sp * sum(((p - l2sp_ref[n]) ** 2).sum()
                                                   for n, p in model.backbone.named_parameters() if n in l2sp_ref)
                    penalty.backward()
                    batch_loss += penalty.item()
                opt.step()
                total += batch_loss * len(y)
                seen += len(y)
                task.advance()
            sched.step()
            total, seen = dist.sum([total, seen])
            logits = predict_logits(model, sel_items, preprocess, dist)
            row = None
            if dist.rank0:
                primary, primary_y = (logits, sel_y) if joint is None else (logits[:, :num_classes], sel_y[:, 0])
                pred = primary.argmax(1)
                sel_loss = float(nn.functional.cross_entropy(torch.from_numpy(primary), torch.from_numpy(primary_y)))
                row = {"phase": strategy, "epoch": epoch, "split": split, "train_loss": total / seen,
                       "selection_loss": sel_loss, "selection_top1": float((pred == primary_y).mean()),
                       "selection_balanced_accuracy": balanced_accuracy(primary_y, pred, num_classes),
                       "seconds": time.perf_counter() - t0}
                if joint is not None:
                    scored = joint.score(logits, sel_y)
                    row.update({"selection_tasks": scored["tasks"], "selection_joint_score": scored["score"],
                                "selection_joint_loss": scored["loss"]})
            row = dist.broadcast(row)  # rank 0's scores decide on every rank: no rank stops alone
            history.append(row)
            log.info("epoch %d: train loss %.3f, %s top1 %.3f, balanced %.3f", epoch, row["train_loss"], split,
                     row["selection_top1"], row["selection_balanced_accuracy"])
            decide = ("selection_balanced_accuracy", "selection_loss") if joint is None else \
                ("selection_joint_score", "selection_joint_loss")
            if stopper.update(row[decide[0]], row[decide[1]], epoch, model):
                break
    model.load_state_dict(stopper.best_state)
    if stopper.best_epoch >= 0:
        history[stopper.best_epoch]["kept"] = True
    return history
