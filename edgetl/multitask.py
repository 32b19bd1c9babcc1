"""Several tasks on one backbone: one linear head per extra task on the run's embedding.

`edgetl finetune DATA --task parity=parity.csv` keeps the class folders as the primary task
("default") and adds one task per CSV, whose rows map an image path (relative to DATA, as
metrics.json's `train_files`/`val_files` list them) to a label, or per folder laying the same
images out by that task's labels (`--task hand=hands/`, hands/<label>/<image>, matched by
content). After the primary fine-tune,
`fit_task_heads` embeds the run's train, selection and validation images with the run's final
backbone (through the EmbeddingCache, so a linear run's embeddings are cache hits), fits one
softmax head per task with early stopping on the selection split, scores each task once on the
validation split, and stores the heads in model.pt (`tasks`) and the figures in metrics.json
(`tasks`). The export ships one head file per task (edgetl/exporter.py) and the device runtime
answers every task from the one embedding (edgetl/runtime/predictor.py).

Joint training: with the backbone frozen (`linear`) the weighted multi-task loss
sum_t w_t * L_t(head_t) is separable, each head appearing in one term only, so fitting every
head on its own minimises it for any positive weights w_t: per-task heads on the shared
embeddings are exactly joint training, and `--task-weight` changes nothing. With `partial` or
`full` the backbone is fine-tuned on the weighted sum of every task's loss, so the weights
decide how much each task shapes the shared embedding (edgetl/transfer/joint.py; metrics.json
`joint_training`), and each extra head is then fitted here on the final backbone.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetl.bundle.manifest import DEFAULT_TASK, TASK_NAME, check_label
from edgetl.core.fsutil import atomic_write_json, sha256_file, staged_replace
from edgetl.core.images import IMAGE_SUFFIXES
from edgetl.core.metrics import classification_metrics
from edgetl.core.scan import class_folders
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

TRAINING = {
    "linear": "joint: per-task heads on the frozen backbone's shared embeddings (the weighted loss is separable, "
              "so these heads minimise it for any positive task weights)",
    "joint": "joint: the backbone fine-tuned on the weighted sum of every task's loss (edgetl/transfer/joint.py), "
             "then each task's head fitted on the final backbone",
    "probe kept": "per-task heads on the pretrained backbone: no joint fine-tuning epoch beat the linear probes on "
                  "the selection split, so the backbone was kept unchanged",
}


@dataclass(frozen=True)
class TaskSpec:
    """One extra task: its name, the CSV it came from, file -> label, and its loss weight."""

    name: str
    csv: Path
    labels_of: dict[str, str]  # image path relative to DATA (POSIX separators) -> label
    weight: float = 1.0


def parse_assignments(values: Sequence[str], option: str) -> dict[str, str]:
    """`NAME=VALUE` strings as a dict.

    Args:
        values: the option's values, e.g. ("parity=parity.csv",).
        option: the option's name, for the error.

    Returns:
        name -> value, in the given order.

    Raises:
        EdgetlError: a value without '=', an empty side, or a name given twice.
    """
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise EdgetlError(f"{option} {value!r} is not NAME=VALUE; e.g. {option} parity=parity.csv")
        if name.strip() in out:
            raise EdgetlError(f"{option} names '{name.strip()}' twice; give each task once")
        out[name.strip()] = rest.strip()
    return out


def read_labels_csv(path: str | Path, task: str) -> dict[str, str]:
    """A task's labels: CSV rows `file,label` (an optional `file,label` header first).

    Args:
        path: the CSV file.
        task: the task's name, for the errors.

    Returns:
        image path relative to DATA (POSIX separators) -> label.

    Raises:
        EdgetlError: a missing or unreadable file, a short row, an empty or multi-line label,
            a file given two different labels.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"labels file '{path}' of task '{task}' does not exist; pass --task {task}=CSV with a CSV "
                          "of `file,label` rows")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EdgetlError(f"labels file '{path}' of task '{task}' is unreadable ({exc}); write it as UTF-8 CSV "
                          "`file,label` rows") from None
    first = 1
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows, first = rows[1:], 2
    out: dict[str, str] = {}
    for line, row in enumerate(rows, first):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            raise EdgetlError(f"'{path}' row {line} ({','.join(row)!r}) is not `file,label`; fix that row")
        rel, label = Path(row[0].strip()).as_posix(), check_label(row[1].strip(), f"'{path}' row {line}",
                                                                  "fix the label in that row")
        if out.get(rel, label) != label:
            raise EdgetlError(f"'{path}' gives '{rel}' two labels ('{out[rel]}' and '{label}'); keep one row for it")
        out[rel] = label
    if not out:
        raise EdgetlError(f"labels file '{path}' of task '{task}' has no `file,label` rows")
    return out


