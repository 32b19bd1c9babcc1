"""report.html: one self-contained page for a build's summary.json (a CI artifact).

Everything is inside the file: CSS inline, plots as base64 PNG data URIs, no script and no
external resource, so it opens the same from an artifact download, a mail attachment or a
file:// URL. Every string from the summary (target, class and candidate names, messages,
paths) is escaped: a class folder named `<script>` must show as text, not run.

Layout: a verdict and the summary table across targets first, then one section per target:
gates, per-class recall, confusion matrix, candidate selection (Pareto plot + reasons),
calibration, versions and the bundle digest.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from edgetl.report.plots import confusion_png, pareto_png
from edgetl.report.summary import recovery_text

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1a202c;
       margin: 0 auto; max-width: 1180px; padding: 18px 24px 40px; background: #fff; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 18px; margin: 30px 0 6px; border-bottom: 2px solid #e2e8f0;
  padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; color: #2d3748; }
.meta { color: #4a5568; font-size: 13px; margin: 2px 0 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #e2e8f0; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f7fafc; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.fail td { background: #fff5f5; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 700; font-size: 12px; }
.pass { background: #c6f6d5; color: #22543d; } .fail { background: #fed7d7; color: #822727; }
tr.fail td { color: #822727; } tr.dropped td { color: #718096; }
table.facts th { background: #f7fafc; width: 9em; }
.muted { color: #718096; } code { font-size: 12px; background: #f7fafc; padding: 0 3px; word-break: break-all; }
.row { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 22px; align-items: start; }
img { max-width: 100%; height: auto; border: 1px solid #edf2f7; }
.verdict { font-size: 16px; margin: 8px 0 14px; }
"""

NONE = "–"  # what a missing optional value shows as


def esc(value) -> str:
    """HTML-escaped text of any value (quotes too: it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if _finite(value) else NONE


def _num(value, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if _finite(value) else NONE


def _badge(passed) -> str:
    if passed is None:
        return f'<span class="badge muted">{NONE}</span>'
    return '<span class="badge pass">PASS</span>' if passed else '<span class="badge fail">FAIL</span>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """`head` is escaped here; `rows` cells are HTML already (escape their text before)."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _td(text, num: bool = False) -> str:
    """A cell of escaped text."""
    return f'<td class="num">{esc(text)}</td>' if num else f"<td>{esc(text)}</td>"


def _cell(markup: str) -> str:
    """A cell of markup built here from escaped parts."""
    return f"<td>{markup}</td>"


def _metrics(target: dict) -> tuple[dict, dict, str]:
    """(fp32 metrics, deployed-precision metrics, precision name); missing ones are {}."""
    metrics = target.get("metrics") or {}
    precision = str(target.get("precision") or "fp32")
    return metrics.get("fp32") or {}, metrics.get(precision) or metrics.get("fp32") or {}, precision


def _latency(target: dict) -> str:
    """'median / p90 ms (source)' for each latency measured, device first when present."""
    parts = []
    latency = target.get("latency_ms") or {}
    for source in ("device", "host"):
        lat = latency.get(source)
        if isinstance(lat, dict):
            parts.append(f"{_num(lat.get('median'))} / {_num(lat.get('p90'))} ms ({source})")
    return "; ".join(parts) or NONE


def _failed_gates(target: dict) -> list[str]:
    return [str(g.get("name", "?")) for g in target.get("gates") or [] if g.get("passed") is False]


def summary_table(targets: dict) -> str:
    """The table across targets: one row each, a failed target's row tinted."""
    head = ["target", "verdict", "candidate", "precision", "format", "size MB", "FP32 top-1", "quantized top-1",
            "drop (pts)", "latency median / p90", "gates"]
    rows, classes = [], []
    for i, (name, t) in enumerate(targets.items(), 1):
        fp32, deployed, precision = _metrics(t)
        drop = (100 * (fp32["top1"] - deployed["top1"]) if _finite(fp32.get("top1")) and _finite(deployed.get("top1"))
                else None)
        size = (t.get("size_bytes") or {}).get(precision)
        failed = _failed_gates(t)
        gates = (f'<span class="badge fail">FAIL</span> {esc(", ".join(failed))}' if failed
                 else _badge(True) if t.get("gates") else f'<span class="muted">{NONE}</span>')
        rows.append([f'<td><a href="#target-{i}">{esc(name)}</a></td>', _cell(_badge(t.get("passed"))),
                     _td(t.get("candidate") or NONE), _td(precision), _td(t.get("format") or NONE),
                     _td(_num(size / 1e6) if _finite(size) else NONE, True), _td(_pct(fp32.get("top1")), True),
                     _td(_pct(deployed.get("top1")) if precision != "fp32" else NONE, True),
                     _td(_num(drop) if precision != "fp32" else NONE, True), _td(_latency(t)), _cell(gates)])
        classes.append("" if t.get("passed", True) else "fail")
    return _table(head, rows, classes)


