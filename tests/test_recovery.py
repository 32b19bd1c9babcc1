"""The INT8 accuracy-recovery ladder (edgetl/recovery.py) on real exports of the demo run,
whose INT8 drop fails the rpi5 and jetson-orin-nano gates (1 point; one demo validation
image is 2 points): LiteRT TFLite and QDQ ONNX, one ladder with format hooks."""

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


# -- the QDQ ONNX route (jetson-orin-nano INT8): the same ladder, onnxruntime's nodes_to_exclude ----
@pytest.fixture(scope="module")
def orin_recovered(trained_run, tmp_path_factory) -> tuple[Path, object]:
    """`edgetl export RUN --target jetson-orin-nano` (INT8 QDQ ONNX, recover auto) through the
    real CLI. Plain INT8 loses 3 of the 50 validation images here (6 points, tolerance 1)."""
    out = tmp_path_factory.mktemp("dist") / "orin-recovered"
    proc = run_cli(EDGETL, "export", trained_run, "--target", "jetson-orin-nano", "--out", out, timeout=1200)
    return out, proc


def test_qdq_float_blocks_pass_the_gate_plain_int8_fails(orin_recovered, trained_run):
    """Plain INT8 QDQ fails the Orin's gate, a and b fail too, c (blocks float) passes; the
    manifest and the CLI say so with the cost, and the bundle reproduces its top-1."""
    out, proc = orin_recovered
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest_json(out)
    r = m["recovery"]
    assert r["trigger"]["drop_pts"] > r["trigger"]["tolerance_pts"]  # plain INT8 failed the gate
    assert r["winner"] == "c"
    scored = [s for s in r["steps"] if "skipped" not in s]
    assert all(not s["passed"] for s in scored[:-1]) and scored[-1]["step"] == "c" and scored[-1]["passed"]
    assert {"a"} <= {s["step"] for s in scored[:-1]}  # the cheaper steps were tried first
    win = scored[-1]
    assert m["metrics"]["gate"]["passed"] and m["metrics"]["int8"]["top1"] == pytest.approx(win["top1"])
    # the cost is on record: host latency against the failed backbone, size, which blocks
    assert {"before_ms", "after_ms", "ratio"} <= set(r["latency_cost"]) and win["size_bytes"] > 0
    assert m["export"]["float_blocks"] == win["float_blocks"] and m["export"]["float_nodes"] == win["float_nodes"]
    assert len(win["sensitivity"]) >= 3 and win["float_blocks"] == [s["block"] for s in
                                                                   win["sensitivity"][:len(win["float_blocks"])]]
    assert "recovery: step c (float blocks) passed" in proc.stdout
    # the bundle is the winner: onnxruntime (the host's stand-in for TensorRT, `metrics_backend`)
    # reproduces its validation top-1 with the bundle's head
    from edgetl.backends import Backbone, open_backend
    from edgetl.bundle import Bundle
    from edgetl.runtime.evaluate import evaluate_items
    from edgetl.runtime.predictor import Predictor

    bundle = Bundle.open(out)
    assert bundle.manifest.metrics_backend == "onnxruntime"
    backbone = Backbone(bundle.preprocess, open_backend("onnxruntime", bundle.model_path, bundle.manifest.model, 2),
                        bundle.manifest.embedding_dim, bundle.manifest.model["input"]["shape"])
    paths, y = val_images(trained_run)
    predictor = Predictor(bundle, backbone, head=bundle.factory_head())
    assert evaluate_items(predictor, paths, y)["top1"] == pytest.approx(m["metrics"]["int8"]["top1"])


def test_qdq_float_nodes_are_float_in_the_graph(orin_recovered):
    """The nodes step c kept float have no Q/DQ on their inputs and float32 weights; every
    other conv keeps its Q/DQ pair and int8-stored weight; the file passes onnx.checker."""
    import onnx

    from edgetl.formats.onnx_tensorrt import float_nodes_of, validate
    from edgetl.recovery import _onnx_blocks

    out, proc = orin_recovered
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest_json(out)
    path = out / m["model"]["file"]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    float_nodes = set(m["export"]["float_nodes"])
    assert float_nodes and set(float_nodes_of(model)) == float_nodes  # the file says so itself
    # the float nodes are exactly the float blocks' nodes (grouped on the bundle's FP32 ONNX)
    groups = dict(_onnx_blocks(out / m["export"]["implicit_int8"]["onnx"]))
    assert float_nodes == {n for b in m["export"]["float_blocks"] for n in groups[b]}
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kept = [c for c in convs if c.name in float_nodes]
    assert kept
    for conv in convs:
        act, weight = producer.get(conv.input[0]), producer.get(conv.input[1])
        if conv in kept:
            assert getattr(act, "op_type", None) != "DequantizeLinear", conv.name
            assert weight is None and inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT, conv.name
        else:
            assert act.op_type == "DequantizeLinear" and producer[act.input[0]].op_type == "QuantizeLinear", conv.name
            assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].data_type == onnx.TensorProto.INT8
    facts = validate(path, "int8")["qdq"]
    assert facts["convs_kept_float"] == facts["convs_kept_float_plain"] == len(kept)
    assert facts["initializer_bytes"]["int8"] > 10 * facts["initializer_bytes"]["float32"]  # still int8 storage


