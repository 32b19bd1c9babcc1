"""The trained model (backbone -> embedding -> linear head) and the run checkpoint format.

`RUN/model.pt` is a plain dict of tensors, strings and numbers, so it loads with
`torch.load(..., weights_only=True)`: no pickled code runs when a user opens a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgetl.backbones import BackboneSpec, create_architecture, get_spec
from edgetl.errors import EdgetlError
from edgetl.core.preprocess import Preprocess

RUN_FORMAT = "edgetl.run/1"


class Classifier(nn.Module):
    """Backbone to embedding, dropout, linear head. Split at the embedding for export."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, num_classes: int, dropout: float = 0.0,
                 head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = head if head is not None else nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def heads(self) -> list[nn.Linear]:
        """Every head on the embedding, in the order of forward's output columns."""
        return [self.head]


@dataclass(frozen=True)
class TaskHead:
    """An extra task's linear head on the run's embedding (edgetl/multitask.py fits it)."""

    labels: list[str]
    weight: torch.Tensor  # [classes, embedding_dim]
    bias: torch.Tensor  # [classes]


@dataclass
class Run:
    model: Classifier
    spec: BackboneSpec
    labels: list[str]
    preprocess: Preprocess
    weights_origin: str
    strategy: str
    tasks: dict[str, TaskHead] = field(default_factory=dict)  # extra tasks; the class folders' task is `model.head`

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone


def save_run(path: Path, *, spec: BackboneSpec, labels: list[str], preprocess: Preprocess, weights_origin: str,
             strategy: str, dropout: float, backbone_state: dict, head: nn.Linear) -> None:
    """Write RUN/model.pt atomically. Takes the backbone as a state dict: a linear probe on
    cached embeddings saves the pretrained weights without ever building the module."""
    state = {
        "format": RUN_FORMAT,
        "backbone": spec.name,
        "labels": list(labels),
        "preprocess": preprocess.to_dict(),
        "embedding_dim": spec.embedding_dim,
        "weights_origin": weights_origin,
        "strategy": strategy,
        "dropout": float(dropout),
        "backbone_state": {k: v.detach().cpu() for k, v in backbone_state.items()},
        "head": {"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()},
    }
    tmp = Path(path).with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def save_task_heads(path: Path, tasks: dict[str, TaskHead]) -> None:
    """Write RUN/model.pt with `tasks` (name -> labels, weight, bias) replacing any it held.

    Args:
        path: the model.pt to rewrite (atomically).
        tasks: the extra tasks' heads.

    Raises:
        EdgetlError: `path` is not a run checkpoint.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise EdgetlError(f"'{path}' is not an edgetl run checkpoint (expected format {RUN_FORMAT})")
    state["tasks"] = {name: {"labels": list(t.labels), "weight": t.weight.detach().cpu(),
                             "bias": t.bias.detach().cpu()} for name, t in tasks.items()}
    tmp = Path(path).with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_run(run_dir: str | Path) -> Run:
    """Load RUN/model.pt (weights_only) into a Classifier in eval mode."""
    path = Path(run_dir) / "model.pt" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise EdgetlError(f"'{path}' does not exist; run `edgetl finetune DATA --out RUN` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgetlError(f"'{path}' is not a readable edgetl checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise EdgetlError(f"'{path}' is not an edgetl run checkpoint (expected format {RUN_FORMAT})")
    spec = get_spec(state["backbone"])
    backbone = create_architecture(spec.name)
    backbone.load_state_dict(state["backbone_state"])
    labels = list(state["labels"])
    model = Classifier(backbone, int(state["embedding_dim"]), len(labels), float(state.get("dropout", 0.0)))
    model.head.load_state_dict(state["head"])
    # Runs written before multi-task heads have no "tasks".
    tasks = {name: TaskHead(list(t["labels"]), t["weight"], t["bias"]) for name, t in state.get("tasks", {}).items()}
    return Run(model.eval(), spec, labels, Preprocess.from_dict(state["preprocess"]),
               state["weights_origin"], state["strategy"], tasks)
