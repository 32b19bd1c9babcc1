"""Joint fine-tuning of one backbone for several tasks: the weighted sum of their losses.

`edgetl finetune DATA --strategy partial|full --task NAME=labels.csv --task-weight NAME=W`
trains the backbone on sum_t w_t * CE_t (the primary task, "default", is t = 0), so the
weights decide how much each task shapes the shared embedding. Every image carries one label
per task (a vector); each head sees the same embedding (with the run's dropout). Early
stopping scores every task on the selection split and keeps the epoch with the best weighted
mean balanced accuracy (ties to the lower weighted loss), never the validation split.

With a frozen backbone (`linear`) the weighted loss is separable and per-task heads minimise
it for any weights (edgetl/multitask.py), so this module is only for partial and full.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.bundle.manifest import DEFAULT_TASK
from edgetl.core.metrics import balanced_accuracy
from edgetl.model import Classifier


@dataclass(frozen=True)
class JointTasks:
    """The tasks trained together, primary first: names, loss weights, label lists."""

    names: list[str]
    weights: list[float]
    labels: list[list[str]]

    @property
    def sizes(self) -> list[int]:
        return [len(labels) for labels in self.labels]

    def label_vector(self, primary: int, extra: list[str]) -> np.ndarray:
        """One image's targets: its primary class index, then each extra task's label index."""
        return np.array([primary] + [self.labels[t + 1].index(label) for t, label in enumerate(extra)], np.int64)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """sum_t w_t * CE_t over the heads' column blocks of `logits` ([B, sum sizes]); y [B, tasks]."""
        total, start = 0.0, 0
        for t, (size, weight) in enumerate(zip(self.sizes, self.weights)):
            total = total + weight * nn.functional.cross_entropy(logits[:, start:start + size], y[:, t],
                                                                 label_smoothing=label_smoothing)
            start += size
        return total

    def score(self, logits: np.ndarray, y: np.ndarray) -> dict:
        """Per task balanced accuracy and loss on the selection split, and the weighted means
        early stopping compares (`score`, `loss`)."""
        out, start = {}, 0
        for t, (name, size) in enumerate(zip(self.names, self.sizes)):
            block = logits[:, start:start + size]
            start += size
            loss = float(nn.functional.cross_entropy(torch.from_numpy(block), torch.from_numpy(y[:, t])))
            out[name] = {"balanced_accuracy": balanced_accuracy(y[:, t], block.argmax(1), size), "loss": loss}
        w = np.asarray(self.weights) / sum(self.weights)
        return {"tasks": out, "score": float(sum(wi * out[n]["balanced_accuracy"] for wi, n in zip(w, self.names))),
                "loss": float(sum(wi * out[n]["loss"] for wi, n in zip(w, self.names)))}

    def describe(self) -> dict:
        return {"tasks": list(self.names), "loss_weights": dict(zip(self.names, self.weights)),
                "criterion": "weighted mean selection balanced accuracy over the tasks (loss weights), ties to the "
                             "lower weighted loss"}


class JointClassifier(Classifier):
    """A Classifier with one more head per extra task on the same (dropped-out) embedding;
    forward gives every head's logits side by side, primary first, as one tensor (what
    DistributedDataParallel and the selection scoring handle)."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, head: nn.Linear, dropout: float,
                 task_heads: list[nn.Linear]):
        super().__init__(backbone, embedding_dim, head.out_features, dropout, head=head)
        self.task_heads = nn.ModuleList(task_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.dropout(self.backbone(x))
        return torch.cat([h(e) for h in self.heads()], dim=1)

    def heads(self) -> list[nn.Linear]:
        return [self.head, *self.task_heads]


def joint_items(items: list, root: Path, tasks: JointTasks, labels_of: list[dict[str, str]]) -> list:
    """(path, class) pairs as (path, label vector) pairs; `labels_of[t]` maps a path relative
    to `root` (POSIX) to task t + 1's label."""
    out = []
    for path, primary in items:
        rel = Path(path).relative_to(root).as_posix()
        out.append((path, tasks.label_vector(primary, [m[rel] for m in labels_of])))
    return out


def setup(specs, default_weight: float, split, sel_items: list, train_x: np.ndarray, sel_x: np.ndarray,
          head: nn.Linear, cfg, dist):
    """Everything joint fine-tuning needs, after the primary probe: the tasks, one probe head
    per extra task (trained on the cached embeddings, as the primary's: LP-FT for every head),
    the items with label vectors, and the probes' weighted selection figures to beat.

    Args:
        specs: the extra tasks (`edgetl.multitask.TaskSpec`), in order.
        default_weight: the primary task's loss weight.
        split: the run's Split; sel_items: the items early stopping scores (selection or train).
        train_x, sel_x: their embeddings by the pretrained backbone.
        head: the primary probe head; cfg: the FinetuneConfig; dist: the process group.

    Returns:
        (JointTasks, [task heads], train items, selection items, (score, loss) to beat).
    """
    from edgetl.multitask import task_label_list
    from edgetl.transfer.config import DEFAULTS
    from edgetl.transfer.train import train_head

    every = [Path(p).relative_to(split.root).as_posix() for p, _ in split.train + split.selection + split.val]
    tasks = JointTasks([DEFAULT_TASK] + [s.name for s in specs], [float(default_weight)] + [s.weight for s in specs],
                       [list(split.labels)] + [task_label_list(s, every) for s in specs])
    labels_of = [s.labels_of for s in specs]
    train_items = joint_items(split.train, split.root, tasks, labels_of)
    sel_joint = joint_items(sel_items, split.root, tasks, labels_of)
    train_y, sel_y = np.stack([y for _, y in train_items]), np.stack([y for _, y in sel_joint])
    heads, start = None, None
    if dist.rank0:  # seconds of work, as the primary probe; the other ranks take rank 0's
        lp = DEFAULTS["linear"]
        heads = []
        for t in range(1, len(tasks.names)):
            torch.manual_seed(cfg.seed)
            h = nn.Linear(train_x.shape[1], tasks.sizes[t])
            train_head(h, cfg.dropout, train_x, train_y[:, t], sel_x, sel_y[:, t], cfg, lp["epochs"], lp["lr"],
                       lp["patience"])
            heads.append(h.state_dict())
        with torch.no_grad():
            x = torch.from_numpy(sel_x)
            logits = torch.cat([head(x)] + [x @ s["weight"].T + s["bias"] for s in heads], 1).numpy()
        scored = tasks.score(logits, sel_y)
        start = (scored["score"], scored["loss"])
    heads, start = dist.broadcast((heads, start))
    task_heads = []
    for t, state in enumerate(heads, start=1):
        h = nn.Linear(train_x.shape[1], tasks.sizes[t])
        h.load_state_dict(state)
        task_heads.append(h)
    return tasks, task_heads, train_items, sel_joint, start