def read_labels_folder(folder: str | Path, task: str, data: str | Path) -> dict[str, str]:
    """A task's labels from another folder layout of the same images: FOLDER/<label>/<image>.

    The images are matched to DATA's by content (sha256), not by name, so the layout may hold
    copies, links or renamed files (e.g. `hands/left/IMG_1.jpg` for `digits/3/IMG_1.jpg`).

    Args:
        folder: the layout's root; each subfolder is a label (nested files count).
        task: the task's name, for the errors.
        data: the finetune DATA folder whose images are labelled.

    Returns:
        image path relative to DATA (POSIX separators) -> label, for DATA's images found in
        the layout (`require_labels` refuses the run when any is missing).

    Raises:
        EdgetlError: no label folders; one image under two labels.
    """
    folder, root = Path(folder), Path(data)
    label_of_digest: dict[str, str] = {}
    for sub in class_folders(folder):
        label = check_label(sub.name, f"folder '{sub}' of task '{task}'", "rename the folder")
        for p in sorted(sub.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
                digest = sha256_file(p)
                if label_of_digest.get(digest, label) != label:
                    raise EdgetlError(f"'{p}' (task '{task}') is also under '{label_of_digest[digest]}'; an image "
                                      "takes one label per task: remove one copy")
                label_of_digest[digest] = label
    if not label_of_digest:
        raise EdgetlError(f"task '{task}': '{folder}' has no label folders with images; lay it out as "
                          f"{folder}/<label>/<image>, or pass a CSV of `file,label` rows")
    out = {}
    for rel in image_files(root):
        label = label_of_digest.get(sha256_file(root / rel))
        if label is not None:
            out[rel] = label
    return out


def load_tasks(tasks: Mapping[str, str | Path], weights: Mapping[str, float] | None = None,
               data: str | Path | None = None) -> list[TaskSpec]:
    """Check the task names and weights and read each task's labels.

    Args:
        tasks: extra task name -> labels CSV (`file,label` rows), or a folder laying the same
            images out by this task's labels (FOLDER/<label>/<image>, matched by content).
        weights: task name -> loss weight (the extra tasks' names or 'default'); 1 when absent.
        data: the finetune DATA folder (needed for folder tasks).

    Returns:
        One TaskSpec per task, in the given order.

    Raises:
        EdgetlError: a bad or reserved name, a weight for an unknown task or not above 0, a bad
            CSV or folder.
    """
    weights = dict(weights or {})
    for name in tasks:
        if not TASK_NAME.match(name) or name == DEFAULT_TASK:
            raise EdgetlError(f"task name {name!r} must be 1 to 64 letters, digits, '_', '-' or '.' and not "
                              f"'{DEFAULT_TASK}' (the class folders' task); rename it in --task")
    for name, w in weights.items():
        if name != DEFAULT_TASK and name not in tasks:
            raise EdgetlError(f"--task-weight names task '{name}', which no --task defines; its tasks are "
                              f"{', '.join([DEFAULT_TASK, *tasks])}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise EdgetlError(f"--task-weight {name}={w!r}: a task weight must be a number above 0")
    specs = []
    for name, path in tasks.items():
        if Path(path).is_dir():
            if data is None:
                raise EdgetlError(f"task '{name}': '{path}' is a folder; its images are matched to DATA's, so pass data")
            labels_of = read_labels_folder(path, name, data)
        else:
            labels_of = read_labels_csv(path, name)
        specs.append(TaskSpec(name, Path(path), labels_of, float(weights.get(name, 1.0))))
    return specs


def image_files(data: str | Path) -> list[str]:
    """The image files under DATA's class folders (train/ and val/ when both exist), relative
    to DATA: every file a run on DATA can train or validate on. Lists, never decodes."""
    root = Path(data)
    parents = [root / "train", root / "val"] if (root / "train").is_dir() and (root / "val").is_dir() else [root]
    out = []
    for parent in parents:
        for folder in class_folders(parent):
            out += [p.relative_to(root).as_posix() for p in sorted(folder.rglob("*"))
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return out


def require_labels(spec: TaskSpec, files: Sequence[str], what: str) -> None:
    """Refuse a task whose CSV lacks a label for any of `files`, naming the first one.

    Raises:
        EdgetlError: the CSV, the first file without a label, how many lack one, and the fix.
    """
    missing = [f for f in files if Path(f).as_posix() not in spec.labels_of]
    if missing and spec.csv.is_dir():
        raise EdgetlError(f"'{spec.csv}' (task '{spec.name}') holds no copy of '{missing[0]}' ({len(missing)} of "
                          f"{len(files)} {what} are missing from it); put each image under its label folder there")
    if missing:
        raise EdgetlError(f"'{spec.csv}' (task '{spec.name}') has no label for '{missing[0]}' ({len(missing)} of "
                          f"{len(files)} {what} lack one); add a row `{missing[0]},LABEL` for each of them")


def task_label_list(spec: TaskSpec, files: Sequence[str]) -> list[str]:
    """The task's labels over `files` (the run's images of every split), sorted: its head's classes.

    Raises:
        EdgetlError: the files carry one label only.
    """
    labels = sorted({spec.labels_of[Path(f).as_posix()] for f in files})
    if len(labels) < 2:
        raise EdgetlError(f"'{spec.csv}' gives task '{spec.name}' one label ('{labels[0]}') over the run's images; "
                          "a task needs at least two")
    return labels


def fit_task_heads(run_dir: str | Path, specs: Sequence[TaskSpec], cfg, default_weight: float = 1.0) -> dict:
    """Fit one head per extra task on the finished run's backbone and store them in the run.

    Args:
        run_dir: a run `edgetl finetune` wrote (model.pt, metrics.json); replaced in one swap.
        specs: the extra tasks (`load_tasks`).
        cfg: the run's FinetuneConfig (cache folder, seed, the head's training options).
        default_weight: the primary task's loss weight, recorded.

    Returns:
        metrics.json's `tasks`: per task its labels, loss weight, top1, balanced_accuracy,
        per_class and confusion on the validation split, and the selection split's figures.

    Raises:
        EdgetlError: an image of the run's splits has no label in a task's CSV; a task with one label.
    """
    import torch
    from torch import nn

    from edgetl.data import split_from_record
    from edgetl.model import TaskHead, load_run
    from edgetl.transfer.config import DEFAULTS
    from edgetl.transfer.features import EmbeddingCache
    from edgetl.transfer.pretrained import state_digest
    from edgetl.transfer.train import train_head

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    record = metrics["data"]
    files = {s: list(record.get(f"{s}_files") or []) for s in ("train", "selection", "val")}
    for spec in specs:
        require_labels(spec, [f for s in files.values() for f in s], "images of the run's splits")
    split = split_from_record(record)
    run = load_run(run_dir)
    # Keyed by the backbone's weights: a linear run's backbone is the pretrained one, so every
    # image is a cache hit; a fine-tuned backbone gets its own cache folder.
    cache = EmbeddingCache(state_digest(run.backbone.state_dict()), lambda: run.backbone, run.preprocess,
                           cfg.cache_dir, about={"backbone": run.spec.name, "weights": run.weights_origin,
                                                 "strategy": run.strategy, "preprocess": run.preprocess.to_dict()})
    train_x = cache.embed([p for p, _ in split.train], "embedding train images (tasks)")
    sel_name, sel_files = ("selection", files["selection"]) if split.selection else ("train", files["train"])
    sel_x = cache.embed([p for p, _ in split.selection], "embedding selection images (tasks)") \
        if split.selection else train_x
    val_x = cache.embed([p for p, _ in split.val], "embedding val images (tasks)")
    lp = DEFAULTS["linear"]
    linear = run.strategy == "linear"  # the schedule run.py gives the primary head
    epochs, lr, patience = (cfg.epochs or lp["epochs"], cfg.lr or lp["lr"], cfg.patience or lp["patience"]) \
        if linear else (lp["epochs"], lp["lr"], lp["patience"])

    heads, results = {}, {}
    for spec in specs:
        labels = task_label_list(spec, [f for fs in files.values() for f in fs])
        index = {label: i for i, label in enumerate(labels)}
        y = {s: [index[spec.labels_of[Path(f).as_posix()]] for f in fs] for s, fs in files.items()}
        sel_y = y["selection"] if sel_name == "selection" else y["train"]
        torch.manual_seed(cfg.seed)  # each head starts alike whatever ran before
        head = nn.Linear(run.spec.embedding_dim, len(labels))
        # Decisions (the kept epoch) score the selection split, never the validation split.
        history = train_head(head, cfg.dropout, train_x, y["train"], sel_x, sel_y, cfg, epochs, lr, patience,
                             split=sel_name)
        kept = [h for h in history if h.get("kept")][-1]
        with torch.no_grad():
            predicted = head(torch.from_numpy(val_x)).argmax(1).numpy()
        m = classification_metrics(y["val"], predicted, labels)
        m.update({
            "labels": labels,
            "loss_weight": spec.weight,
            "labels_file": str(spec.csv.resolve()),
            "best_epoch": kept["epoch"],
            "epochs_run": len(history),
            "selection": {"split": sel_name, "n": len(sel_files), "used_for": ["early stopping"],
                          "criterion": "balanced accuracy, ties to the lower loss", "top1": kept["selection_top1"],
                          "balanced_accuracy": kept["selection_balanced_accuracy"],
                          "reported_on": "val: scored once, after every decision"},
            # The task's label of each data.<split>_files entry, in order: what the export
            # scores (val) and, when INT8 fails the task's gate, re-fits the head on (train,
            # selection), without the CSV.
            **{f"{s}_labels": [labels[i] for i in y[s]] for s in ("train", "selection", "val")},
        })
        log.info("task '%s': %d labels, validation top1 %.4f (head kept at epoch %d on the %s split)", spec.name,
                 len(labels), m["top1"], kept["epoch"], sel_name)
        heads[spec.name] = TaskHead(labels, head.weight.detach().clone(), head.bias.detach().clone())
        results[spec.name] = m

    metrics["tasks"] = results
    # A fine-tune whose epochs never beat the probe keeps the pretrained backbone (run.py).
    metrics["tasks_training"] = TRAINING["linear" if linear else "joint" if metrics.get("kept_phase") != "linear"
                                         else "probe kept"]
    metrics["task_weights"] = {DEFAULT_TASK: float(default_weight), **{s.name: s.weight for s in specs}}
    _rewrite_run(run_dir, heads, metrics)
    return results


def _rewrite_run(run_dir: Path, heads: dict, metrics: dict) -> None:
    """model.pt with the task heads and metrics.json with their figures, swapped in together
    (a staged copy of the run, as finetune writes it), so a kill leaves the run whole."""
    from edgetl.model import save_task_heads

    out = run_dir.resolve() if run_dir.is_symlink() else run_dir
    with staged_replace(out) as stage:
        for path in out.iterdir():
            if path.is_file():
                shutil.copy2(path, stage / path.name)
        save_task_heads(stage / "model.pt", heads)
        atomic_write_json(stage / "metrics.json", metrics)


def task_labels(run_dir: str | Path, split: str = "val") -> dict[str, dict[Path, str]]:
    """Each extra task's labels of one of the run's splits, by image path, for the export.

    Args:
        run_dir: the run folder.
        split: "train", "selection" or "val".

    Returns:
        task -> {image path under the run's data root: label}; empty for a run without extra
        tasks (or a record that does not hold that split's labels).
    """
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
        root, files = Path(metrics["data"]["root"]), metrics["data"].get(f"{split}_files") or []
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for name, t in (metrics.get("tasks") or {}).items():
        labels = t.get(f"{split}_labels") if isinstance(t, dict) else None
        if isinstance(labels, list) and len(labels) == len(files):
            out[name] = {root / f: label for f, label in zip(files, labels)}
    return out
