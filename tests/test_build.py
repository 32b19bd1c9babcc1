"""`edgetl build` (issue 15): the project file, the cached stages, selection under the budget,
the gates, summary.json / report.md / junit.xml, and `edgetl-device benchmark` results fed back.

The slow tests share one real build of the demo set (two Lite0 candidates, rpi5 INT8 TFLite
and jetson-orin-nano FP32 ONNX) through the real CLIs; every later test reuses its cache."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from edgetl.build.config import Limit, TargetSpec, load_project
from edgetl.build.devresults import check_all_matched, read_device_result
from edgetl.build.select import GATES, Option, evaluate_gates, pareto, select
from edgetl.report.junit import junit_tree
from edgetl.report.markdown import render
from edgetl.runtime.benchmark import percentiles, time_runs
from edgetl.yamlcfg import ConfigError
from tests.conftest import DEMO, EDGETL, SMALL_RECIPE, run_cli
from tests.ondevice_support import device

BASE = {
    "data": str(DEMO),
    "candidates": ["tf_efficientnet_lite0", {"name": "lite0-e20", "backbone": "tf_efficientnet_lite0", "epochs": 20}],
    "finetune": {"strategy": "linear", "epochs": 40, "patience": 10, "seed": 0},
    "targets": {"rpi5": {"precision": "int8", "calib_recipe": "small.yaml", "recover": "off",
                         "latency_budget_ms": 2000},
                "jetson-orin-nano": {"precision": "fp32", "latency_budget_ms": 2000}},
    # 50 validation images: one image is 2 points, so the 1-point default is noise here.
    "gates": {"max_drop_pts": 10},
    "benchmark": {"runs": 10, "warmup": 2},
}
SUMMARY_TARGET_KEYS = {"passed", "candidate", "precision", "bundle", "format", "metrics", "size_bytes", "latency_ms",
                       "latency_budget_ms", "calibration", "bundle_sha256", "gates", "selection", "pareto"}


def write_project(folder: Path, body: dict, name: str = "edgetl.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.yaml").write_text(SMALL_RECIPE)
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def edit(body: dict, **changes) -> dict:
    out = json.loads(json.dumps(body))
    for dotted, value in changes.items():
        node = out
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


# -- the project file ----------------------------------------------------------------------------
BAD = [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"data": None}, "key 'data'"),
    ({"data": "no/such/folder"}, "key 'data' is 'no/such/folder'"),
    ({"candidates": []}, "key 'candidates' must be a non-empty list"),
    ({"candidates": ["tf_efficientnet_lite0", "resnet9000"]}, "key 'candidates[1].backbone' is 'resnet9000'"),
    ({"candidates": ["tf_efficientnet_lite0@big"]}, "key 'candidates[0]'"),
    ({"candidates": [{"backbone": "tf_efficientnet_lite0", "input_size": 32}]}, "key 'candidates[0].input_size' is 32"),
    ({"candidates": ["tf_efficientnet_lite0", "tf_efficientnet_lite0"]}, "give one of them a distinct `name:`"),
    ({"finetune": {"epoch": 3}}, "unknown key 'finetune.epoch'"),
    ({"finetune": {"strategy": "magic"}}, "key 'finetune.strategy' is 'magic'"),
    ({"finetune": {"lr": "fast"}}, "key 'finetune.lr' must be a number"),
    ({"targets": {"rpi9": {}}}, "key 'targets.rpi9'"),
    ({"targets": {"rpi5": {"precision": "int4"}}}, "key 'targets.rpi5.precision' is 'int4'"),
    ({"targets": {"jetson-nano": {"precision": "int8"}}}, "key 'targets.jetson-nano.precision' is 'int8'"),
    ({"targets": {"rpi5": {"precison": "int8"}}}, "unknown key 'targets.rpi5.precison'"),
    ({"targets": {"rpi5": {"latency_budget_ms": 0}}}, "key 'targets.rpi5.latency_budget_ms' must be greater than 0"),
    ({"targets": {"rpi5": {"calib_recipe": "nope"}}}, "key 'targets.rpi5.calib_recipe'"),
    ({"targets": {"rpi5": {"calib": "missing-folder"}}}, "key 'targets.rpi5.calib'"),
    ({"gates": {"min_top1": 90}}, "key 'gates.min_top1' is 90"),
    ({"gates": {"max_drop": 1}}, "unknown key 'gates.max_drop'"),
    ({"keep_top": 0}, "key 'keep_top'"),
    ({"benchmark": {"runs": 0}}, "key 'benchmark.runs'"),
    ({"adapt": {"target_images": "nowhere"}}, "key 'adapt.target_images' is 'nowhere'"),
    ({"adapt": {"target_images": ".", "method": "magic"}}, "key 'adapt.method' is 'magic'"),
    ({"adapt": {"images": "."}}, "unknown key 'adapt.images'"),
    ({"tasks": {"parity": "missing.csv"}}, "key 'tasks.parity.labels' is 'missing.csv'"),
    ({"tasks": {"default": {"weight": 2}}}, "gives only the default task's weight"),
    ({"tasks": {"parity": {"labels": "small.yaml", "weight": 0}}}, "key 'tasks.parity.weight' must be greater than 0"),
    ({"tasks": {"bad name!": "small.yaml"}}, "key 'tasks.bad name!'"),
    ({"tasks": {"parity": "small.yaml"}, "adapt": {"target_images": "."}}, "keys 'adapt' and 'tasks' together"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_config_errors_name_the_key_and_the_file(tmp_path, change, message):
    body = {**BASE, **change}
    if change.get("data") is None and "data" in change:
        body.pop("data")
    path = write_project(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_config_exits_2_with_the_key_on_stderr(tmp_path):
    path = write_project(tmp_path, edit(BASE, targets__rpi5__precision="int4"))
    proc = run_cli(EDGETL, "build", path, "--out", tmp_path / "dist", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "targets.rpi5.precision" in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "dist").exists()  # refused before any work


def test_config_resolves_paths_names_and_limit_precedence(tmp_path):
    body = edit(BASE, finetune__seed=None, data={"path": "data", "val_split": 0.25, "seed": 3},
                candidates=["tf_efficientnet_lite0@288", {"backbone": "tf_efficientnet_lite0", "dropout": 0.3}],
                targets={"rpi5": {"accuracy_tolerance_pts": 3, "min_top1": 0.5},
                         "../tgt/rpi4.yaml": {"precision": "fp16"}},
                gates={"max_drop_pts": 2, "min_top1": 0.7}, keep_top=1)
    shutil.copytree(DEMO, tmp_path / "proj" / "data")
    (tmp_path / "tgt").mkdir()
    shutil.copy(Path(__file__).parents[1] / "targets" / "rpi4.yaml", tmp_path / "tgt" / "rpi4.yaml")
    project = load_project(write_project(tmp_path / "proj", body))
    assert project.data == tmp_path / "proj" / "data"
    assert [c.name for c in project.candidates] == ["tf_efficientnet_lite0@288", "tf_efficientnet_lite0"]
    assert project.candidates[0].finetune["input_size"] == 288 and project.candidates[1].finetune["dropout"] == 0.3
    assert all(c.finetune["val_split"] == 0.25 and c.finetune["seed"] == 3 and c.finetune["strategy"] == "linear"
               for c in project.candidates)
    rpi5, rpi4 = project.targets
    assert rpi5.precision == "int8" and rpi4.precision == "fp16" and rpi4.name == "rpi4"
    assert rpi5.max_drop_pts == Limit(3.0, "edgetl.yaml: targets.rpi5.accuracy_tolerance_pts")  # target beats gates
    assert rpi4.max_drop_pts == Limit(2.0, "edgetl.yaml: gates.max_drop_pts")  # gates beat the target YAML
    assert rpi5.min_top1.value == 0.5 and rpi4.min_top1.value == 0.7
    assert rpi5.latency_budget_ms == Limit(50.0, "rpi5.yaml: latency_budget_ms")  # from targets/rpi5.yaml
    assert project.keep_top == 1


# -- selection and gates (pure) ------------------------------------------------------------------
def _spec(budget=50.0, drop=1.0, floor=None) -> TargetSpec:
    return TargetSpec("rpi5", "rpi5", Path("targets/rpi5.yaml"), {"precision": "int8"}, Limit(budget, "b"),
                      Limit(drop, "d"), Limit(floor, "f"))


def _opt(name, sel, lat, top1=0.9, fp32=0.9, sel_fp32=None, **kw) -> Option:
    return Option(name, precision="int8", fp32_top1=fp32, top1=top1, manifest_top1=top1, verified_top1=top1,
                  selection_top1=sel, fp32_selection_top1=sel_fp32,
                  latency=None if lat is None else {"median": lat, "p90": lat, "source": "host"}, **kw)


def test_selection_takes_the_most_accurate_within_budget_and_says_why():
    opts = [_opt("small", 0.80, 10.0), _opt("big", 0.95, 80.0), _opt("mid", 0.90, 30.0, sel_fp32=0.95),
            _opt("mid2", 0.88, 20.0), _opt("broken", None, None, error="conversion failed")]
    chosen, entries = select(_spec(drop=1.0), opts)
    assert chosen.candidate == "mid2"
    why = {e["candidate"]: e["why"] for e in entries}
    assert why["big"].startswith("over budget by 30.00 ms")
    assert why["mid"].startswith("failed gate max_drop_pts on the selection split")  # 5 points lost to INT8
    assert why["small"] == "less accurate than mid2 by 8 points on the selection split"
    assert why["broken"] == "export failed: conversion failed"
    assert [e["kept"] for e in entries] == [False, False, False, True, False]
    # On a 10-image selection split one image is 10 points: a 5-point drop is within resolution.
    chosen, entries = select(_spec(drop=1.0), [_opt("mid", 0.90, 30.0, sel_fp32=0.95, selection_n=10),
                                               _opt("mid2", 0.88, 20.0)])
    assert chosen.candidate == "mid" and entries[1]["why"].startswith("less accurate than mid by 2 points")


def test_selection_falls_back_and_ties_go_to_the_faster():
    chosen, entries = select(_spec(budget=5.0), [_opt("a", 0.9, 30.0), _opt("b", 0.8, 20.0)])
    assert chosen.candidate == "b" and "no candidate fits the latency budget" in entries[1]["why"]
    chosen, entries = select(_spec(), [_opt("slow", 0.9, 30.0), _opt("fast", 0.9, 20.0)])
    assert chosen.candidate == "fast" and "but slower by 10.00 ms" in entries[0]["why"]
    points = pareto([_opt("a", 0.9, 30.0, top1=0.9), _opt("b", 0.8, 20.0, top1=0.8), _opt("c", 0.7, 40.0, top1=0.7)],
                    chosen)
    assert [p["front"] for p in points["points"]] == [True, True, False]


def test_gates_name_target_value_and_where_the_limit_is_set():
    gates = evaluate_gates("rpi5", _spec(budget=10.0, drop=1.0, floor=0.95), _opt("a", 0.9, 12.5, top1=0.88, fp32=0.9))
    by = {g["name"]: g for g in gates}
    assert [g["name"] for g in gates] == list(GATES)
    assert by["verify"]["passed"]
    assert not by["max_drop_pts"]["passed"] and "target 'rpi5' failed gate max_drop_pts" in by["max_drop_pts"]["message"]
    assert "2 points below FP32" in by["max_drop_pts"]["message"] and "(limit 1 points, d)" in by["max_drop_pts"]["message"]
    assert not by["min_top1"]["passed"] and "88.00% on the validation split < 95.00% (f)" in by["min_top1"]["message"]
    assert not by["latency_budget_ms"]["passed"]
    assert "host median 12.50 ms (on this host, not the board) > budget 10 ms (b)" in by["latency_budget_ms"]["message"]
    unset = evaluate_gates("rpi5", _spec(), _opt("a", 0.9, 1.0))
    assert next(g for g in unset if g["name"] == "min_top1").get("skipped") is True


def _summary(name="rp<i>5 & co") -> dict:
    gates = evaluate_gates(name, _spec(budget=1.0), _opt("a|b", 0.9, 12.5))
    return {"passed": False, "seconds": 1.0, "stages": [{"stage": "export", "reused": True}],
            "targets": {name: {"passed": False, "candidate": "a|b", "precision": "int8", "latency_budget_ms": 1.0,
                               "metrics": {"fp32": {"top1": 0.9}, "int8": {"top1": 0.9}},
                               "latency_ms": {"host": {"median": 12.5, "p90": 13.0}}, "size_bytes": {"int8": 4e6},
                               "gates": gates, "selection": select(_spec(budget=1.0), [_opt("a|b", 0.9, 12.5)])[1]}}}


def test_junit_and_markdown_survive_markup_in_names():
    summary = _summary()
    root = ET.fromstring(ET.tostring(junit_tree(summary).getroot()))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(GATES) and root.get("failures") == "1"
    failure = next(c for c in cases if c.get("name") == "latency_budget_ms").find("failure")
    assert "target 'rp<i>5 & co' failed gate latency_budget_ms" in failure.get("message")
    text = render(summary)
    assert "| rp<i>5 & co | a\\|b | int8 |" in text and "**FAIL**: latency_budget_ms" in text


def test_benchmark_statistics_and_device_result_checks(tmp_path):
    assert percentiles([1, 2, 3, 4, 10]) == pytest.approx(
        {"median": 3.0, "p90": 7.6, "mean": 4.0, "min": 1.0, "max": 10.0, "std": 3.1622776601683795})
    calls = []
    assert len(time_runs(lambda: calls.append(1), runs=5, warmup=3)) == 5 and len(calls) == 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"target": "rpi5", "bundle_sha256": "0" * 64, "latency_ms": {"median": "fast"}}))
    with pytest.raises(ConfigError, match=r"'latency_ms.median' must be a number"):
        read_device_result(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"target": "rpi5", "bundle_sha256": "a" * 64, "latency_ms": {"median": 9, "p90": 11}}))
    result = read_device_result(good)
    with pytest.raises(ConfigError, match="which this build did not produce"):
        check_all_matched({("rpi5", "a" * 64): result}, {("rpi5", "b" * 64)})


# -- a real build --------------------------------------------------------------------------------
def build_cli(project: Path, out: Path, cache: Path, *extra) -> tuple:
    proc = run_cli(EDGETL, "build", project, "--out", out, "--cache-dir", cache, "--json", *extra, timeout=900)
    summary = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    return proc, summary


def stage_flags(summary: dict) -> dict:
    return {(s["stage"], s["label"]): s["reused"] for s in summary["stages"]}


def test_cache_command_lists_and_clears_build_stages(tmp_path):
    """`edgetl cache` shows the build's stage cache beside the embeddings and `--clear` frees it."""
    from edgetl.build.cache import StageCache

    root = tmp_path / "edgetl-cache"  # as $EDGETL_CACHE: the build keeps its stages in build/
    stages = StageCache(root / "build")
    staged = stages.stage_dir("verify", "ab" * 32)
    (staged / "result.json").write_text("{}")
    stages.commit("verify", "ab" * 32, staged, {"top1": 1.0})
    listed = run_cli(EDGETL, "cache", "--cache-dir", root)
    assert listed.returncode == 0, listed.stderr
    assert "build" in listed.stdout and "verify stage (1 finished)" in listed.stdout
    cleared = run_cli(EDGETL, "cache", "--cache-dir", root, "--clear")
    assert cleared.returncode == 0 and "freed" in cleared.stdout
    assert not (root / "build").exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The cold build: two candidates x two targets, exports in two worker processes."""
    root = tmp_path_factory.mktemp("build")
    project = write_project(root / "proj", BASE)
    proc, summary = build_cli(project, root / "dist", root / "cache", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "project": project, "out": root / "dist", "cache": root / "cache", "summary": summary}


@pytest.mark.slow
def test_build_writes_bundles_summary_junit_and_report(built):
    out, summary = built["out"], built["summary"]
    assert summary["passed"] is True and set(summary["targets"]) == {"rpi5", "jetson-orin-nano"}
    assert not any(s["reused"] for s in summary["stages"])  # a fresh cache: everything built
    assert {s["stage"] for s in summary["stages"]} == {"finetune", "export", "verify", "benchmark"}
    assert [c["name"] for c in summary["candidates"]] == ["tf_efficientnet_lite0", "lite0-e20"]
    assert all({"name", "backbone", "input_size", "top1", "seconds"} <= set(c) for c in summary["candidates"])
    for name, t in summary["targets"].items():
        assert SUMMARY_TARGET_KEYS <= set(t), name
        assert t["bundle"] == name and t["candidate"] in ("tf_efficientnet_lite0", "lite0-e20")
        prec = t["precision"]
        for p in {"fp32", prec}:
            assert {"top1", "balanced_accuracy", "per_class", "confusion", "labels"} <= set(t["metrics"][p])
        assert {"median", "p90", "threads", "runs"} <= set(t["latency_ms"]["host"]) and "device" not in t["latency_ms"]
        assert [g["name"] for g in t["gates"]] == list(GATES) and all(g["passed"] for g in t["gates"])
        assert t["selection_split"]["split"] == "selection"  # decided on the selection split, not val
        assert sum(s["kept"] for s in t["selection"]) == 1 and all(s["why"] for s in t["selection"])
        assert {p["candidate"] for p in t["pareto"]["points"]} == {"tf_efficientnet_lite0", "lite0-e20"}
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["precision"] == prec and t["verify"]["reproduced"] is True
        assert manifest["target"]["accuracy_tolerance_pts"] == 10  # export gated at the build's limit
        assert manifest["metrics"][prec]["top1"] == t["metrics"][prec]["top1"]
    assert summary["targets"]["rpi5"]["format"] == "tflite" and summary["targets"]["jetson-orin-nano"]["format"] == "tensorrt"

    image = sorted(DEMO.glob("3/*"))[0]
    proc = device("predict", out / "rpi5", image, "--json")  # torch-free, as on the board
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["predictions"][0]["label"] in json.loads((out / "rpi5" / "manifest.json").read_text())["labels"]
    # The Jetson bundle's TensorRT engine is built on the board; here its ONNX runs on onnxruntime.
    proc = device("benchmark", out / "jetson-orin-nano", "--backend", "onnxruntime", "--runs", "3", "--warmup", "1",
                  "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]

    root = ET.parse(out / "junit.xml").getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0"
    cases = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert sorted(cases) == sorted((f"edgetl.build.{t}", g) for t in summary["targets"] for g in GATES)
    report = (out / "report.md").read_text()
    assert report.startswith("# edgetl build: passed") and "| target | candidate | precision |" in report
    assert "| rpi5 |" in report and "| jetson-orin-nano |" in report and "## rpi5" in report
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_adapt_fine_tunes_then_adapts_every_candidate_and_calibrates_on_the_field(built):
    """`adapt:` in edgetl.yaml: the candidate is the same fine-tune, then aligned to the field
    images; its INT8 export calibrates on them; report.md says so; a rerun reuses it all."""
    from benchmarks.camera_shift import shift_folder
    from edgetl.multitask import image_files

    root = built["root"]
    field = shift_folder(DEMO, root / "field camera", 0, image_files(DEMO)[::4])
    body = edit(BASE, candidates=["tf_efficientnet_lite0"],
                targets={"rpi5": BASE["targets"]["rpi5"]}, adapt={"target_images": str(field), "method": "align"})
    project = write_project(root / "proj-adapt", body)
    proc, summary = build_cli(project, root / "dist-adapt", built["cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["adapt"] == {"target_images": str(field), "method": "align"}
    (cand,) = summary["candidates"]
    unadapted = next(c for c in built["summary"]["candidates"] if c["name"] == cand["name"])
    assert cand["adaptation"]["method"] == "align"
    assert cand["adaptation"]["unadapted_top1"] == unadapted["top1"]  # the same fine-tune, then adapted
    assert not stage_flags(summary)[("finetune", cand["name"])]  # another key: the field images are an input
    manifest = json.loads((root / "dist-adapt" / "rpi5" / "manifest.json").read_text())
    assert manifest["calibration"]["source"].startswith("adapted run's field images")
    assert "Adapted to the field images" in (root / "dist-adapt" / "report.md").read_text()
    again, summary2 = build_cli(project, root / "dist-adapt", built["cache"])
    assert again.returncode == 0 and all(s["reused"] for s in summary2["stages"])


@pytest.mark.slow
def test_tasks_build_a_multi_task_bundle_gated_per_task(built):
    """`tasks:` in edgetl.yaml: one run with a parity head beside the digits, one INT8 bundle
    answering both, a max_drop_pts gate per task in summary.json and junit.xml."""
    from tests.test_multitask import parity_rows

    root = built["root"]
    folder = root / "proj-tasks"
    folder.mkdir()
    (folder / "parity.csv").write_text("\n".join(["file,label", *parity_rows()]) + "\n", encoding="utf-8")
    body = edit(BASE, candidates=["tf_efficientnet_lite0"], targets={"rpi5": BASE["targets"]["rpi5"]},
                tasks={"parity": {"labels": "parity.csv", "weight": 2}})
    project = write_project(folder, body)
    proc, summary = build_cli(project, root / "dist-tasks", built["cache"])
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a gate failed, which the summary must say
    rpi5 = summary["targets"]["rpi5"]
    assert set(rpi5["tasks"]) == {"parity"} and {"fp32", "int8"} <= set(rpi5["tasks"]["parity"])
    (task_gate,) = [g for g in rpi5["gates"] if g["name"] == "max_drop_pts[parity]"]
    drop = (rpi5["tasks"]["parity"]["fp32"]["top1"] - rpi5["tasks"]["parity"]["int8"]["top1"]) * 100
    assert task_gate["value"] == pytest.approx(drop, abs=1e-3) and task_gate["passed"] == (drop <= 10 + 1e-9)
    assert summary["passed"] == all(g["passed"] for g in rpi5["gates"])
    assert summary["candidates"][0]["options"]  # the candidate's record, unchanged by tasks
    manifest = json.loads((root / "dist-tasks" / "rpi5" / "manifest.json").read_text())
    assert set(manifest["tasks"]) >= {"parity"}
    cases = {c.get("name") for c in ET.parse(root / "dist-tasks" / "junit.xml").getroot().iter("testcase")}
    assert "max_drop_pts[parity]" in cases
    assert "Extra tasks" in (root / "dist-tasks" / "report.md").read_text()
    proc = device("predict", root / "dist-tasks" / "rpi5", sorted(DEMO.glob("4/*"))[0], "--json")
    assert proc.returncode == 0 and set(json.loads(proc.stdout)["predictions"][0]["tasks"]) == {"default", "parity"}


@pytest.mark.slow
def test_unchanged_rerun_reuses_every_stage(built):
    proc, summary = build_cli(built["project"], built["out"], built["cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["stages"] and all(s["reused"] for s in summary["stages"])
    assert summary["reused"] == {"stages": len(summary["stages"]), "reused": len(summary["stages"])}
    assert "finetune tf_efficientnet_lite0: reused" in proc.stderr
    old = built["summary"]
    for name, t in summary["targets"].items():
        assert t["bundle_sha256"] == old["targets"][name]["bundle_sha256"]


@pytest.mark.slow
def test_changing_one_targets_precision_rebuilds_that_target_only(built):
    root = built["root"]
    body = edit(BASE)
    body["targets"]["jetson-orin-nano"]["precision"] = "fp16"
    project = write_project(root / "proj2", body)
    proc, summary = build_cli(project, root / "dist2", built["cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags = stage_flags(summary)
    for (stage, label), reused in flags.items():
        assert reused == (stage == "finetune" or "-> rpi5" in label), (stage, label)
    assert summary["targets"]["jetson-orin-nano"]["precision"] == "fp16"
    assert summary["targets"]["rpi5"]["bundle_sha256"] == built["summary"]["targets"]["rpi5"]["bundle_sha256"]


@pytest.mark.slow
def test_impossible_gates_exit_1_and_every_report_names_target_and_gate(built):
    root = built["root"]
    body = edit(BASE, targets__rpi5__min_top1=0.999)
    body["targets"]["jetson-orin-nano"]["latency_budget_ms"] = 0.001
    project = write_project(root / "proj-fail", body)
    proc, summary = build_cli(project, root / "dist-fail", built["cache"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert all(s["reused"] for s in summary["stages"])  # min_top1 and budgets re-judge; nothing is rebuilt
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert any("target 'rpi5' failed gate min_top1" in e and "< 99.90%" in e for e in errors)
    assert any("target 'jetson-orin-nano' failed gate latency_budget_ms" in e and "budget 0.001 ms" in e for e in errors)
    assert summary["passed"] is False
    rpi5 = {g["name"]: g for g in summary["targets"]["rpi5"]["gates"]}
    assert not rpi5["min_top1"]["passed"] and rpi5["min_top1"]["limit"] == 0.999 and rpi5["max_drop_pts"]["passed"]
    failures = {(c.get("classname"), c.get("name")) for c in ET.parse(root / "dist-fail" / "junit.xml").iter("testcase")
                if c.find("failure") is not None}
    assert failures == {("edgetl.build.rpi5", "min_top1"), ("edgetl.build.jetson-orin-nano", "latency_budget_ms")}
    report = (root / "dist-fail" / "report.md").read_text()
    assert report.startswith("# edgetl build: FAILED")
    assert "target 'rpi5' failed gate min_top1" in report and "**FAIL**: latency_budget_ms" in report


@pytest.mark.slow
def test_keep_top_ranks_before_fine_tuning_and_fine_tunes_only_the_best(built):
    root = built["root"]
    body = edit(BASE, keep_top=1)
    project = write_project(root / "proj-top", body)
    proc, summary = build_cli(project, root / "dist-top", built["cache"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranking = summary["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2] and sum(r["kept"] for r in ranking) == 1
    # Same backbone, size and split: equal scores, and the project file's order breaks the tie.
    assert ranking[0]["logme"] == ranking[1]["logme"]
    kept = next(r["candidate"] for r in ranking if r["kept"])
    assert kept == "tf_efficientnet_lite0"
    assert [c["name"] for c in summary["candidates"]] == [kept]
    for target in summary["targets"].values():
        assert [s["candidate"] for s in target["selection"]] == [kept] and target["candidate"] == kept
    flags = stage_flags(summary)
    # Ranked now; the second candidate (same backbone, size, split) shares the first's score.
    assert not flags[("rank", kept)] and flags[("rank", "lite0-e20")] and flags[("finetune", kept)]
    assert not any(stage == "finetune" and label == "lite0-e20" for stage, label in flags)
    report = (root / "dist-top" / "report.md").read_text()
    assert "Transferability ranking (`keep_top: 1`" in report and "lite0-e20" in report
    assert "not fine-tuned" in (root / "dist-top" / "report.html").read_text()
    again, summary2 = build_cli(project, root / "dist-top", built["cache"])
    assert again.returncode == 0 and all(s["reused"] for s in summary2["stages"])  # the ranking is cached too


@pytest.mark.slow
def test_device_benchmark_results_replace_host_latency(built):
    root, summary = built["root"], built["summary"]
    chosen = summary["targets"]["rpi5"]["candidate"]
    bundle = built["out"] / "candidates" / "rpi5" / chosen
    proc = device("benchmark", bundle, "--runs", "5", "--warmup", "1", "--json")  # torch blocked, as on a Pi
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["target"] == "rpi5" and result["bundle_sha256"] == summary["targets"]["rpi5"]["bundle_sha256"]
    assert result["runs"] == 5 and result["latency_ms"]["median"] <= result["latency_ms"]["p90"]
    # As if from the board, and faster than any candidate's host figure: with equal selection
    # accuracy the faster candidate wins, so a board figure above another candidate's host
    # latency (a fast CI host) would rightly change the choice.
    board = dict(result, latency_ms={**result["latency_ms"], "median": 0.015, "p90": 0.025})
    (root / "bench").mkdir()
    (root / "bench" / "rpi5.json").write_text(json.dumps(board))
    proc, after = build_cli(built["project"], built["out"], built["cache"], "--device-results", root / "bench")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rpi5 = after["targets"]["rpi5"]
    assert rpi5["latency_ms"]["device"]["median"] == 0.015 and rpi5["latency_source"] == "device"
    assert next(s for s in rpi5["selection"] if s["candidate"] == chosen)["latency_source"] == "device"
    assert "latency_ms" in after["targets"]["jetson-orin-nano"] and "device" not in after["targets"]["jetson-orin-nano"]["latency_ms"]
    stale = dict(board, bundle_sha256="f" * 64)
    (root / "stale.json").write_text(json.dumps(stale))
    proc, _ = build_cli(built["project"], built["out"], built["cache"], "--device-results", root / "stale.json")
    assert proc.returncode == 2 and "stale.json" in proc.stderr and "did not produce" in proc.stderr


def test_readme_and_example_project_files_validate(tmp_path):
    """The README's edgetl.yaml and examples/*.edgetl.yaml are valid project files."""
    import re

    from tests.conftest import HYMENOPTERA, REPO

    section = (REPO / "README.md").read_text(encoding="utf-8").split("## edgetl build:", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "images").symlink_to(DEMO)
    (tmp_path / "proj" / "field").symlink_to(DEMO / "3")  # any folder of images
    (tmp_path / "boards").mkdir()
    board = (REPO / "targets" / "rpi4.yaml").read_text().replace("name: rpi4", "name: my-board")
    (tmp_path / "boards" / "my-board.yaml").write_text(board)
    (tmp_path / "proj" / "edgetl.yaml").write_text(text)
    project = load_project(tmp_path / "proj" / "edgetl.yaml")
    assert [c.name for c in project.candidates] == ["tf_efficientnet_lite0", "tf_efficientnet_lite0@288",
                                                    "lite1-partial"]
    assert [t.name for t in project.targets] == ["rpi5", "generic-arm64", "jetson-orin-nano", "my-board"]
    assert project.adapt.method == "selftrain" and project.adapt.target_images == tmp_path / "proj" / "field"
    assert load_project(REPO / "examples" / "demo.edgetl.yaml").data.resolve() == DEMO
    if HYMENOPTERA.is_dir():
        assert load_project(REPO / "examples" / "hymenoptera.edgetl.yaml").data.resolve() == HYMENOPTERA.resolve()
