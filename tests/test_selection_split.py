"""Honest selection (issue 16): early stopping and keep/discard choices score a selection split
carved out of the training images; the validation split only gives the reported metrics."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from edgetl.data import Split, carve_selection, load_split, split_from_record
from edgetl.errors import EdgetlError
from edgetl.transfer import FinetuneConfig
from edgetl.transfer.run import finetune
from tests.conftest import DEMO

# A short linear probe: enough epochs for early stopping to pick one before the last.
FAST = dict(strategy="linear", epochs=40, patience=10, seed=0)


def _fake_split(sizes: dict[str, int], seed: int = 0) -> Split:
    """A split over file names that need not exist: carving never opens a file."""
    labels = sorted(sizes)
    train = [(Path(f"/d/{label}/{i:03d}.jpg"), c) for c, label in enumerate(labels) for i in range(sizes[label])]
    return Split(Path("/d"), labels, train, [(Path("/d/v/x.jpg"), 0)], "class folders", 0.2, seed)


def test_selection_split_is_stratified_seeded_and_disjoint():
    split = load_split(DEMO, 0.2, seed=0)
    a, b, c = carve_selection(split), carve_selection(split), carve_selection(load_split(DEMO, 0.2, seed=1))
    assert a.selection == b.selection and a.train == b.train  # seeded
    assert {p for p, _ in a.selection} != {p for p, _ in c.selection}  # another seed, another draw
    train, sel, val = ({p for p, _ in items} for items in (a.train, a.selection, a.val))
    assert not train & sel and not sel & val and not train & val
    assert train | sel == {p for p, _ in split.train} and a.val == split.val  # only the training images are split
    # 19 training images per class: round(19 x 0.15) = 3 from every class.
    assert Counter(y for _, y in a.selection) == {k: 3 for k in range(10)}
    assert a.selection_fraction == 0.15
    with pytest.raises(EdgetlError, match="already has a selection split"):
        carve_selection(a)
    with pytest.raises(EdgetlError, match="between 0 and 1"):
        carve_selection(split, 1.0)


def test_tiny_classes_give_no_selection_images_and_say_so(caplog):
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        carved = carve_selection(_fake_split({"a": 1, "b": 2, "c": 3, "d": 4, "e": 40}))
    per_class = Counter(carved.labels[y] for _, y in carved.selection)
    assert per_class == {"c": 1, "d": 1, "e": 6}  # 3 -> 1 (two still train), 4 -> 1, 40 -> 6
    assert Counter(carved.labels[y] for _, y in carved.train) == {"a": 1, "b": 2, "c": 2, "d": 3, "e": 34}
    assert "['a', 'b'] have fewer than 3 training images" in caplog.text
    assert carve_selection(_fake_split({"a": 2, "b": 2})).selection == []  # caller then selects on train


def test_split_record_round_trip_and_old_records(tmp_path):
    carved = carve_selection(load_split(DEMO, 0.2, seed=0))
    record = json.loads(json.dumps(carved.describe()))
    again = split_from_record(record)
    assert (again.train, again.selection, again.val) == (carved.train, carved.selection, carved.val)
    # A metrics.json written before selection splits existed: no selection_files.
    old = {k: v for k, v in record.items() if k not in ("selection_files", "selection_fraction")}
    assert split_from_record(old).selection == [] and split_from_record(old).val == carved.val


@pytest.mark.slow
def test_metrics_name_the_decision_split_and_list_its_files(tmp_path):
    metrics = finetune(DEMO, tmp_path / "run", FinetuneConfig(**FAST))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["selection"] == metrics["selection"]
    sel, data = metrics["selection"], metrics["data"]
    assert sel["split"] == "selection" and sel["used_for"] == ["early stopping"]
    assert sel["n"] == len(data["selection_files"]) == 30
    train, selection, val = (set(data[k]) for k in ("train_files", "selection_files", "val_files"))
    assert len(train) == 160 and len(val) == 50 and not train & selection and not selection & val
    assert all(not Path(f).is_absolute() and (DEMO / f).is_file() for f in selection)
    assert all(h["split"] == "selection" and "selection_balanced_accuracy" in h and not any(k.startswith("val_")
               for k in h) for h in metrics["history"])
    kept = next(h for h in metrics["history"] if h.get("kept"))
    assert (sel["top1"], sel["balanced_accuracy"]) == (kept["selection_top1"], kept["selection_balanced_accuracy"])


def _train_val_copy(root: Path, record: dict, val_shift: int) -> Path:
    """The run's split as train/ + val/ folders; val images go to the class `val_shift` further
    on (0: the true class; otherwise every validation label is wrong)."""
    labels = record["labels"]
    for rel in record["train_files"] + record["selection_files"]:
        dst = root / "train" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / rel, dst)
    for rel in record["val_files"]:
        label = labels[(labels.index(Path(rel).parent.name) + val_shift) % len(labels)]
        dst = root / "val" / label / Path(rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / rel, dst)
    return root


@pytest.mark.slow
def test_early_stopping_never_sees_the_validation_labels(tmp_path):
    """Same training images, validation labels correct in one copy and all wrong in the other:
    the kept epoch, the history and the saved head are identical; only the reported metrics differ."""
    record = carve_selection(load_split(DEMO, 0.2, seed=0)).describe()
    honest = finetune(_train_val_copy(tmp_path / "true", record, 0), tmp_path / "a", FinetuneConfig(**FAST))
    wrong = finetune(_train_val_copy(tmp_path / "wrong", record, 3), tmp_path / "b", FinetuneConfig(**FAST))
    assert honest["best_epoch"] == wrong["best_epoch"] and honest["best_epoch"] < FAST["epochs"] - 1
    assert honest["history"] == wrong["history"] and honest["selection"] == wrong["selection"]
    heads = [torch.load(tmp_path / r / "model.pt", weights_only=True)["head"] for r in ("a", "b")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert honest["top1"] >= 0.7 and wrong["top1"] <= 0.2  # the labels did reach the reported numbers


@pytest.mark.slow
def test_without_a_selection_split_decisions_score_the_training_images(tmp_path, caplog):
    """Two images per class to train on: nothing can be held out, and the run says what it did."""
    root = tmp_path / "tiny"
    for label in ("3", "7"):
        (root / label).mkdir(parents=True)
        for src in sorted((DEMO / label).iterdir())[:3]:
            shutil.copyfile(src, root / label / src.name)
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        metrics = finetune(root, tmp_path / "run", FinetuneConfig(strategy="linear", epochs=5, seed=0))
    assert "no selection split was held out" in caplog.text
    assert metrics["selection"]["split"] == "train" and metrics["selection"]["n"] == 4
    assert metrics["data"]["selection_files"] == [] and len(metrics["data"]["val_files"]) == 2
    assert all(h["split"] == "train" for h in metrics["history"])