def gates_table(gates: list[dict]) -> str:
    rows = [[_td(g.get("name", "?")), _td(_num(g.get("value"), "{:.4g}"), True),
             _td(_num(g.get("limit"), "{:.4g}"), True),
             _cell(_badge(g.get("passed"))), _td(g.get("message") or "")] for g in gates]
    return _table(["gate", "value", "limit", "verdict", "message"], rows,
                  ["fail" if g.get("passed") is False else "" for g in gates])


def recall_table(fp32: dict, deployed: dict, precision: str) -> str:
    """Per-class recall, FP32 beside the deployed precision, with the change in points."""
    classes = list(dict.fromkeys([*(fp32.get("per_class") or {}), *(deployed.get("per_class") or {})]))
    quantized = precision != "fp32" and deployed is not fp32
    head = ["class", "images", "FP32 recall"] + ([f"{precision} recall", "change (pts)"] if quantized else [])
    rows = []
    for label in classes:
        a = (fp32.get("per_class") or {}).get(label) or {}
        b = (deployed.get("per_class") or {}).get(label) or {}
        row = [_td(label), _td(a.get("support", b.get("support", NONE)), True), _td(_pct(a.get("recall")), True)]
        if quantized:
            change = (100 * (b["recall"] - a["recall"]) if _finite(a.get("recall")) and _finite(b.get("recall"))
                      else None)
            row += [_td(_pct(b.get("recall")), True), _td(_num(change, "{:+.2f}"), True)]
        rows.append(row)
    return _table(head, rows)


def selection_table(selection: list[dict], chosen: str | None) -> str:
    """Every candidate with its kept/dropped reason; the split the choice was made on, when given,
    beside the validation top-1 that is reported."""
    decided = any("selection_top1" in r for r in selection)
    rows = []
    for r in selection:
        name = esc(r.get("candidate", "?")) + (' <span class="badge pass">selected</span>'
                                               if r.get("candidate") == chosen else "")
        rows.append([_cell(name), _td(_pct(r.get("top1")), True)]
                    + ([_td(_pct(r.get("selection_top1")), True)] if decided else [])
                    + [_td(_num(r.get("latency_ms")), True), _td(r.get("latency_source") or NONE),
                       _td("kept" if r.get("kept") else "dropped"), _td(r.get("why") or "")])
    head = ["candidate", "val top-1"] + (["selection top-1"] if decided else []) + ["latency ms", "measured on", "",
                                                                                   "why"]
    return _table(head, rows, ["" if r.get("kept") else "dropped" for r in selection])


def ranking_table(ranking: list[dict]) -> str:
    """The `keep_top` ranking: every candidate, best LogME first, and whether it was fine-tuned."""
    rows = [[_td(r.get("rank"), True), _td(r.get("candidate", "?")), _td(_num(r.get("logme"), "{:.4f}"), True),
             _td(_pct(r.get("knn_top1")), True), _td("fine-tuned" if r.get("kept") else "not fine-tuned"),
             _td(r.get("why") or "")] for r in ranking]
    return _table(["#", "candidate", "LogME", "k-NN top-1", "", "why"], rows,
                  ["" if r.get("kept") else "dropped" for r in ranking])


