"""report.html (edgetl.report.html): self-contained, complete, escaped, parseable; built from a
hand-written summary.json of two targets and two candidates with one failing gate."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest

from edgetl.report.html import render, write_html

LABELS = [str(i) for i in range(10)]


def metrics(confusion: list[list[int]], labels: list[str] = LABELS) -> dict:
    """A metrics JSON (edgetl.core.metrics shape) from a confusion matrix."""
    support = [sum(row) for row in confusion]
    recall = [row[i] / support[i] for i, row in enumerate(confusion)]
    n = sum(support)
    return {"top1": sum(confusion[i][i] for i in range(len(labels))) / n, "balanced_accuracy": sum(recall) / len(recall),
            "n": n, "per_class": {label: {"recall": recall[i], "support": support[i]} for i, label in enumerate(labels)},
            "confusion": confusion, "labels": list(labels)}


def digits_confusion(mistakes: dict[tuple[int, int], int]) -> list[list[int]]:
    """411 validation images (41 a class, class 0 has 42), right except `mistakes` (true, predicted): n."""
    rows = [[0] * 10 for _ in range(10)]
    for i in range(10):
        rows[i][i] = 42 if i == 0 else 41
    for (t, p), n in mistakes.items():
        rows[t][t] -= n
        rows[t][p] += n
    return rows


FP32_MISTAKES = {(6, 7): 3, (7, 6): 2, (1, 2): 2, (9, 3): 2, (4, 5): 2, (8, 6): 1, (2, 3): 2, (3, 2): 1, (5, 4): 1,
                 (0, 9): 1, (6, 5): 1}


def sample_summary() -> dict:
    """What `edgetl build` writes for two targets x two candidates on the sign-language digits:
    rpi5 (TFLite INT8) passes; jetson-orin-nano (QDQ ONNX INT8) fails its max_drop_pts gate."""
    fp32 = metrics(digits_confusion(FP32_MISTAKES))
    rpi5_int8 = metrics(digits_confusion({**FP32_MISTAKES, (6, 7): 4, (9, 3): 3}))
    orin_int8 = metrics(digits_confusion({**FP32_MISTAKES, (6, 7): 6, (7, 6): 4, (9, 3): 4, (1, 2): 3}))
    versions = {"edgetl": "0.1.0", "torch": "2.14.1", "timm": "1.0.20", "ai-edge-litert": "2.3.0",
                "onnxruntime": "1.23.2", "python": "3.11.10"}

    def gates(drop: float, latency: float, budget: float, source: str) -> list[dict]:
        ok_drop = drop <= 1.0
        return [
            {"name": "max_drop_pts", "value": round(drop, 2), "limit": 1.0, "passed": ok_drop,
             "message": f"INT8 top-1 is {drop:.2f} pts below FP32 (limit 1 pt)" + ("" if ok_drop else
                        "; try calib_recipe: moving-average or keep fp16")},
            {"name": "min_top1", "value": 0.95, "limit": 0.9, "passed": True, "message": "top-1 0.95 >= 0.9"},
            {"name": "latency_budget_ms", "value": latency, "limit": budget, "passed": latency <= budget,
             "message": f"{source} median {latency} ms within {budget:g} ms"}]

    def drop(a: dict, b: dict) -> float:
        return 100 * (a["top1"] - b["top1"])

    return {
        "passed": False, "config": "edgetl.yaml", "created": "2026-12-05T20:15:00+00:00", "versions": versions,
        "candidates": [
            {"name": "tf_efficientnet_lite0@224", "backbone": "tf_efficientnet_lite0", "input_size": 224,
             "top1": fp32["top1"], "seconds": 45.0},
            {"name": "tf_efficientnet_lite0@288", "backbone": "tf_efficientnet_lite0", "input_size": 288,
             "top1": 390 / 411, "seconds": 71.3}],
        "targets": {
            "rpi5": {
                "passed": True, "candidate": "tf_efficientnet_lite0@224", "precision": "int8", "bundle": "rpi5",
                "format": "tflite", "metrics": {"fp32": fp32, "int8": rpi5_int8},
                "size_bytes": {"fp32": 13_402_112, "int8": 4_031_488},
                "latency_ms": {"host": {"median": 4.7, "p90": 5.3, "threads": 2, "runs": 50}},
                "latency_budget_ms": 40.0, "calibration": {"name": "minmax", "method": "minmax", "samples": 128},
                "bundle_sha256": "3f5a0c9d2e41b7a86c0f1e2d3b4a59687766554433221100ffeeddccbbaa9988",
                "gates": gates(drop(fp32, rpi5_int8), 4.7, 40.0, "host"),
                "selection": [
                    {"candidate": "tf_efficientnet_lite0@224", "top1": rpi5_int8["top1"], "latency_ms": 4.7,
                     "latency_source": "host", "kept": True, "why": "best top-1 within the 40 ms budget"},
                    {"candidate": "tf_efficientnet_lite0@288", "top1": 388 / 411, "latency_ms": 7.6,
                     "latency_source": "host", "kept": False, "why": "lower top-1 (388/411) and slower"}]},
            "jetson-orin-nano": {
                "passed": False, "candidate": "tf_efficientnet_lite0@288", "precision": "int8",
                "bundle": "jetson-orin-nano", "format": "onnx-qdq", "metrics": {"fp32": fp32, "int8": orin_int8},
                "size_bytes": {"fp32": 13_421_773, "int8": 13_631_488},
                "latency_ms": {"host": {"median": 17.9, "p90": 21.4, "threads": 2, "runs": 50},
                               "device": {"median": 1.2, "p90": 1.3, "runs": 200}},
                "latency_budget_ms": 6.0, "calibration": {"name": "percentile", "method": "percentile", "samples": 128},
                "bundle_sha256": "a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00",
                "gates": gates(drop(fp32, orin_int8), 1.2, 6.0, "device"),
                "selection": [
                    {"candidate": "tf_efficientnet_lite0@224", "top1": 0.9392, "selection_top1": 0.9320,
                     "latency_ms": 0.9, "latency_source": "device", "kept": True, "why": "within budget"},
                    {"candidate": "tf_efficientnet_lite0@288", "top1": 0.9440, "latency_ms": 1.2,
                     "latency_source": "device", "kept": True, "why": "best top-1 within the 6 ms budget"},
                    {"candidate": "tf_efficientnet_lite2@260", "top1": 0.9513, "latency_ms": 7.4,
                     "latency_source": "device", "kept": False, "why": "7.4 ms is over the 6 ms budget"}]}},
        "stages": [
            {"stage": "finetune", "key": "tf_efficientnet_lite0@224 9c1e0f", "reused": True, "seconds": 0.4},
            {"stage": "finetune", "key": "tf_efficientnet_lite0@288 51ab77", "reused": False, "seconds": 71.3},
            {"stage": "export", "key": "rpi5 int8 0d3c11", "reused": False, "seconds": 38.2},
            {"stage": "export", "key": "jetson-orin-nano int8 77e0aa", "reused": False, "seconds": 52.9}],
    }


class Collector(HTMLParser):
    """Tags, their attributes and the visible text; fails on nothing, records unclosed tags."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Collector:
    parser = Collector()
    parser.feed(text)
    parser.close()
    assert parser.open == [], f"unclosed tags: {parser.open}"
    return parser


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = write_html(sample_summary(), tmp_path_factory.mktemp("report") / "dist" / "report.html")
    return path.read_text(encoding="utf-8")


