"""The INT8 accuracy-recovery ladder (edgetl/recovery.py) on real exports of the demo run,
whose INT8 drop fails the rpi5 gate (1 point; one demo validation image is 2 points)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EDGETL, manifest_json, run_cli, val_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recovered(trained_run, tmp_path_factory) -> tuple[Path, object]:
    """`edgetl export RUN --target rpi5` (recover auto, the default) through the real CLI."""
    out = tmp_path_factory.mktemp("dist") / "rpi5-recovered"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "rpi5", "--out", out, timeout=1200)
    return out, proc


def test_recovery_passes_the_gate_and_says_how(recovered, trained_run):
    out, proc = recovered
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest_json(out)
    r = m["recovery"]
    assert r["mode"] == "auto" and r["trigger"]["drop_pts"] > r["trigger"]["tolerance_pts"]  # it was needed
    scored = [s for s in r["steps"] if "skipped" not in s]
    assert scored and all({"top1", "drop_pts", "latency_ms", "size_bytes", "passed"} <= set(s) for s in scored)
    winner = [s for s in scored if s["step"] == r["winner"] and s["passed"]]
    assert len(winner) == 1 and scored[-1]["passed"]  # the ladder stopped at its first pass
    assert all(not s["passed"] for s in scored[:-1])
    gate = m["metrics"]["gate"]
    assert gate["passed"] and gate["drop_pts"] == pytest.approx(winner[0]["drop_pts"])
    assert m["metrics"]["int8"]["top1"] == pytest.approx(winner[0]["top1"])
    # the CLI says which step won and what it cost
    assert f"recovery: step {r['winner']}" in proc.stdout and "drop" in proc.stdout
    # the bundle is the winner: the device runtime reproduces its validation top-1 with its head
    from edgetl.runtime.evaluate import evaluate_items
    from edgetl.runtime.predictor import Predictor

    paths, y = val_images(trained_run)
    assert evaluate_items(Predictor.open(out), paths, y)["top1"] == pytest.approx(m["metrics"]["int8"]["top1"])
    # head.npz is the re-fitted factory head, fitted on the training side
    with np.load(out / "head.npz") as head:
        assert head["weight"].shape == (len(m["labels"]), m["model"]["embedding_dim"])
    run_record = json.loads((trained_run / "metrics.json").read_text())["data"]
    assert r["slice"]["n"] == len(run_record["selection_files"])
    assert winner[0]["refit"]["slice_images"] == len(run_record["selection_files"])
    assert winner[0]["refit"]["fit_images"] == len(run_record["train_files"])


def test_recover_off_keeps_the_failed_gate(trained_run, tmp_path):
    out = tmp_path / "off"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "rpi5", "--recover", "off", "--out", out)
    assert proc.returncode == 1 and "--allow-accuracy-drop" in proc.stderr
    m = manifest_json(out)
    assert "recovery" not in m and m["metrics"]["gate"]["passed"] is False


def _plan(run_dir: Path):
    from edgetl.exporter import ExportConfig, plan

    return plan(run_dir, "rpi5", ExportConfig())


def test_head_refit_reads_only_training_images(trained_run, tmp_path):
    """The refit fits on the run's training files and selects on its selection files; a run
    without a selection split gives a stratified 20 % of its training files instead. Never a
    validation file."""
    from edgetl.recovery import training_side

    record = json.loads((trained_run / "metrics.json").read_text())["data"]
    root = Path(record["root"])
    val = {root / f for f in record["val_files"]}
    fit, fit_y, sel, sel_y, source = training_side(_plan(trained_run))
    assert {Path(p) for p in sel} == {root / f for f in record["selection_files"]} and "selection" in source
    assert {Path(p) for p in fit} == {root / f for f in record["train_files"]}
    assert not val & {Path(p) for p in [*fit, *sel]}

    legacy = tmp_path / "legacy-run"  # a run recorded before selection splits existed
    shutil.copytree(trained_run, legacy)
    metrics = json.loads((legacy / "metrics.json").read_text())
    metrics["data"].pop("selection_files")
    (legacy / "metrics.json").write_text(json.dumps(metrics))
    fit, fit_y, sel, sel_y, source = training_side(_plan(legacy))
    train = {root / f for f in record["train_files"]}
    assert {Path(p) for p in sel} <= train and {Path(p) for p in fit} <= train and not set(fit) & set(sel)
    assert len(sel) == round(0.2 * len(train)) and set(sel_y) == set(fit_y)  # stratified: every class
    assert not val & {Path(p) for p in [*fit, *sel]}
