"""report.md of `edgetl build`, for a CI job summary (GitHub's $GITHUB_STEP_SUMMARY, GitLab
MR notes): the table across targets first, then each target's selection and failed gates."""

from __future__ import annotations

from pathlib import Path

from edgetl.core.fsutil import atomic_write_bytes
from edgetl.report.summary import recovery_text


def _cell(value) -> str:
    """Table-safe text: a '|' or a line break in a name or message would split the row."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _ms(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _mb(x) -> str:
    return "–" if x is None else f"{x / 1e6:.2f} MB"


def render(summary: dict) -> str:
    verdict = "passed" if summary["passed"] else "FAILED"
    lines = [f"# edgetl build: {verdict}", ""]
    lines += ["| target | candidate | precision | size | FP32 top-1 | quantized top-1 | drop (pts) | "
              "host latency median / p90 (ms) | budget (ms) | gates |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, t in summary["targets"].items():
        m = t.get("metrics") or {}
        prec = t["precision"]
        fp32, quant = (m.get("fp32") or {}).get("top1"), (m.get(prec) or {}).get("top1")
        drop = "–" if fp32 is None or quant is None else f"{100 * (fp32 - quant):.2f}"
        host = (t.get("latency_ms") or {}).get("host") or {}
        failed = [g["name"] for g in t["gates"] if not g["passed"]]
        gates = "pass" if not failed else "**FAIL**: " + ", ".join(failed)
        size = (t.get("size_bytes") or {}).get(prec)
        lines.append("| " + " | ".join(_cell(v) for v in (
            name, t.get("candidate") or "–", prec, _mb(size), _pct(fp32), _pct(quant), drop,
            f"{_ms(host.get('median'))} / {_ms(host.get('p90'))}", f"{t['latency_budget_ms']:g}", gates)) + " |")
    lines += ["", "Accuracy: the runs' validation split (reported only; selection used the selection split). "
              "Host latency: measured on the build machine with each target's thread count, not on the board.", ""]
    device_rows = [(n, t["latency_ms"]["device"]) for n, t in summary["targets"].items()
                   if (t.get("latency_ms") or {}).get("device")]
    if device_rows:
        lines += ["Device latency (from `--device-results`):", "", "| target | median (ms) | p90 (ms) | threads |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {_cell(n)} | {_ms(d.get('median'))} | {_ms(d.get('p90'))} | {_cell(d.get('threads'))} |"
                  for n, d in device_rows]
        lines.append("")

    if summary.get("adapt"):
        lines += [f"Adapted to the field images in `{_cell(summary['adapt']['target_images'])}` "
                  f"(`adapt.method: {_cell(summary['adapt']['method'])}`; no labels; INT8 calibrated on them). "
                  "Top-1 above is on the clean validation split:", "",
                  "| candidate | method kept | clean val top-1 before | after | source check drop (pts) |",
                  "|---|---|---:|---:|---:|"]
        for c in summary.get("candidates") or []:
            a = c.get("adaptation") or {}
            drop = (a.get("source_check") or {}).get("drop_points")
            lines.append("| " + " | ".join(_cell(v) for v in (
                c["name"], a.get("method") or "–", _pct(a.get("unadapted_top1")), _pct(c.get("top1")),
                "–" if drop is None else f"{drop:.1f}")) + " |")
        lines.append("")

    if summary.get("ranking"):
        lines += [f"Transferability ranking (`keep_top: {summary['keep_top']}`; LogME on frozen embeddings of the "
                  "training split, before any fine-tuning):", "",
                  "| # | candidate | LogME | k-NN top-1 | fine-tuned |", "|---:|---|---:|---:|---|"]
        lines += ["| " + " | ".join(_cell(v) for v in (r["rank"], r["candidate"], f"{r['logme']:.4f}",
                                                         _pct(r["knn_top1"]), "**yes**" if r["kept"] else "no")) + " |"
                  for r in summary["ranking"]]
        lines.append("")

    for name, t in summary["targets"].items():
        lines += [f"## {_cell(name)}", ""]
        split = (t.get("selection_split") or {})
        if split.get("note"):
            lines += [f"Selection split: {_cell(split.get('split'))} ({split.get('n')} images): {_cell(split['note'])}.", ""]
        lines += ["| candidate | selection top-1 | val top-1 | latency (ms) | kept | why |",
                  "|---|---:|---:|---:|---|---|"]
        for s in t["selection"]:
            lat = "–" if s["latency_ms"] is None else f"{s['latency_ms']:.2f} ({s['latency_source']})"
            lines.append("| " + " | ".join(_cell(v) for v in (
                s["candidate"], _pct(s.get("selection_top1")), _pct(s.get("top1")), lat,
                "**yes**" if s["kept"] else "no", s["why"])) + " |")
        if t.get("tasks"):
            prec = t["precision"]
            lines += ["", "Extra tasks (the same bundle, one head each): " + "; ".join(
                f"{_cell(n)} FP32 {_pct(v['fp32']['top1'])} -> {prec.upper()} {_pct(v[prec]['top1'])}"
                for n, v in t["tasks"].items()) + "."]
        if t.get("recovery"):
            lines += ["", f"Export recovery: {_cell(recovery_text(t['recovery']))}."]
        failed = [g for g in t["gates"] if not g["passed"]]
        if failed:
            lines += ["", "Failed gates:", ""] + [f"- `{g['name']}`: {_cell(g['message'])}" for g in failed]
        lines.append("")

    stages = summary.get("stages", [])
    reused = sum(1 for s in stages if s["reused"])
    lines += [f"Stages: {reused} of {len(stages)} reused from the cache; build took {summary.get('seconds', 0):.1f} s.",
              ""]
    return "\n".join(lines)


def write_markdown(summary: dict, path: Path) -> Path:
    atomic_write_bytes(path, render(summary).encode("utf-8"))
    return Path(path)