def test_self_contained(report):
    page = parse(report)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", report, re.I)
    assert "<script" not in report.lower() and "<link" not in report.lower() and "@import" not in report
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(imgs) == 4  # a confusion matrix and a Pareto plot per target
    assert all(a["src"].startswith("data:image/png;base64,") and a.get("alt") for a in imgs)
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a"]
    assert links and all(h.startswith("#") for h in links)  # only links within the page
    assert len(report) < 400_000


def test_every_target_gate_and_candidate_appears(report):
    text = " ".join(parse(report).text)
    for name in ("rpi5", "jetson-orin-nano", "tf_efficientnet_lite0@224", "tf_efficientnet_lite0@288",
                 "tf_efficientnet_lite2@260", "max_drop_pts", "min_top1", "latency_budget_ms", "tflite", "onnx-qdq",
                 "3f5a0c9d2e41b7a86c0f1e2d3b4a59687766554433221100ffeeddccbbaa9988", "percentile",
                 "7.4 ms is over the 6 ms budget", "ai-edge-litert 2.3.0"):
        assert name in text, name
    assert "4.70 / 5.30 ms (host)" in text and "1.20 / 1.30 ms (device)" in text
    assert "selection top-1" in text and "93.20 %" in text  # the split the choice was made on, where given
    assert text.index("Targets") < text.index("Per class")  # the summary table comes first


