"""Adaptation to field images (issue 17): the fold, `edgetl adapt` (align, adabn, dann) on a
simulated cheap camera, `edgetl finetune --target-images --adapt`, the adapted run's export
and INT8 calibration, and `edgetl-device adapt` torch-free, with rollback and SIGKILLs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.camera_shift import shift_folder
from edgetl.core import align
from edgetl.errors import EdgetlError
from tests.conftest import DEMO, EDGETL, run_cli
from tests.ondevice_support import DEVICE_CLI, DEVICE_ENV, copy_bundle, device, heads_json


# -- the map and the fold (numpy only) -------------------------------------------------------------
def _shifted_pair(seed: int = 0, n: int = 300, dim: int = 24):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim))
    source = rng.normal(size=(n, dim)) @ mix + 2.0
    target = 0.4 * source[: n // 2] @ np.diag(rng.uniform(0.5, 2.0, dim)) - 1.0 + 0.05 * rng.normal(size=(n // 2, dim))
    return source, target


@pytest.mark.parametrize("kind", ["per-dimension", "coral"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_fold_is_exact(kind, strength):
    source, target = _shifted_pair()
    full = align.per_dimension(align.Moments.of(source), align.Moments.of(target)) if kind == "per-dimension" \
        else align.coral(source, target)
    amap = full.toward_identity(strength)
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(5, source.shape[1])).astype(np.float32), rng.normal(size=5).astype(np.float32)
    w2, b2 = align.fold(weight, bias, amap)
    z = target[:50]
    np.testing.assert_allclose(z @ w2.T + b2, amap.apply(z) @ weight.T.astype(np.float64) + bias, rtol=1e-5, atol=1e-5)
    # the inverse map undoes it: what the device's fold-arithmetic check relies on
    np.testing.assert_allclose(amap.inverse().apply(amap.apply(z)), z, atol=1e-8)


def test_per_dimension_matches_source_moments_and_coral_nests_it(monkeypatch):
    source, target = _shifted_pair()
    amap = align.per_dimension(align.Moments.of(source), align.Moments.of(target))
    mapped = align.Moments.of(amap.apply(target))
    np.testing.assert_allclose(mapped.mean, source.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(mapped.std, source.std(axis=0, ddof=1), rtol=1e-9)
    assert amap.toward_identity(0.0).apply(target) == pytest.approx(target)
    monkeypatch.setattr(align, "shrinkage_intensity", lambda x: 1.0)  # full shrinkage: CORAL is per-dimension
    np.testing.assert_allclose(align.coral(source, target).matrix, np.diag(amap.matrix), atol=1e-12)


def test_shrinkage_is_high_for_independent_dimensions_and_low_for_correlated_ones():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(200, 40))
    correlated = rng.normal(size=(200, 1)) + 0.1 * rng.normal(size=(200, 40))
    assert align.shrinkage_intensity(independent) > 0.8
    assert align.shrinkage_intensity(correlated) < 0.1


def test_a_collapsed_dimension_is_capped():
    source, target = _shifted_pair()
    target[:, 3] = 1.0  # a channel gone dark: no spread at all
    amap = align.per_dimension(align.Moments.of(source), align.Moments.of(target))
    assert amap.matrix.max() <= align.MAX_SCALE and amap.info["clipped_dimensions"] >= 1


def test_prediction_scores_punish_collapse():
    confident_one_class = np.tile([[5.0, 0.0]], (10, 1))
    confident_both = np.array([[5.0, 0.0], [0.0, 5.0]] * 5)
    assert align.prediction_scores(confident_both)["im_score"] < align.prediction_scores(confident_one_class)["im_score"]


# -- host: edgetl adapt --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def field(trained_run, tmp_path_factory) -> dict:
    """The demo run's training-side images and validation images through the simulated cheap
    camera (benchmarks/camera_shift.py, seed 0): unlabeled target images, and the labelled
    shifted validation split (class folders) to score on."""
    record = json.loads((trained_run / "metrics.json").read_text())["data"]
    root = tmp_path_factory.mktemp("field")
    train = shift_folder(DEMO, root / "train", 0, record["train_files"] + record["selection_files"])
    val = shift_folder(DEMO, root / "val", 0, record["val_files"])
    return {"train": train, "val": val, "record": record}


def _top1(run_dir: Path, folder: Path) -> float:
    from edgetl.evaluate import evaluate_run_on_folder

    return evaluate_run_on_folder(run_dir, folder)["top1"]


@pytest.fixture(scope="session")
def aligned_run(trained_run, field, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "align"
    proc = run_cli(EDGETL, "adapt", trained_run, "--target-images", field["train"], "--adapt", "align", "--out", out,
                   "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["method"] == "align"
    return out


@pytest.mark.slow
def test_align_improves_accuracy_on_the_shifted_camera(trained_run, aligned_run, field):
    before, after = _top1(trained_run, field["val"]), _top1(aligned_run, field["val"])
    print(f"shifted val top1: source {before:.3f}, aligned {after:.3f}")
    assert after >= before + 0.05


@pytest.mark.slow
def test_adapted_run_is_a_normal_run_with_its_record(trained_run, aligned_run, field):
    import torch

    from edgetl.model import load_run

    source = torch.load(trained_run / "model.pt", weights_only=True)
    adapted = torch.load(aligned_run / "model.pt", weights_only=True)
    assert source.keys() == adapted.keys() and source["head"].keys() == adapted["head"].keys()
    for name, tensor in source["backbone_state"].items():  # align changes only the head
        assert torch.equal(tensor, adapted["backbone_state"][name]), name
    load_run(aligned_run)
    metrics = json.loads((aligned_run / "metrics.json").read_text())
    a = metrics["adaptation"]
    assert a["method"] == "align" and a["strength"] == 1.0 and a["n_target"] == len(field["record"]["train_files"]) + \
        len(field["record"]["selection_files"])
    assert a["source_check"]["split"].startswith("selection") and "passed" in a["source_check"]
    assert metrics["data"] == field["record"]
    assert metrics["calibration_images"] == str(Path(field["train"]).resolve())
    assert {"top1", "balanced_accuracy", "n", "per_class", "confusion"} <= set(metrics)
    assert metrics["n"] == len(field["record"]["val_files"])


def quarter_of_field(field: dict, tmp_path: Path) -> Path:
    """Every fourth shifted training image, linked into one unlabeled folder."""
    target = tmp_path / "target"
    target.mkdir()
    for p in sorted(Path(field["train"]).rglob("*.jpg"))[::4]:
        (target / f"{p.parent.name}-{p.name}").symlink_to(p)
    return target


@pytest.mark.slow
def test_adabn_changes_only_batchnorm_running_statistics(trained_run, field, tmp_path):
    import torch

    import edgetl.adapt

    target = quarter_of_field(field, tmp_path)  # a quarter: AdaBN runs the backbone
    run = edgetl.adapt.adapt_run(trained_run, target, "adabn", tmp_path / "adabn")
    assert run.metrics["adaptation"]["method"] == "adabn"
    assert run.metrics["adaptation"]["map"]["statistics"] == "anchored"
    source = torch.load(trained_run / "model.pt", weights_only=True)
    adapted = torch.load(run.path / "model.pt", weights_only=True)
    changed = []
    for name, tensor in source["backbone_state"].items():
        if name.endswith(("running_mean", "running_var")):
            changed.append(not torch.equal(tensor, adapted["backbone_state"][name]))
        else:
            assert torch.equal(tensor, adapted["backbone_state"][name]), name  # bit for bit
    assert all(changed) and len(changed) == 2 * 49  # Lite0's 49 BatchNorm layers
    for key in ("weight", "bias"):
        assert torch.equal(source["head"][key], adapted["head"][key])


def test_confident_per_class_keeps_the_surest_share_of_every_class():
    from edgetl.adapt.selftrain import confident_per_class, teacher_probabilities

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3], [0.45, 0.55]])
    # class 0: four images, the surest half (0.9, 0.8); class 1: one image, kept (at least one a class)
    assert confident_per_class(probs, 0.5).tolist() == [0, 2, 4]
    averaged = teacher_probabilities({"a": np.array([[10.0, 0.0]]), "b": np.array([[0.0, 10.0]])})
    np.testing.assert_allclose(averaged, [[0.5, 0.5]])


@pytest.fixture(scope="session")
def selftrained_run(trained_run, field, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "selftrain"
    proc = run_cli(EDGETL, "adapt", trained_run, "--target-images", field["train"], "--adapt", "selftrain",
                   "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_selftrain_gains_on_the_camera_and_keeps_clean_accuracy(trained_run, aligned_run, selftrained_run, field):
    """The student head learns the field images without giving up the source images: on the demo
    camera it beats align on the shifted split and stays near the run on the clean one."""
    source, adapted = (json.loads((d / "metrics.json").read_text()) for d in (trained_run, selftrained_run))
    before, after = _top1(trained_run, field["val"]), _top1(selftrained_run, field["val"])
    aligned = _top1(aligned_run, field["val"])
    print(f"shifted val top1: source {before:.3f}, align {aligned:.3f}, selftrain {after:.3f}; clean "
          f"{source['top1']:.3f} -> {adapted['top1']:.3f}")
    assert after >= before + 0.1 and after >= aligned
    assert adapted["top1"] >= source["top1"] - 0.05


@pytest.mark.slow
def test_selftrain_changes_only_the_head_and_records_its_teacher(trained_run, selftrained_run, field):
    import torch

    source = torch.load(trained_run / "model.pt", weights_only=True)
    adapted = torch.load(selftrained_run / "model.pt", weights_only=True)
    for name, tensor in source["backbone_state"].items():
        assert torch.equal(tensor, adapted["backbone_state"][name]), name
    assert not torch.equal(source["head"]["weight"], adapted["head"]["weight"])
    a = json.loads((selftrained_run / "metrics.json").read_text())["adaptation"]
    n_target = len(field["record"]["train_files"]) + len(field["record"]["selection_files"])
    assert a["method"] == "selftrain" and a["map"]["n_target"] == n_target
    assert 0 < a["map"]["pseudo_labelled"] <= n_target and sum(a["map"]["pseudo_label_counts"]) == a["map"]["pseudo_labelled"]
    assert a["map"]["n_source"] == len(field["record"]["train_files"])
    history = a["training"]["history"]
    assert history and {row["split"] for row in history} == {"selection"}  # early stopping never reads val
    assert sum(1 for row in history if row.get("kept")) == 1


@pytest.mark.slow
def test_bad_requests_are_clear_errors(trained_run, field, tmp_path):
    import edgetl.adapt

    with pytest.raises(EdgetlError, match="not one of align, coral, adabn, dann, selftrain, auto"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "sgd", tmp_path / "x")
    with pytest.raises(EdgetlError, match="strength applies to align, coral and adabn"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "dann", tmp_path / "x", strength=0.5)
    with pytest.raises(EdgetlError, match="selftrain's extent is set by its training"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "selftrain", tmp_path / "x", strength=0.5)
    with pytest.raises(EdgetlError, match="dann has no option 'momentum'"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "dann", tmp_path / "x", dann={"momentum": 0.9})
    with pytest.raises(EdgetlError, match="coral needs at least 2560 target images"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "coral", tmp_path / "x")
    with pytest.raises(EdgetlError, match="is the source run"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "align", trained_run)
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(Path(field["train"]).rglob("*.jpg"))[:3]:
        (few / p.name).symlink_to(p)
    with pytest.raises(EdgetlError, match="adaptation needs at least 20"):
        edgetl.adapt.adapt_run(trained_run, few, "align", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_adapted_run_exports_and_predicts(aligned_run, tmp_path):
    import edgetl

    result = edgetl.export(aligned_run, "rpi5", tmp_path / "bundle", "fp32")
    adapted_top1 = json.loads((aligned_run / "metrics.json").read_text())["top1"]
    assert abs(result.metrics["fp32"]["top1"] - adapted_top1) <= 0.03  # same model, device runtime
    predictions = edgetl.Predictor.open(result.bundle).predict(sorted((DEMO / "3").iterdir())[:2])
    assert len(predictions) == 2 and all(p.label in edgetl.open_bundle(result.bundle).labels for p in predictions)


# -- dann --------------------------------------------------------------------------------------------
def test_gradient_reversal_and_lambda_schedule():
    import torch

    from edgetl.adapt.dann import ramp, reverse_gradient

    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.7) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.7, -1.4, -2.1]))  # forward is the identity, backward reversed
    assert ramp(0.0) == 0.0 and ramp(0.1) == pytest.approx(0.462, abs=1e-3) and ramp(1.0) > 0.9999


def test_domain_collapse_rule():
    from edgetl.adapt.dann import COLLAPSE_EPOCHS, domain_collapsed

    chance = {"domain_loss": 0.69, "domain_accuracy": 0.51}
    learning = {"domain_loss": 0.40, "domain_accuracy": 0.85}
    assert COLLAPSE_EPOCHS == 2
    assert domain_collapsed([learning, chance, chance])
    assert not domain_collapsed([chance, learning])  # the latest epoch decides
    assert not domain_collapsed([chance])  # one epoch at chance is not a run of them
    assert not domain_collapsed([{"domain_loss": 0.69, "domain_accuracy": 0.70}] * 2)  # loss high, yet it separates


def test_dann_options_follow_the_run():
    from edgetl.adapt.dann import DannConfig

    linear = {"strategy": "linear", "config": {"seed": 3, "unfreeze": 2, "epochs": 150, "lr": 0.01, "batch_size": 16}}
    cfg = DannConfig.for_run(linear)
    assert (cfg.strategy, cfg.seed, cfg.unfreeze, cfg.batch_size) == ("partial", 3, 2, 16)
    assert (cfg.epochs, cfg.lr) == (12, 1e-3)  # the probe's epochs and lr are not a fine-tune's
    full = {"strategy": "full", "config": {"epochs": 7, "lr": 5e-4}}
    assert (DannConfig.for_run(full).strategy, DannConfig.for_run(full).epochs) == ("full", 7)
    assert DannConfig.for_run(full, "partial", epochs=2).epochs == 2
    with pytest.raises(EdgetlError, match="not one of partial, full"):
        DannConfig(strategy="linear")


def test_method_names_import_without_torch():
    """The CLI's choices and the build's config read the names; neither may pull in torch."""
    import subprocess
    import sys

    code = ("import sys; from edgetl.adapt.methods import METHODS; import edgetl.cli.host; "
            "print(','.join(METHODS), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["align,coral,adabn,dann,selftrain,auto", "False"]


@pytest.fixture(scope="session")
def dann_run(trained_run, field, tmp_path_factory) -> dict:
    """`--adapt dann` (partial: the top 2 stages, 2 epochs at most, to stay near a minute) on
    the demo run, with every image the training reads recorded (ImageDataset is how DANN and
    its early stopping read images)."""
    import edgetl.adapt
    from edgetl import data

    read, original = [], data.ImageDataset.__init__

    def recording(self, items, *args, **kwargs):
        original(self, items, *args, **kwargs)
        read.extend(str(p) for p, _ in self.items)

    data.ImageDataset.__init__ = recording
    try:
        run = edgetl.adapt.adapt_run(trained_run, field["train"], "dann", tmp_path_factory.mktemp("dann") / "run",
                                     dann={"epochs": 2, "unfreeze": 2})
    finally:
        data.ImageDataset.__init__ = original
    return {"path": run.path, "metrics": run.metrics, "read": read}


@pytest.mark.slow
def test_dann_trains_the_top_stages_stops_by_its_rule_and_never_reads_val(trained_run, dann_run, field):
    import torch

    from edgetl.adapt.dann import STOP_RULE

    source = torch.load(trained_run / "model.pt", weights_only=True)["backbone_state"]
    adapted = torch.load(dann_run["path"] / "model.pt", weights_only=True)
    assert adapted["backbone_state"].keys() == source.keys()
    changed = {n for n, t in source.items() if not torch.equal(t, adapted["backbone_state"][n])}
    assert any(n.startswith("conv_head") for n in changed) and any(n.startswith("blocks.6") for n in changed)
    assert not any(n.startswith(("conv_stem", "bn1", "blocks.0", "blocks.5")) for n in changed)  # partial: top 2
    assert not any(n.endswith(("running_mean", "running_var")) for n in changed)  # BatchNorm statistics kept

    a = dann_run["metrics"]["adaptation"]
    t = a["training"]
    assert a["method"] == "dann" and t["config"]["strategy"] == "partial" and t["trainable_stages"] == 2
    history = t["history"]
    assert 1 <= len(history) <= 2 and all(h["split"] == "selection" for h in history)
    assert [h["epoch"] for h in history if h.get("kept")] == [t["stopped"]["kept_epoch"]]
    assert t["stopped"]["rule"] in ("early stopping", "domain collapse", "maximum epochs")
    assert t["stopped"]["criterion"] == STOP_RULE and t["stopped"]["after_epoch"] == len(history) - 1
    assert all(0 <= h["domain_accuracy"] <= 1 and h["domain_loss"] >= 0 for h in history)
    assert [h["lambda"] for h in history] == sorted(h["lambda"] for h in history)  # ramped up

    record = field["record"]
    read = set(dann_run["read"])
    root = Path(record["root"])
    assert read and not read & {str(root / f) for f in record["val_files"]}  # decisions never saw val
    assert {str(root / f) for f in record["selection_files"]} <= read  # early stopping scored selection
    assert dann_run["metrics"]["n"] == len(record["val_files"])  # the reported score: val, once, after
    assert a["source_check"]["split"].startswith("selection")


@pytest.mark.slow
def test_dann_run_exports(dann_run):
    import edgetl

    result = edgetl.export(dann_run["path"], "rpi5", dann_run["path"].parent / "bundle", "fp32")
    assert abs(result.metrics["fp32"]["top1"] - dann_run["metrics"]["top1"]) <= 0.03  # same model, device runtime


@pytest.mark.slow
def test_auto_weighs_dann_with_the_other_candidates(trained_run, field, tmp_path):
    import edgetl.adapt

    target = quarter_of_field(field, tmp_path)  # a quarter: every candidate embeds them
    run = edgetl.adapt.adapt_run(trained_run, target, "auto", tmp_path / "auto", dann={"epochs": 1, "unfreeze": 1})
    auto = run.metrics["adaptation"]["auto"]
    assert {"method": "dann", "strength": 1.0} in [{k: t[k] for k in ("method", "strength")} for t in auto["tried"]]
    dann = [c for c in auto["candidates"] if c["method"] == "dann"]
    assert len(dann) == (1 if next(t for t in auto["tried"] if t["method"] == "dann")["passed"] else 0)
    assert all("im_score" in c["target_scores"] for c in auto["candidates"])
    assert run.metrics["adaptation"]["method"] == auto["chosen"]["method"]


# -- edgetl finetune --target-images --adapt -----------------------------------------------------------
def test_finetune_refuses_adapt_without_target_images(tmp_path):
    import edgetl

    proc = run_cli(EDGETL, "finetune", DEMO, "--strategy", "linear", "--adapt", "align", "--out", tmp_path / "r")
    assert proc.returncode == 2 and "--adapt needs --target-images DIR" in proc.stderr
    with pytest.raises(EdgetlError, match=r"needs target_images \(--target-images DIR\)"):
        edgetl.finetune(DEMO, tmp_path / "r", adapt="align", strategy="linear")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_finetune_with_target_images_is_finetune_then_adapt(trained_run, aligned_run, field, tmp_path):
    import torch

    out = tmp_path / "runs" / "field"
    proc = run_cli(EDGETL, "finetune", DEMO, "--strategy", "linear", "--epochs", "150", "--seed", "0",
                   "--target-images", field["train"], "--adapt", "align", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["field"]  # the fine-tuned stage is gone
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "metrics.json", "model.pt", "training_curve.png"]
    one, two = (torch.load(d / "model.pt", weights_only=True) for d in (out, aligned_run))
    for key in ("weight", "bias"):
        assert torch.equal(one["head"][key], two["head"][key]), key
    assert all(torch.equal(t, two["backbone_state"][n]) for n, t in one["backbone_state"].items())
    metrics, reference = (json.loads((d / "metrics.json").read_text()) for d in (out, aligned_run))
    source = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["top1"] == reference["top1"] and metrics["data"] == reference["data"]
    assert metrics["adaptation"]["method"] == "align" and metrics["adaptation"]["map"] == reference["adaptation"]["map"]
    assert metrics["unadapted"]["top1"] == source["top1"] and metrics["unadapted"]["n"] == source["n"]
    assert metrics["calibration_images"] == str(Path(field["train"]).resolve())
    assert metrics["strategy"] == "linear" and metrics["history"] == source["history"]


# -- INT8 calibration of an adapted run -------------------------------------------------------------
@pytest.mark.slow
def test_adapted_run_calibrates_on_its_field_images(aligned_run, trained_run, field, small_recipe, tmp_path):
    import shutil

    from edgetl.exporter import ExportConfig, _calibration, plan
    from edgetl.quantize.recipes import load_recipe

    recipe = load_recipe(str(small_recipe))
    p = plan(aligned_run, "rpi5", ExportConfig(precision="int8"))
    batches = _calibration(p, None, p.run.preprocess, recipe)
    assert len(batches) == 64 and p.calib_info["source"].startswith("adapted run's field images")
    assert p.calib_info["pool"] == len(list(Path(field["train"]).rglob("*.jpg")))
    source = plan(trained_run, "rpi5", ExportConfig(precision="int8"))
    _calibration(source, None, source.run.preprocess, recipe)
    assert source.calib_info["source"] == "run training split"  # an unadapted run: as before

    moved = tmp_path / "moved"
    shutil.copytree(aligned_run, moved)
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["calibration_images"] = str(tmp_path / "gone")
    (moved / "metrics.json").write_text(json.dumps(metrics))
    gone = plan(moved, "rpi5", ExportConfig(precision="int8"))
    with pytest.raises(EdgetlError, match="no longer a folder; pass calib"):
        _calibration(gone, None, gone.run.preprocess, recipe)


# -- device: edgetl-device adapt ---------------------------------------------------------------------
@pytest.fixture
def bundle(fp32_bundle, tmp_path) -> Path:
    return copy_bundle(fp32_bundle, tmp_path / "bundle")


@pytest.mark.slow
def test_device_adapt_versions_rollback_torch_free(bundle, field, trained_run):
    from edgetl.bundle import Bundle

    result = device("adapt", bundle, field["train"], "--json")  # DEVICE_ENV: torch, timm, onnx unimportable
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["action"] == "adapt" and summary["version"] == 1 and summary["activated"]
    assert summary["metrics"]["guardrail"]["passed"] and summary["metrics"]["images"] > 100
    index = heads_json(bundle)
    assert index["active"] == 1 and index["versions"][1]["source"].startswith("adapt")

    # the head the device wrote is the factory head folded with the reference -> field map
    from edgetl.backends import Backbone
    from edgetl.ondevice.embedcache import embed_files
    from edgetl.ondevice.localdata import collect_images

    b = Bundle.open(bundle)
    emb, _ = embed_files(b, collect_images([Path(field["train"])]), lambda: Backbone.open(b))
    amap = align.per_dimension(align.Moments.of(b.reference()[0]), align.Moments.of(emb))
    weight, bias = align.fold(b.factory_head().weight, b.factory_head().bias, amap)
    np.testing.assert_allclose(b.active_head()[1].weight, weight, rtol=1e-5, atol=1e-6)

    # predict follows the active head: scores on the shifted camera go up, like the host's
    evaluate = lambda: json.loads(device("evaluate", bundle, field["val"], "--json").stdout)["top1"]  # noqa: E731
    adapted = evaluate()
    assert device("rollback", bundle).returncode == 0
    assert heads_json(bundle)["active"] == 0
    assert adapted >= evaluate() + 0.05

    # adapting again re-bases on the head before the first map instead of composing two
    assert device("rollback", bundle, "1").returncode == 0
    again = json.loads(device("adapt", bundle, field["train"], "--json").stdout)
    assert again["version"] == 2 and again["metrics"]["base_version"] == 0


@pytest.mark.slow
def test_device_adapt_needs_a_reference_set_and_images(bundle, field, monkeypatch, tmp_path):
    from edgetl import ondevice
    from edgetl.bundle import Bundle

    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(Path(field["train"]).rglob("*.jpg"))[:5]:
        (few / p.name).symlink_to(p)
    result = device("adapt", bundle, few)
    assert result.returncode == 1 and "adapt needs at least 20 unlabeled images" in result.stderr
    monkeypatch.setattr(Bundle, "reference", lambda self, *task: None)  # any task: none
    with pytest.raises(EdgetlError, match="has no reference set"):
        ondevice.adapt(bundle, [field["train"]])
    assert not (bundle / "heads" / "index.json").exists()


@pytest.mark.slow
def test_sigkill_during_adapt_never_corrupts_the_store(bundle, field):
    """SIGKILLs at seeded random moments of `edgetl-device adapt` (tests/killtest.py): anywhere,
    in the fit-guardrail-write window, or within 10 ms of the head file write."""
    from tests.killtest import kill_command, store_is_sound

    report = kill_command(DEVICE_CLI, ["adapt", str(bundle), str(field["train"]), "--force"], bundle, kills=15,
                          seed=20261126, env=DEVICE_ENV, reset_every=5)
    print(report)
    assert report.kills == 15 and report.corrupt == 0
    assert device("adapt", bundle, field["train"]).returncode == 0
    assert store_is_sound(bundle)