def test_qdq_ladder_chose_on_the_selection_split(orin_recovered, trained_run):
    """Every choice of the ONNX ladder (refit, recipe, block ranking) was made on the run's
    selection split, which the record names; the validation split only gave the verdicts."""
    out, proc = orin_recovered
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = manifest_json(out)["recovery"]
    data = json.loads((trained_run / "metrics.json").read_text())["data"]
    assert r["slice"]["source"].startswith("run selection split") and r["slice"]["n"] == len(data["selection_files"])
    assert not set(data["selection_files"]) & set(data["val_files"])
    for s in (s for s in r["steps"] if "skipped" not in s):
        assert s["refit"]["slice_images"] == len(data["selection_files"])
        assert s["refit"]["fit_images"] == len(data["train_files"])
    win = next(s for s in r["steps"] if s.get("passed"))
    assert "slice_cosine" in win and all("slice_cosine_gain" in s for s in win["sensitivity"])


def test_qdq_validate_refuses_a_float_node_list_the_graph_contradicts(qdq, tmp_path):
    """A QDQ file that lists, as float, a conv it quantizes (or a node it lacks) is refused."""
    import onnx

    from edgetl.errors import EdgetlError
    from edgetl.formats.onnx_tensorrt import FLOAT_NODES_KEY, validate

    model = onnx.load(str(qdq.path))
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    for listed, why in (([conv], "quantizes 1 of the 1 convs"), (["/no/such/Conv"], "lists float nodes it lacks")):
        onnx.helper.set_model_props(model, {FLOAT_NODES_KEY: json.dumps(listed)})
        path = tmp_path / "lying.onnx"
        onnx.save(model, str(path))
        with pytest.raises(EdgetlError, match=why):
            validate(path, "int8")


def test_onnx_blocks_cover_every_node_once(fp32_onnx):
    """Step c's ONNX groups: stem, Lite0's 16 blocks, head; every node in exactly one."""
    import onnx

    from edgetl.recovery import _onnx_blocks

    groups = _onnx_blocks(fp32_onnx.path)
    names = [g for g, _ in groups]
    assert names[0] == "stem" and names[-1] == "head" and len(names) == 18
    assert all(n.startswith("blocks.") for n in names[1:-1])
    members = [m for _, ms in groups for m in ms]
    assert sorted(members) == sorted(n.name for n in onnx.load(str(fp32_onnx.path)).graph.node)


def test_quantize_qdq_refuses_unknown_float_nodes_and_other_methods_ranges(fp32_onnx, lite0, tmp_path):
    """Step c's variants quantize from one calibration: ranges of another method, or a float
    node the graph lacks, are refused by name rather than quantized wrongly."""
    import dataclasses

    from edgetl.errors import EdgetlError
    from edgetl.formats.onnx_tensorrt import calibrate_qdq, quantize_qdq
    from edgetl.quantize.recipes import load_recipe
    from tests.jetson_fixtures import demo_images

    _, pre = lite0
    minmax = dataclasses.replace(load_recipe("minmax"), samples=2)
    ranges = calibrate_qdq(fp32_onnx.path, [pre.batch([p]) for p in demo_images(1)[:2]], minmax, tmp_path / "r.json")
    assert ranges.samples == 2 and ranges.cache.is_file()
    with pytest.raises(EdgetlError, match="has no node"):
        quantize_qdq(fp32_onnx.path, tmp_path / "a.onnx", None, minmax, ranges=ranges, float_nodes=["/no/such/Conv"])
    with pytest.raises(EdgetlError, match="calibrated with minmax"):
        quantize_qdq(fp32_onnx.path, tmp_path / "b.onnx", None, load_recipe("entropy"), ranges=ranges)


def test_an_adapted_head_is_never_refitted_on_source_images(tmp_path):
    """align/coral fold the field adaptation into the head: step a (and the refit under b-d)
    would fit it back to the source training images, so the ladder keeps the run's head."""
    from edgetl.recovery import head_adapted

    assert head_adapted(tmp_path) is None  # no metrics.json
    for method, kept in (("align", True), ("coral", True), ("adabn", False), ("dann", False)):
        (tmp_path / "metrics.json").write_text(json.dumps({"top1": 0.9, "adaptation": {"method": method}}))
        reason = head_adapted(tmp_path)
        assert (reason is not None) == kept, method
        if kept:
            assert method in reason and "undo" in reason
    (tmp_path / "metrics.json").write_text(json.dumps({"top1": 0.9}))
    assert head_adapted(tmp_path) is None