def facts_table(target: dict, versions: dict) -> str:
    """Calibration, bundle, digest and versions as a two-column table."""
    calib = target.get("calibration") or {}
    calib_text = ", ".join(f"{k} {v}" for k, v in (("recipe", calib.get("name")), ("method", calib.get("method")),
                                                      ("samples", calib.get("samples"))) if v is not None) or NONE
    rows = [("bundle", esc(target.get("bundle") or NONE)),
            ("bundle sha256", f"<code>{esc(target.get('bundle_sha256') or NONE)}</code>"),
            ("calibration", esc(calib_text)),
            ("INT8 recovery", esc(recovery_text(target.get("recovery"))
                                  or ("not needed: the export passed its gate" if target.get("precision") == "int8"
                                      else NONE))),
            ("latency budget", esc(f"{target['latency_budget_ms']:g} ms" if _finite(target.get("latency_budget_ms"))
                                   else NONE)),
            ("versions", esc(", ".join(f"{k} {v}" for k, v in (versions or {}).items()) or NONE))]
    return ('<table class="facts"><tbody>'
            + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</tbody></table>")


def target_section(index: int, name: str, target: dict, versions: dict) -> str:
    fp32, deployed, precision = _metrics(target)
    chosen = target.get("candidate")
    parts = [f'<h2 id="target-{index}">{esc(name)} {_badge(target.get("passed"))}</h2>',
             f'<p class="meta">{esc(chosen or NONE)} · {esc(precision)} · {esc(target.get("format") or NONE)}'
             f" · top-1 {esc(_pct(deployed.get('top1')))} (FP32 {esc(_pct(fp32.get('top1')))}) · "
             f"latency {esc(_latency(target))}</p>"]
    if target.get("gates"):
        parts += ["<h3>Gates</h3>", gates_table(target["gates"])]
    shown = deployed or fp32
    figure = ""
    if shown.get("confusion") and shown.get("labels"):
        figure = _img(confusion_png(shown["confusion"], shown["labels"], f"{name}: {precision} confusion matrix"),
                      f"confusion matrix of {name} ({precision})")
    if fp32.get("per_class") or deployed.get("per_class") or figure:
        parts += ["<h3>Per class</h3>", '<div class="row">',
                  f"<div>{recall_table(fp32, deployed, precision)}</div>", f"<div>{figure}</div>", "</div>"]
    selection = target.get("selection") or []
    if selection:
        budget = target.get("latency_budget_ms")
        plot = _img(pareto_png(selection, budget if _finite(budget) else None, chosen,
                               f"{name}: accuracy vs latency"), f"accuracy against latency for {name}")
        # The plot above its table: the reasons are sentences, and need the page's width.
        parts += ["<h3>Candidates</h3>", f"<div>{plot}</div>", selection_table(selection, chosen)]
    parts += ["<h3>Calibration, bundle, versions</h3>", facts_table(target, versions)]
    return "\n".join(parts)


def candidates_table(candidates: list[dict]) -> str:
    adapted = any(c.get("adaptation") for c in candidates)
    rows = [[_td(c.get("name") or NONE), _td(c.get("backbone") or NONE), _td(c.get("input_size") or NONE, True),
             _td(_pct(c.get("top1")), True), _td(_num(c.get("seconds"), "{:.1f}"), True)]
            + ([_td((c.get("adaptation") or {}).get("method") or NONE),
                _td(_pct((c.get("adaptation") or {}).get("unadapted_top1")), True)] if adapted else [])
            for c in candidates]
    return _table(["candidate", "backbone", "input px", "val top-1 (FP32)", "fine-tune s"]
                  + (["adapted with", "val top-1 before adapting"] if adapted else []), rows)


def stages_table(stages: list[dict]) -> str:
    rows = [[_td(s.get("stage") or NONE), _td(s.get("label") or NONE), _cell(f"<code>{esc(str(s.get('key') or NONE)[:12])}</code>"),
             _td("reused" if s.get("reused") else "built"), _td(_num(s.get("seconds"), "{:.1f}"), True)] for s in stages]
    return _table(["stage", "what", "key", "", "seconds"], rows)


def render(summary: dict) -> str:
    """The report page for a summary.json dict (missing optional keys show as –).

    Args:
        summary: as `edgetl build` writes summary.json.

    Returns:
        The HTML text.
    """
    targets = summary.get("targets") or {}
    passed = summary.get("passed")
    failed = [name for name, t in targets.items() if t.get("passed") is False]
    verdict = ("all targets pass their gates" if passed else
               f"{len(failed)} of {len(targets)} targets fail: {', '.join(failed)}" if failed else "failed")
    title = f"edgetl build: {summary.get('config') or summary.get('project') or 'report'}"
    seconds = summary.get("seconds")
    meta = [str(summary.get("created") or ""), f"{seconds:.0f} s" if _finite(seconds) else "",
            ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items())]
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="meta">{esc(" · ".join(p for p in meta if p))}</p>',
            f'<p class="verdict">{_badge(passed)} {esc(verdict)}</p>',
            "<h2>Targets</h2>", summary_table(targets) if targets else '<p class="muted">no targets were built</p>']
    if summary.get("ranking"):
        body += [f"<h3>Transferability ranking (keep_top {esc(summary.get('keep_top'))})</h3>",
                 '<p class="muted">LogME and leave-one-out k-NN on frozen embeddings of the training split, '
                 "before any fine-tuning; only the kept candidates were fine-tuned.</p>",
                 ranking_table(summary["ranking"])]
    if summary.get("candidates"):
        body += ["<h3>Candidates fine-tuned</h3>", candidates_table(summary["candidates"])]
    for i, (name, t) in enumerate(targets.items(), 1):
        body.append(target_section(i, name, t, summary.get("versions") or {}))
    if summary.get("stages"):
        body += ["<h2>Stages</h2>", stages_table(summary["stages"])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(summary: dict, out_path: Path) -> Path:
    """Write report.html for a build summary: one file, no external resources.

    Args:
        summary: the summary.json dict of `edgetl build` (optional keys may be missing).
        out_path: the file to write (its folder is created).

    Returns:
        `out_path`.

    Raises:
        EdgetlError: `out_path` is a folder or cannot be written.
    """
    from edgetl.core.fsutil import atomic_write_bytes
    from edgetl.errors import EdgetlError

    out_path = Path(out_path)
    if out_path.is_dir():
        raise EdgetlError(f"report path '{out_path}' is a folder; pass a file name such as dist/report.html")
    text = render(summary)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_path, text.encode("utf-8"))
    except OSError as exc:
        raise EdgetlError(f"cannot write the report '{out_path}' ({exc.strerror}); pass another path") from None
    return out_path
