"""Adaptation to field images (issue 17): the fold, `edgetl adapt` (align, adabn) on a
simulated cheap camera, the adapted run's export, and `edgetl-device adapt` torch-free,
with rollback and SIGKILLs."""

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


@pytest.mark.slow
def test_adabn_changes_only_batchnorm_running_statistics(trained_run, field, tmp_path):
    import torch

    import edgetl.adapt

    target = tmp_path / "target"
    target.mkdir()
    for p in sorted(Path(field["train"]).rglob("*.jpg"))[::4]:  # a quarter: AdaBN runs the backbone
        (target / f"{p.parent.name}-{p.name}").symlink_to(p)
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


@pytest.mark.slow
def test_bad_requests_are_clear_errors(trained_run, field, tmp_path):
    import edgetl.adapt

    with pytest.raises(EdgetlError, match="not one of align, coral, adabn, auto"):
        edgetl.adapt.adapt_run(trained_run, field["train"], "dann", tmp_path / "x")
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
    monkeypatch.setattr(Bundle, "reference", lambda self: None)
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
