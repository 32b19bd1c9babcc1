"""Several tasks on one backbone (issue 17 item 4): the demo digits plus a second task, even/odd,
from a CSV; fine-tuned, exported to INT8 TFLite, and answered on the device (torch blocked).
Real components only: the real CLIs in subprocesses, LiteRT, files on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import DEMO, EDGETL, manifest_json, run_cli
from tests.ondevice_support import device, make_class_folders


def parity_rows(root: Path = DEMO) -> list[str]:
    """`file,label` rows for every demo image: the digit folder's parity."""
    return [f"{p.relative_to(root).as_posix()},{'even' if int(p.parent.name) % 2 == 0 else 'odd'}"
            for p in sorted(root.glob("*/*")) if p.is_file() and p.parent.name.isdigit()]


@pytest.fixture(scope="module")
def parity_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "parity.csv"
    path.write_text("\n".join(["file,label", *parity_rows()]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mt_run(parity_csv, tmp_path_factory) -> Path:
    """`edgetl finetune DEMO --strategy linear --task parity=CSV` through the real CLI."""
    out = tmp_path_factory.mktemp("runs") / "demo-parity"
    proc = run_cli(EDGETL, "finetune", DEMO, "--strategy", "linear", "--epochs", "150", "--task",
                   f"parity={parity_csv}", "--task-weight", "parity=2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task parity: top1" in proc.stdout
    return out


@pytest.fixture(scope="module")
def mt_bundle(mt_run, small_recipe, tmp_path_factory) -> Path:
    """The two-task run as an rpi5 INT8 TFLite bundle (the tests' small recipe, no recovery)."""
    out = tmp_path_factory.mktemp("dist") / "rpi5-parity"
    proc = run_cli(EDGETL, "export", mt_run, "--target", "rpi5", "--precision", "int8", "--calib-recipe",
                   small_recipe, "--recover", "off", "--allow-accuracy-drop", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_run_reports_and_stores_every_task(mt_run):
    from edgetl.model import load_run

    metrics = json.loads((mt_run / "metrics.json").read_text())
    task = metrics["tasks"]["parity"]
    assert task["labels"] == ["even", "odd"] and task["loss_weight"] == 2.0
    assert 0.0 <= task["top1"] <= 1.0 and 0.0 <= task["balanced_accuracy"] <= 1.0
    assert task["n"] == len(metrics["data"]["val_files"]) == len(task["val_labels"])
    assert set(task["per_class"]) == {"even", "odd"}
    # Decisions never look at the reported split: early stopping scored the selection split.
    assert task["selection"]["split"] == "selection" and task["selection"]["n"] == len(metrics["data"]["selection_files"])
    assert metrics["tasks_training"].startswith("joint")  # linear: the loss is separable
    assert metrics["task_weights"] == {"default": 1.0, "parity": 2.0}
    digits = [Path(f).parent.name for f in metrics["data"]["val_files"]]
    assert task["val_labels"] == ["even" if int(d) % 2 == 0 else "odd" for d in digits]

    run = load_run(mt_run)
    head = run.tasks["parity"]
    assert head.labels == ["even", "odd"] and tuple(head.weight.shape) == (2, run.spec.embedding_dim)


@pytest.mark.slow
def test_int8_bundle_has_a_head_per_task_and_scores_each(mt_bundle):
    from edgetl.bundle import Bundle

    m = manifest_json(mt_bundle)
    assert m["tasks"] == {"parity": {"head": "head.parity.npz", "labels": ["even", "odd"]}}
    assert "head.parity.npz" in m["files"]
    scored = m["metrics"]["tasks"]["parity"]
    assert scored["fp32"]["n"] == scored["int8"]["n"] == m["metrics"]["val"]["n"]
    gate = m["metrics"]["gate"]
    drop = (scored["fp32"]["top1"] - scored["int8"]["top1"]) * 100
    assert gate["tasks"]["parity"]["drop_pts"] == pytest.approx(drop)
    assert gate["passed"] == (gate["drop_pts"] <= gate["tolerance_pts"] and not gate["failed_tasks"])

    b = Bundle.open(mt_bundle)
    assert b.tasks == ("default", "parity")
    assert b.labels_of("parity") == ("even", "odd")
    assert b.factory_head("parity").weight.shape == (2, b.manifest.embedding_dim)
    # The reference set carries each task's truth, so a task's guardrail never checks against digits.
    emb, digits = b.reference()
    _, parity = b.reference("parity")
    assert len(parity) == len(digits) == len(emb)
    assert parity == ["even" if int(d) % 2 == 0 else "odd" for d in digits]


@pytest.mark.slow
def test_device_returns_every_task(mt_bundle):
    images = [next((DEMO / d).iterdir()) for d in ("3", "4")]
    result = device("predict", mt_bundle, *images, "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 2
    for p in predictions:
        assert list(p["tasks"]) == ["default", "parity"]
        assert p["tasks"]["default"]["label"] == p["label"]
        assert p["tasks"]["parity"]["label"] in ("even", "odd") and 0.5 <= p["tasks"]["parity"]["score"] <= 1.0
    table = device("predict", mt_bundle, images[0])
    assert table.returncode == 0 and "parity" in table.stdout


@pytest.mark.slow
def test_device_retrains_evaluates_and_rolls_back_one_task(mt_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(mt_bundle, bundle)
    data = make_class_folders(tmp_path / "parity", {
        "even": [p for d in ("0", "2", "4") for p in sorted((DEMO / d).iterdir())[:8]],
        "odd": [p for d in ("1", "3", "5") for p in sorted((DEMO / d).iterdir())[:8]]})

    result = device("retrain", bundle, data, "--task", "parity", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["labels"] == ["even", "odd"]
    heads = device("heads", bundle, "--task", "parity", "--json")
    assert heads.returncode == 0, heads.stderr
    report = json.loads(heads.stdout)
    assert report["active"] == 1 and [v["labels"] for v in report["versions"]] == [["even", "odd"]] * 2
    assert not (bundle / "heads" / "index.json").exists()  # the default task's store is untouched

    predicted = json.loads(device("predict", bundle, next((DEMO / "7").iterdir()), "--json").stdout)
    assert predicted["predictions"][0]["tasks"]["parity"]["head_version"] == 1
    assert predicted["predictions"][0]["head_version"] == 0

    scored = device("evaluate", bundle, data, "--task", "parity", "--json")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    assert metrics["task"] == "parity" and metrics["n"] == 48 and set(metrics["per_class"]) == {"even", "odd"}

    assert device("rollback", bundle, "--task", "parity").returncode == 0
    assert json.loads(device("heads", bundle, "--task", "parity", "--json").stdout)["active"] == 0


@pytest.mark.slow
def test_unknown_task_is_refused_by_name(mt_bundle):
    result = device("heads", mt_bundle, "--task", "colour")
    assert result.returncode == 1
    assert "no task 'colour'" in result.stderr and "default, parity" in result.stderr


@pytest.mark.slow
def test_manifest_tasks_are_validated(mt_bundle):
    from edgetl.bundle import BundleError, Manifest

    body = manifest_json(mt_bundle)
    Manifest.from_json(body)  # as written
    for tasks, match in (({"parity": {"head": "missing.npz", "labels": ["even", "odd"]}}, "head file"),
                         ({"parity": {"head": "head.parity.npz", "labels": ["even", "even"]}}, "unique"),
                         ({"default": {"head": "head.parity.npz", "labels": ["even", "odd"]}}, "task name")):
        with pytest.raises(BundleError, match=match):
            Manifest.from_json({**body, "tasks": tasks}, check_digest=False)


def test_a_missing_label_is_refused_before_training(tmp_path):
    rows = parity_rows()
    missing = rows.pop(17).split(",")[0]
    csv = tmp_path / "parity.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    proc = run_cli(EDGETL, "finetune", DEMO, "--strategy", "linear", "--task", f"parity={csv}",
                   "--out", tmp_path / "run")
    assert proc.returncode == 1
    assert str(csv) in proc.stderr and missing in proc.stderr and "add a row" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_task_options_are_checked(tmp_path):
    from edgetl.errors import EdgetlError
    from edgetl.multitask import load_tasks, parse_assignments, read_labels_csv

    assert parse_assignments(["a=x.csv", "b = y.csv"], "--task") == {"a": "x.csv", "b": "y.csv"}
    with pytest.raises(EdgetlError, match="NAME=VALUE"):
        parse_assignments(["parity"], "--task")
    csv = tmp_path / "t.csv"
    csv.write_text("0/a.jpg,even\n1/b.jpg,odd\n", encoding="utf-8")
    assert read_labels_csv(csv, "t") == {"0/a.jpg": "even", "1/b.jpg": "odd"}  # no header is fine
    with pytest.raises(EdgetlError, match="not 'default'"):
        load_tasks({"default": csv})
    with pytest.raises(EdgetlError, match="above 0"):
        load_tasks({"t": csv}, {"t": 0})
    with pytest.raises(EdgetlError, match="no --task defines"):
        load_tasks({"t": csv}, {"colour": 1})
    csv.write_text("0/a.jpg,even\n0/a.jpg,odd\n", encoding="utf-8")
    with pytest.raises(EdgetlError, match="two labels"):
        read_labels_csv(csv, "t")
    usage = run_cli(EDGETL, "finetune", DEMO, "--task", "parity", "--out", tmp_path / "run")
    assert usage.returncode == 2 and "NAME=VALUE" in usage.stderr


@pytest.mark.slow
def test_fine_tuned_run_fits_task_heads_on_its_backbone(parity_csv, tmp_path):
    """partial with a task: the backbone trains on both tasks' weighted loss, every epoch scores
    both on the selection split, and the parity head is fitted on the final backbone."""
    import edgetl
    from edgetl.model import load_run
    from edgetl.multitask import TRAINING

    run = edgetl.finetune(DEMO, tmp_path / "run", strategy="partial", unfreeze=1, epochs=1, seed=0,
                          tasks={"parity": parity_csv}, task_weights={"parity": 2.0})
    assert run.metrics["joint_training"]["loss_weights"] == {"default": 1.0, "parity": 2.0}
    tuned = [h for h in run.metrics["history"] if h["phase"] == "partial"]
    assert tuned and set(tuned[0]["selection_tasks"]) == {"default", "parity"}
    row = tuned[0]
    weighted = (row["selection_tasks"]["default"]["balanced_accuracy"]
                + 2 * row["selection_tasks"]["parity"]["balanced_accuracy"]) / 3
    assert row["selection_joint_score"] == pytest.approx(weighted)
    assert row["selection_tasks"]["default"]["balanced_accuracy"] == pytest.approx(row["selection_balanced_accuracy"])
    expected = TRAINING["joint"] if run.metrics["kept_phase"] == "partial" else TRAINING["probe kept"]
    assert run.metrics["tasks_training"] == expected
    assert run.metrics["tasks"]["parity"]["n"] == run.metrics["n"]
    assert set(load_run(run.path).tasks) == {"parity"}


@pytest.mark.slow
def test_task_weights_shape_the_jointly_fine_tuned_backbone():
    """The same images, seed and steps: only the parity task's loss weight differs (0.01 vs 10),
    and the trained backbone stages come out different; the loss is the weighted sum."""
    import numpy as np
    import torch

    from edgetl.backbones import get_spec
    from edgetl.data import carve_selection, load_split
    from edgetl.transfer.config import FinetuneConfig
    from edgetl.transfer.joint import JointClassifier, JointTasks, joint_items
    from edgetl.transfer.pretrained import PretrainedBackbone
    from edgetl.transfer.strategies import freeze_for
    from edgetl.transfer.train import train_backbone

    split = carve_selection(load_split(DEMO, 0.2, 0))
    spec = get_spec("tf_efficientnet_lite0")
    parity = {row.split(",")[0]: row.split(",")[1] for row in parity_rows()}
    states = {}
    for weight in (0.01, 10.0):
        tasks = JointTasks(["default", "parity"], [1.0, weight], [list(split.labels), ["even", "odd"]])
        items = joint_items(split.train[:32], split.root, tasks, [parity])
        sel = joint_items(split.selection, split.root, tasks, [parity])
        torch.manual_seed(0)
        model = JointClassifier(PretrainedBackbone(spec).module(), spec.embedding_dim,
                                torch.nn.Linear(spec.embedding_dim, len(split.labels)), 0.2,
                                [torch.nn.Linear(spec.embedding_dim, 2)])
        history = train_backbone(model, freeze_for("partial", model.backbone, 1), items, sel,
                                 spec.preprocess("NCHW"), FinetuneConfig(batch_size=16, seed=0), epochs=1, lr=1e-2,
                                 patience=5, strategy="partial", joint=tasks)
        assert history[0]["kept"] and set(history[0]["selection_tasks"]) == {"default", "parity"}
        states[weight] = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        logits, y = torch.randn(4, len(split.labels) + 2), torch.tensor([[0, 1], [1, 0], [2, 1], [3, 0]])
        expected = torch.nn.functional.cross_entropy(logits[:, :-2], y[:, 0]) + \
            weight * torch.nn.functional.cross_entropy(logits[:, -2:], y[:, 1])
        assert torch.allclose(tasks.loss(logits, y, 0.0), expected)
    changed = [k for k in states[0.01] if not torch.equal(states[0.01][k], states[10.0][k])]
    assert changed and all(np.isfinite(states[10.0][k].numpy()).all() for k in changed)


def test_a_folder_layout_of_the_same_images_is_a_task(tmp_path):
    """--task NAME=DIR: DIR/<label>/<image> holds the same images under other names; they are
    matched by content, a missing one is refused by name, as is one image under two labels."""
    from edgetl.errors import EdgetlError
    from edgetl.multitask import image_files, load_tasks, require_labels

    layout = tmp_path / "parity layout"
    files = image_files(DEMO)
    for i, rel in enumerate(files):
        label = "even" if int(Path(rel).parts[0]) % 2 == 0 else "odd"
        (layout / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / rel, layout / label / f"copy {i}{Path(rel).suffix}")  # renamed copies
    (spec,) = load_tasks({"parity": layout}, {"parity": 2.0}, DEMO)
    assert spec.weight == 2.0 and len(spec.labels_of) == len(files)
    assert all(spec.labels_of[rel] == ("even" if int(Path(rel).parts[0]) % 2 == 0 else "odd") for rel in files)
    require_labels(spec, files, "images")
    first = next((layout / "even").iterdir())
    first.unlink()
    (spec,) = load_tasks({"parity": layout}, None, DEMO)
    with pytest.raises(EdgetlError, match="holds no copy of"):
        require_labels(spec, files, "images")
    shutil.copyfile(next((layout / "odd").iterdir()), layout / "even" / "twice.png")
    with pytest.raises(EdgetlError, match="an image takes one label per task"):
        load_tasks({"parity": layout}, None, DEMO)


@pytest.mark.slow
def test_host_adaptation_refuses_a_multi_task_run(mt_run, tmp_path):
    """Adapting would rewrite the primary head only and drop the task heads: refused by name."""
    import edgetl.adapt
    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match=r"has extra task heads \(parity\).*edgetl-device adapt BUNDLE DIR --task"):
        edgetl.adapt.adapt_run(mt_run, DEMO, "align", tmp_path / "adapted")
    assert not (tmp_path / "adapted").exists()
