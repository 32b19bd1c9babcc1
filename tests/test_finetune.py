"""Fine-tuning end to end on real images: outputs, strategies, bad input, determinism, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgetl.backends import Backbone
from edgetl.bundle import Bundle
from edgetl.data import load_split
from edgetl.errors import EdgetlError
from edgetl.transfer import FinetuneConfig
from edgetl.transfer.run import finetune
from edgetl.transfer.strategies import choose_strategy
from edgetl.model import load_run
from tests.conftest import DEMO

METRIC_KEYS = {"top1", "balanced_accuracy", "n", "per_class", "confusion", "strategy", "history"}


def test_linear_run_writes_the_contract(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"model.pt", "labels.txt", "metrics.json",
                                                      "training_curve.png"}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    recalls = [row[i] / sum(row) for i, row in enumerate(metrics["confusion"])]
    assert metrics["n"] == 50 and metrics["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert metrics["top1"] >= 0.8  # real ImageNet features separate the digits well
    assert (trained_run / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    state = torch.load(trained_run / "model.pt", weights_only=True)  # no pickled code
    assert state["backbone"] == "tf_efficientnet_lite0"
    run = load_run(trained_run)
    assert run.labels == metrics["labels"]
    # early stopping kept one epoch, chosen on the selection split; the reported numbers are the val split's
    kept = [h for h in metrics["history"] if h.get("kept")]
    assert len(kept) == 1 and kept[0]["epoch"] == metrics["best_epoch"] and kept[0]["split"] == "selection"
    assert kept[0]["selection_top1"] == pytest.approx(metrics["selection"]["top1"], abs=1e-9)


def test_evaluate_run_reproduces_validation_metrics(trained_run):
    """Re-evaluating the checkpoint on the same files gives the recorded numbers."""
    from edgetl.evaluate import evaluate_run_on_folder

    record = json.loads((trained_run / "metrics.json").read_text())
    val = trained_run.parent / "val-only"
    for rel in record["data"]["val_files"]:
        dst = val / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO / rel, dst)
    metrics = evaluate_run_on_folder(trained_run, val)
    assert metrics["n"] == record["n"]
    assert metrics["top1"] == pytest.approx(record["top1"], abs=1e-9)


def test_stratified_split_is_seeded_and_complete():
    a, b = load_split(DEMO, 0.2, seed=0), load_split(DEMO, 0.2, seed=0)
    c = load_split(DEMO, 0.2, seed=1)
    assert a.val == b.val and a.val != c.val
    assert len(a.train) + len(a.val) == 240
    assert all(sum(1 for _, y in a.val if y == k) == 5 for k in range(10))  # 24 * 0.2 -> 5 per class


def test_auto_strategy_follows_images_per_class():
    items = lambda n: [(f"{c}/{i}", c) for c in range(2) for i in range(n)]  # noqa: E731
    assert choose_strategy(items(10), ["a", "b"])[0] == "linear"
    assert choose_strategy(items(100), ["a", "b"])[0] == "partial"
    assert choose_strategy(items(500), ["a", "b"])[0] == "full"


def _small_two_class_copy(tmp_path, per_class=6):
    root = tmp_path / "two"
    for label in ("3", "7"):
        (root / label).mkdir(parents=True)
        for src in sorted((DEMO / label).iterdir())[:per_class]:
            shutil.copyfile(src, root / label / src.name)
    return root


def test_partial_and_full_train_and_are_deterministic(tmp_path):
    data = _small_two_class_copy(tmp_path)
    cfg = FinetuneConfig(strategy="partial", unfreeze=2, epochs=1, batch_size=8, seed=3)
    m1 = finetune(data, tmp_path / "p1", cfg)
    m2 = finetune(data, tmp_path / "p2", cfg)
    assert m1["strategy"] == "partial" and m1["history"][-1]["phase"] == "partial"
    timeless = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert timeless(m1["history"]) == timeless(m2["history"])
    w1 = torch.load(tmp_path / "p1" / "model.pt", weights_only=True)["backbone_state"]
    w2 = torch.load(tmp_path / "p2" / "model.pt", weights_only=True)["backbone_state"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    full = finetune(data, tmp_path / "f", FinetuneConfig(strategy="full", epochs=1, batch_size=8, l2sp=0.01))
    assert full["strategy"] == "full" and full["history"][-1]["phase"] == "full"


def test_l2sp_pulls_the_backbone_toward_its_pretrained_weights(tmp_path):
    """Same data, seed and (large) lr: with L2-SP the trained backbone ends far closer to where it
    started than with plain weight decay."""
    from edgetl.backbones import get_spec
    from edgetl.transfer.pretrained import PretrainedBackbone
    from edgetl.transfer.strategies import freeze_for
    from edgetl.transfer.train import train_backbone
    from edgetl.model import Classifier

    split = load_split(_small_two_class_copy(tmp_path), 0.25, 0)
    spec = get_spec("tf_efficientnet_lite0")

    def drift(l2sp: float) -> float:
        torch.manual_seed(0)
        backbone = PretrainedBackbone(spec).module()  # a fresh pretrained copy each time
        model = Classifier(backbone, spec.embedding_dim, len(split.labels), 0.0)
        before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        trainable = freeze_for("full", model.backbone, 0)
        cfg = FinetuneConfig(batch_size=4, l2sp=l2sp, augment="none", seed=0)
        train_backbone(model, trainable, split.train, split.val, spec.preprocess("NCHW"), cfg, epochs=2, lr=1e-2,
                       patience=5, strategy="full")
        return float(sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.backbone.named_parameters()))

    plain, anchored = drift(0.0), drift(1e4)
    assert plain > 0 and anchored < 0.5 * plain, (plain, anchored)


def test_full_trains_the_stem_and_partial_only_the_top():
    from edgetl.backbones import create_architecture
    from edgetl.transfer.strategies import freeze_for

    backbone = create_architecture("tf_efficientnet_lite0")
    freeze_for("partial", backbone, 2)
    assert backbone.conv_head.weight.requires_grad and not backbone.conv_stem.weight.requires_grad
    freeze_for("full", backbone, 2)
    assert all(p.requires_grad for p in backbone.parameters())


def test_fine_tuning_never_returns_worse_than_its_linear_probe(tmp_path, caplog):
    """A learning rate that wrecks the backbone: no epoch beats the probe, so the probe is kept."""
    data = _small_two_class_copy(tmp_path)
    probe = finetune(data, tmp_path / "lin", FinetuneConfig(strategy="linear", seed=3))
    with caplog.at_level("WARNING", logger="edgetl"):
        wrecked = finetune(data, tmp_path / "wreck", FinetuneConfig(strategy="partial", lr=50.0, epochs=2, patience=2,
                                                                    batch_size=8, seed=3))
    assert "keeping the linear-probe model" in caplog.text and "--strategy linear gives the same model" in caplog.text
    assert wrecked["strategy"] == "partial" and wrecked["kept_phase"] == "linear"
    assert wrecked["top1"] == probe["top1"]
    kept = torch.load(tmp_path / "wreck" / "model.pt", weights_only=True)["backbone_state"]
    pretrained = torch.load(tmp_path / "lin" / "model.pt", weights_only=True)["backbone_state"]
    assert all(torch.equal(kept[k], pretrained[k]) for k in pretrained)


def test_input_size_flows_from_training_to_the_device_bundle(tmp_path):
    """--input-size is the resolution of training, the saved run, the exported model and the
    device's preprocessing: nothing downstream falls back to the backbone's 224."""
    import onnx

    from edgetl.backends import open_backend
    from edgetl.runtime.predictor import Predictor
    from tests.conftest import EDGETL, run_cli

    run = tmp_path / "run 160"
    metrics = finetune(DEMO, run, FinetuneConfig(strategy="linear", input_size=160))
    assert metrics["config"]["input_size"] == 160
    loaded = load_run(run)
    assert (loaded.preprocess.size, loaded.preprocess.resize) == (160, 182)  # Lite0's crop fraction kept

    bundle = tmp_path / "bundle"
    done = run_cli(EDGETL, "export", run, "--target", "jetson-orin-nano", "--precision", "fp32", "--out", bundle)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["preprocess"]["size"], manifest["preprocess"]["resize"]) == (160, 182)
    dims = [d.dim_value for d in onnx.load(bundle / manifest["model"]["file"]).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 160, 160]
    # TensorRT is not on the host: run the bundle's ONNX with onnxruntime, as export's check does.
    opened = Bundle.open(bundle)
    onnx_backend = open_backend("onnxruntime", opened.model_path, opened.manifest.model, 2)
    backbone = Backbone(opened.preprocess, onnx_backend, opened.manifest.embedding_dim, opened.manifest.model["input"]["shape"])
    images = sorted((DEMO / "3").iterdir())[:4]
    assert [p.label for p in Predictor(opened, backbone).predict(images)] == ["3"] * 4


def test_input_size_out_of_range_fails_clearly(tmp_path):
    with pytest.raises(EdgetlError, match=r"input_size 16 is outside 64-640"):
        finetune(DEMO, tmp_path / "r", FinetuneConfig(strategy="linear", input_size=16))
    with pytest.raises(EdgetlError, match=r"input_size 0 is outside"):
        finetune(DEMO, tmp_path / "r", FinetuneConfig(strategy="linear", input_size=0))
    assert not (tmp_path / "r").exists()


def test_bad_files_are_reported_by_name_and_good_ones_used(tmp_path):
    data = _small_two_class_copy(tmp_path)
    bad = data / "3"
    (bad / "zero.jpg").write_bytes(b"")
    jpeg = (DEMO / "3" / sorted(p.name for p in (DEMO / "3").iterdir())[0]).read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (bad / "notes.jpg").write_text("not an image")
    rgb = Image.open(sorted((DEMO / "3").iterdir())[7]).convert("RGB")
    rgb.convert("CMYK").save(bad / "cmyk.jpg")
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(bad / "sixteen-bit.png")
    rgb.convert("L").save(bad / "gray.png")
    rgb.save(bad / "hand sign ✋ dígito.jpg")
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli.host", "finetune", str(data), "--strategy", "linear",
                           "--epochs", "20", "--out", str(tmp_path / "run"), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("zero.jpg", "truncated.jpg", "notes.jpg"):
        assert name in proc.stderr
    assert "3 of" in proc.stderr  # the summary count
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    used = {p.split("/")[-1] for p in record["train_files"] + record["selection_files"] + record["val_files"]}
    assert {"cmyk.jpg", "sixteen-bit.png", "gray.png", "hand sign ✋ dígito.jpg"} <= used
    assert not {"zero.jpg", "truncated.jpg", "notes.jpg"} & used
    assert len(used) == 12 + 4


def test_one_class_and_empty_folders_fail_clearly(tmp_path):
    (tmp_path / "only" / "a").mkdir(parents=True)
    shutil.copyfile(sorted((DEMO / "1").iterdir())[0], tmp_path / "only" / "a" / "x.jpg")
    with pytest.raises(EdgetlError, match="one class"):
        load_split(tmp_path / "only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgetlError, match="no class sub-folders"):
        load_split(tmp_path / "empty")


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli.host", "finetune", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in proc.stderr


def test_help_reads_like_a_man_page():
    proc = subprocess.run([sys.executable, "-m", "edgetl.cli.host", "finetune", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout and "--strategy" in proc.stdout