def test_failing_gate_is_marked(report):
    # The failing target's summary row, its gate row and its heading carry the FAIL badge.
    rows = re.findall(r'<tr class="fail">(.*?)</tr>', report)
    assert any("jetson-orin-nano" in r and "max_drop_pts" in r for r in rows)
    assert any(r.startswith("<td>max_drop_pts</td>") and "badge fail" in r for r in rows)
    heading = re.search(r'<h2 id="target-2">(.*?)</h2>', report).group(1)
    assert "jetson-orin-nano" in heading and "FAIL" in heading
    assert "1 of 2 targets fail: jetson-orin-nano" in report
    assert re.search(r'<h2 id="target-1">rpi5 <span class="badge pass">PASS', report)


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    summary = copy.deepcopy(sample_summary())
    t = summary["targets"].pop("rpi5")
    t["metrics"]["fp32"]["per_class"][evil] = {"recall": 1.0, "support": 1}
    t["gates"][0]["message"] = f'"{evil}" & more'
    t["selection"][1]["why"] = evil
    t["candidate"] = evil
    summary["targets"][f"rpi5{evil}"] = t
    summary["config"] = f"{evil}.yaml"
    text = write_html(summary, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = parse(text)
    assert evil in " ".join(page.text)  # shown as text
    assert not any(tag == "script" for tag, _ in page.tags)


def test_missing_optional_keys_are_tolerated(tmp_path):
    bare = {"passed": True, "targets": {"rpi5": {"passed": True, "precision": "fp32",
                                                 "metrics": {"fp32": {"top1": 0.95}}}}}
    text = write_html(bare, tmp_path / "r.html").read_text(encoding="utf-8")
    parse(text)
    assert "rpi5" in text and "95.00 %" in text and "<img" not in text
    assert "no targets were built" in render({"passed": False})
    # Keys `edgetl build` writes beside the documented ones: the project path, stage labels, unset limits.
    text = render({"passed": True, "project": "proj/edgetl.yaml", "seconds": 12.5,
                   "targets": {"rpi5": {"passed": True, "gates": [{"name": "min_top1", "value": 0.9, "limit": None,
                                                                   "passed": True}]}},
                   "stages": [{"stage": "finetune", "label": "lite0", "key": "ab" * 32, "reused": True}]})
    parse(text)
    assert "edgetl build: proj/edgetl.yaml" in text and "<td>lite0</td>" in text and "ab" * 6 in text


def test_recovery_and_ranking_are_reported(tmp_path):
    """The export's recovery ladder (winner, what it changed, its cost) and a keep_top ranking
    reach both reports, from a record shaped as edgetl/recovery.py writes it."""
    from edgetl.report.markdown import render as render_markdown
    from edgetl.report.summary import recovery_summary

    record = {"mode": "auto", "trigger": {"top1": 0.84, "drop_pts": 4.0, "size_bytes": 4_060_000}, "winner": "c",
              "latency_cost": {"before_ms": 6.17, "after_ms": 8.03, "ratio": 1.30},
              "steps": [{"step": "a", "name": "head refit", "what": "head refit", "top1": 0.84, "drop_pts": 4.0,
                         "passed": False, "size_bytes": 4_060_000},
                        {"step": "d", "name": "int16", "skipped": "over the latency budget"},
                        {"step": "c", "name": "float blocks", "what": "4 blocks float: blocks.1.0, stem",
                         "top1": 0.88, "drop_pts": 0.0, "passed": True, "size_bytes": 4_100_000,
                         "float_blocks": ["blocks.1.0", "stem"]}]}
    rec = recovery_summary(record)
    assert rec["winner"] == "c" and rec["tried"] == ["a", "c"] and rec["float_blocks"] == ["blocks.1.0", "stem"]
    summary = sample_summary()
    summary["targets"]["rpi5"]["recovery"] = rec
    summary["keep_top"] = 1
    summary["ranking"] = [
        {"candidate": "tf_efficientnet_lite0@224", "rank": 1, "logme": 1.2345, "knn_top1": 0.9, "kept": True,
         "why": "LogME rank 1 of 2: within keep_top 1"},
        {"candidate": "tf_efficientnet_lite2@260", "rank": 2, "logme": 0.5, "knn_top1": 0.8, "kept": False,
         "why": "LogME rank 2 of 2: below keep_top 1, not fine-tuned"}]
    text = " ".join(parse(render(summary)).text)
    assert "step c (4 blocks float: blocks.1.0, stem) recovered a 4.00-point drop to 0.00, latency x1.30" in text
    assert "Transferability ranking (keep_top 1)" in text and "not fine-tuned" in text
    md = render_markdown(summary)
    assert "Export recovery: step c (4 blocks float: blocks.1.0, stem) recovered a 4.00-point drop" in md
    assert "| 2 | tf_efficientnet_lite2@260 | 0.5000 |" in md
    assert recovery_summary({**record, "winner": None})["winner"] is None
