"""INT8 accuracy recovery: the ladder `edgetl export` climbs when the quantized model fails
the target's accuracy gate (`--recover auto`, the default; `--recover off` skips it).

Steps, cheapest first. Each is measured on the run's validation split under the same gate,
and the first that passes wins (its backbone and head become the bundle's):

  a. head refit: embed the training images with the quantized backbone and re-fit the head
     on them (`edgetl.ondevice.fit.fit_softmax`, anchored to the FP32 head). The head is
     separate from the backbone, so this applies to every format unchanged.
  b. calibration: the calibration recipes the format supports, and the run's recipe with
     more samples, re-quantized from the FP32 artifact.
  c. float blocks: the backbone's most sensitive blocks kept in float, the fewest that pass.
     Sensitivity: quantize all but one block, measure how close the embeddings come to
     FP32's. One procedure, format hooks for the graph and the quantizer: TFLite ops grouped
     by their tensor names, kept float by ai-edge-quantizer overrides; QDQ ONNX nodes grouped
     by their names, kept float by onnxruntime's `nodes_to_exclude` (no Q/DQ, float weights).
  d. int16 activations, int8 weights (TFLite, ai-edge-quantizer static_wi8_ai16): refused as
     a winner when its measured host latency exceeds the target's latency budget, since
     XNNPACK has no int16 kernels (docs/benchmarks.md, "INT8 accuracy recovery (issue 16)").

Every candidate backbone of b, c, d also gets the head refit of a on top of it. Choices
inside a step (which recipe, which blocks, the refit's L2 and stopping point) are made on a
training-side slice, never on the validation images: the run's selection split
(metrics.json `data.selection_files`) or else a stratified, seeded 20 % of its training
images. The validation split only gives each step's reported verdict, as the gate always did;
stopping at the first step that passes is a sequential test on it, which the manifest's
`recovery` block makes visible (every step tried, with its figures).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.bundle import Head
from edgetl.errors import EdgetlError
from edgetl.formats import Exported
from edgetl.ondevice.fit import FitConfig, fit_softmax
from edgetl.quantize.recipes import CalibrationRecipe, list_recipes, select_stratified
from edgetl.runtime.evaluate import embed_paths, metrics_from_embeddings
from edgetl.runtime.predictor import Predictor

log = logging.getLogger("edgetl")

# Training images the refit embeds (a stratified subset beyond this). All of them pay: on the
# digits (1402 training images) the best slice loss was 0.111 fitting on all, 0.197 on 512.
REFIT_MAX_IMAGES = 4096
SLICE_FRACTION = 0.2  # of the training images, when the run records no selection split
# Anchor strengths tried; the lowest slice loss wins. 0.1 (FitConfig's default, meant for a few
# field images) never won on the demo set or the digits.
REFIT_L2 = (1e-2, 1e-3, 1e-4)
# FitConfig's 500 steps at lr 1e-3 stop short: on the digits the slice loss was 0.111 there and
# 0.088 after 1000 steps at lr 2e-3, the same as 2000 at 1e-3 in half the time (80-95 s per L2
# value on the 2-core host at load average 12). Early stopping on the slice ends it sooner.
REFIT = FitConfig(max_steps=1000, lr=2e-3)
MORE_SAMPLES = 512  # step b's "more calibration samples" (the whole pool when smaller)
FLOAT_BLOCK_TRIES = (1, 2, 4, 8)  # step c: how many of the most sensitive blocks to keep float
LATENCY_ROUNDS = 30


@dataclass
class LadderInput:
    """What the exporter hands the ladder (its staged artifacts and how to run them).

    `open_predictor(path, io, head)` runs a staged model file with the device runtime;
    `calibration(recipe)` gives that recipe's calibration arrays; `request(module, precision,
    base)` is the exporter's ExportRequest builder."""

    plan: Any  # edgetl.exporter._Plan
    stage: Path
    head: Head  # the FP32 head (the run's)
    fp32: Exported
    quantized: Exported
    metrics: dict  # fp32, the precision's, gate
    val_embeddings: np.ndarray  # of the failed quantized backbone
    open_predictor: Callable[[Path, dict, Head], Predictor]
    calibration: Callable[[CalibrationRecipe], list]
    request: Callable


@dataclass
class Outcome:
    """The ladder's result: the manifest block, and the winner's artifacts (None: no winner)."""

    record: dict
    head: Head | None = None
    exported: Exported | None = None
    metrics: dict | None = None
    embeddings: np.ndarray | None = None
    recipe: CalibrationRecipe | None = None
    facts: dict | None = None  # the format's validation facts of the winning backbone

    @property
    def won(self) -> bool:
        return self.head is not None


@dataclass
class _Candidate:
    """One quantized backbone the ladder may score."""

    exported: Exported
    recipe: CalibrationRecipe
    what: str
    slice_cosine: float | None = None
    extra: dict = field(default_factory=dict)
    scheme: str | None = None  # the validation scheme when not the export's precision (int16x8)


# -- the training-side slice -------------------------------------------------------------------
def training_side(plan) -> tuple[list, list, list, list, str]:
    """(fit paths, fit labels, slice paths, slice labels, slice source) for the head refit.

    The slice is the run's selection split when metrics.json records one, else a stratified,
    seeded 20 % of its training images (then left out of the fit).

    Raises:
        EdgetlError: a slice image is also a validation image (a corrupt run record).
    """
    import json

    from edgetl.data import split_from_record

    train_paths, train_y = list(plan.train_paths), list(plan.train_y)
    sel_paths, sel_y, source = [], [], ""
    try:
        record = json.loads((plan.run_dir / "metrics.json").read_text(encoding="utf-8")).get("data") or {}
    except (OSError, ValueError):
        record = {}
    if record.get("selection_files") and record.get("val_files"):
        split = split_from_record(record)
        sel_paths, sel_y = [p for p, _ in split.selection], [y for _, y in split.selection]
        source = "run selection split (metrics.json data.selection_files)"
        if not train_paths:
            train_paths, train_y = [p for p, _ in split.train], [y for _, y in split.train]
    if not sel_paths and train_paths:
        n = max(len(set(train_y)), int(round(SLICE_FRACTION * len(train_paths))))
        picked = set(select_stratified(list(range(len(train_paths))), train_y, n, seed=0))
        sel_paths = [train_paths[i] for i in sorted(picked)]
        sel_y = [train_y[i] for i in sorted(picked)]
        train_paths = [p for i, p in enumerate(train_paths) if i not in picked]
        train_y = [y for i, y in enumerate(train_y) if i not in picked]
        source = f"stratified, seeded {SLICE_FRACTION:.0%} of the training images"
    val = {Path(p).resolve() for p in plan.val_paths}
    leaked = [p for p in [*sel_paths, *train_paths] if Path(p).resolve() in val]
    if leaked:
        raise EdgetlError(f"'{plan.run_dir / 'metrics.json'}' lists '{leaked[0]}' as a training image and as a "
                          "validation image; re-run finetune")
    if len(train_paths) > REFIT_MAX_IMAGES:
        keep = select_stratified(list(range(len(train_paths))), train_y, REFIT_MAX_IMAGES, seed=0)
        train_paths, train_y = [train_paths[i] for i in keep], [train_y[i] for i in keep]
    return train_paths, train_y, sel_paths, sel_y, source


def head_adapted(run_dir: Path) -> str | None:
    """Why the head must not be re-fitted, or None: an `align`/`coral` run (edgetl adapt) holds
    its adaptation to the field in the head, and a refit on the source training images would
    undo it (seen: an adapted demo run's INT8 export "recovered" to the unadapted head)."""
    try:
        adaptation = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8")).get("adaptation")
    except (OSError, ValueError, AttributeError):
        return None
    method = adaptation.get("method") if isinstance(adaptation, dict) else None
    if method in ("align", "coral"):
        return (f"the run is adapted to field images by '{method}', which lives in its head; a refit on the "
                "source training images would undo it")
    return None


def refit_head(anchor: Head, fit_emb: np.ndarray, fit_y: np.ndarray, sel_emb: np.ndarray,
               sel_y: np.ndarray) -> tuple[Head, float, Any]:
    """Step a's fit: `anchor` re-fitted on (quantized-backbone) embeddings of the training
    images, pulled toward itself; each L2 strength of REFIT_L2 tried, the lowest loss on the
    selection slice wins (the first on a tie). Returns (head, its l2, the FitResult)."""
    best = None
    for l2 in REFIT_L2:
        r = fit_softmax(fit_emb, fit_y, sel_emb, sel_y, anchor.weight, anchor.bias, replace(REFIT, l2=l2))
        if best is None or r.val_loss < best[1].val_loss - 1e-9:
            best = (l2, r)
    l2, r = best
    return Head(r.weight.astype(np.float32), r.bias.astype(np.float32), anchor.labels), l2, r


# -- measuring -------------------------------------------------------------------------------
def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


class _Ladder:
    def __init__(self, x: LadderInput):
        self.x = x
        p = x.plan
        self.fit_paths, self.fit_y, self.sel_paths, self.sel_y, self.slice_source = training_side(p)
        self.keep_head = head_adapted(p.run_dir)
        self.fp32_top1 = x.metrics["fp32"]["top1"]
        self.tolerance = p.target.accuracy_tolerance_pts
        self.fp32_slice = None
        if self.sel_paths:
            fp32 = x.open_predictor(x.fp32.path, x.fp32.io, x.head)
            self.fp32_slice = embed_paths(fp32, self.sel_paths, description="recovery: FP32 slice")[0]

    def slice_cosine(self, exported: Exported) -> tuple[float, float]:
        """(mean cosine to FP32's embeddings on the slice, host ms per image)."""
        pred = self.x.open_predictor(exported.path, exported.io, self.x.head)
        emb, seconds = embed_paths(pred, self.sel_paths, description="recovery: slice")
        return _cosine(emb, self.fp32_slice), seconds * 1e3 / max(1, len(self.sel_paths))

    def refit(self, pred: Predictor) -> tuple[Head, dict]:
        """The head re-fitted on `pred`'s embeddings of the training images (slice-selected);
        the run's own head when its adaptation lives in the head (`head_adapted`)."""
        x = self.x
        if self.keep_head:
            return x.head, {"skipped": self.keep_head}
        fit_emb = embed_paths(pred, self.fit_paths, description="recovery: embedding training images")[0]
        sel_emb = embed_paths(pred, self.sel_paths, description="recovery: embedding the slice")[0]
        fit_y, sel_y = np.asarray(self.fit_y), np.asarray(self.sel_y)
        head, l2, r = refit_head(x.head, fit_emb, fit_y, sel_emb, sel_y)
        slice_top1 = float(np.mean(head.predict(sel_emb) == sel_y))
        return head, {"l2": l2, "best_step": r.best_step, "steps": r.steps, "slice_loss": round(r.val_loss, 5),
                      "slice_top1": slice_top1, "fit_images": len(fit_y), "slice_images": len(sel_y)}

    def measure(self, step: str, name: str, cand: _Candidate) -> tuple[dict, Head, np.ndarray]:
        """Refit the head on `cand`, then score it on the validation split under the gate."""
        started = time.perf_counter()
        x = self.x
        pred = x.open_predictor(cand.exported.path, cand.exported.io, x.head)
        head, refit = self.refit(pred)
        val_emb, seconds = embed_paths(pred, x.plan.val_paths, description=f"recovery {step}: evaluating")
        scored = Predictor(pred.bundle, pred.backbone, head=head)
        metrics = metrics_from_embeddings(scored, val_emb, x.plan.val_y, seconds)
        drop = (self.fp32_top1 - metrics["top1"]) * 100.0
        row = {"step": step, "name": name, "what": cand.what, "top1": metrics["top1"],
               "balanced_accuracy": metrics["balanced_accuracy"], "drop_pts": round(drop, 4),
               "latency_ms": round(metrics["latency_ms"]["inference_mean"], 3),
               "size_bytes": cand.exported.path.stat().st_size, "passed": drop <= self.tolerance,
               "refit": refit, **cand.extra}
        if cand.slice_cosine is not None:
            row["slice_cosine"] = round(cand.slice_cosine, 6)
        row["seconds"] = round(time.perf_counter() - started, 1)
        log.info("recovery %s (%s): top1 %.4f, drop %.2f pts -> %s", step, name, metrics["top1"], drop,
                 "pass" if row["passed"] else "fail")
        return row | {"_metrics": metrics}, head, val_emb


# -- candidates ------------------------------------------------------------------------------
def _recipe_variants(x: LadderInput) -> list[CalibrationRecipe]:
    """Step b's recipes: the format's other shipped recipes and the run's with more samples."""
    import importlib

    p = x.plan
    module = importlib.import_module(f"edgetl.formats.{p.fmt.module}")

    def applies(r: CalibrationRecipe) -> bool:
        if r.method not in module.SUPPORTED_METHODS:
            return False
        try:
            getattr(module, "check_recipe", lambda _: None)(r)  # e.g. LiteRT refuses symmetric activations
        except EdgetlError:
            return False
        return True

    pool = int(p.calib_info.get("pool") or len(p.train_paths))
    current = p.recipe
    seen = {(current.method, min(current.samples, pool), current.percentile)}
    out = []
    more = min(MORE_SAMPLES, pool)
    if more > current.samples:
        out.append(replace(current, name=f"{current.name}+{more}", samples=more,
                           description=f"{current.name} with {more} samples"))
        seen.add((current.method, more, current.percentile))
    for r in list_recipes():
        if not applies(r):
            continue
        key = (r.method, min(r.samples, pool), r.percentile)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _export_variant(x: LadderInput, recipe: CalibrationRecipe, tag: str) -> Exported:
    """The quantized backbone re-made from the FP32 artifact with `recipe`, in its own folder."""
    p = x.plan
    folder = x.stage / "recovery" / tag
    folder.mkdir(parents=True, exist_ok=True)
    base = x.request(p.run.backbone, p.precision, base=x.fp32.path)
    req = replace(base, recipe=recipe, calibration=lambda: x.calibration(recipe))
    exported = p.fmt.export(req, folder / x.quantized.path.name)
    p.fmt.validate(exported.path, p.precision)
    return exported


def _group_by_block(named: list[tuple[str, str]], pattern: re.Pattern) -> list[tuple[str, list[str]]]:
    """(module path, member) pairs, in graph order, grouped by the timm block the path names:
    ("stem", members), ("blocks.S.B", members), ("head", members). `pattern` captures S and B."""
    groups: dict[str, list[str]] = {}
    seen_block = False
    for path, name in named:
        m = pattern.search(path)
        if m:
            key, seen_block = f"blocks.{m.group(1)}.{m.group(2)}", True
        else:
            key = "head" if seen_block else "stem"
        groups.setdefault(key, []).append(name)
    return list(groups.items())


def _tflite_blocks(source: Path) -> list[tuple[str, list[str]]]:
    """The ops of a converted timm backbone grouped by block, named by their first output
    tensor. litert-torch's tensor names carry the module path
    (".../Sequential_blocks/...Sequential_3/..._InvertedResidual_1/...")."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(source))
    names = [interpreter._get_tensor_details(op["outputs"][0], 0)["name"]  # noqa: SLF001 (LiteRT has no
             for op in interpreter._get_ops_details() if op["outputs"]]  # noqa: SLF001  public node list)
    pattern = re.compile(r"Sequential_blocks/[^/;]*Sequential_(\d+)/[^/;]*_(\d+)(?:/|;|$)")
    return _group_by_block([(n.split(";")[0], n) for n in names], pattern)  # the first name is the op's own


def _onnx_blocks(source: Path) -> list[tuple[str, list[str]]]:
    """The nodes of an exported timm backbone ONNX grouped by block: the TorchScript exporter
    names each node by its module path ("/blocks/blocks.3/blocks.3.1/conv_pw/Conv")."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    pattern = re.compile(r"^/blocks/blocks\.(\d+)/blocks\.\d+\.(\d+)/")
    return _group_by_block([(n.name, n.name) for n in graph.node], pattern)


# -- the ladder ------------------------------------------------------------------------------
def recover(x: LadderInput) -> Outcome:
    """Climb the ladder (module docstring) until a step passes the gate.

    Args:
        x: the exporter's staged artifacts and runners.

    Returns:
        The Outcome: its `record` is the manifest's `recovery` block (every step tried, its
        top-1, drop, latency and size, and which won); the winner's head, backbone, metrics
        and validation embeddings when one passed.
    """
    started = time.perf_counter()
    p = x.plan
    q = x.metrics[p.precision]
    record: dict = {"mode": "auto", "trigger": {"top1": q["top1"], "drop_pts": x.metrics["gate"]["drop_pts"],
                                                 "tolerance_pts": x.metrics["gate"]["tolerance_pts"],
                                                 "latency_ms": round(q["latency_ms"]["inference_mean"], 3),
                                                 "size_bytes": x.quantized.path.stat().st_size},
                    "steps": [], "winner": None}
    ladder = _Ladder(x)
    if not ladder.sel_paths or not ladder.fit_paths:
        record["skipped"] = "the run records no training images to refit or select on; pass calib and a run with them"
        return Outcome(record)
    record["slice"] = {"source": ladder.slice_source, "n": len(ladder.sel_paths), "fit_images": len(ladder.fit_paths)}
    outcome = Outcome(record)

    def settle(step: str, name: str, cand: _Candidate) -> bool:
        row, head, emb = ladder.measure(step, name, cand)
        metrics = row.pop("_metrics")
        record["steps"].append(row)
        if row["passed"]:
            record["winner"] = step
            outcome.head, outcome.exported, outcome.metrics, outcome.embeddings = head, cand.exported, metrics, emb
            outcome.recipe = cand.recipe
            outcome.facts = p.fmt.validate(cand.exported.path, cand.scheme or p.precision)
        return row["passed"]

    def skip(step: str, name: str, why: str) -> None:
        record["steps"].append({"step": step, "name": name, "skipped": why})
        log.info("recovery %s (%s) skipped: %s", step, name, why)

    try:
        _climb(x, ladder, settle, skip)
        if outcome.won and outcome.exported is not x.quantized:
            before, after, threads = _interleaved_latency(x, x.quantized, outcome.exported, ladder.sel_paths[0])
            record["latency_cost"] = {"before_ms": round(before, 3), "after_ms": round(after, 3),
                                      "ratio": round(after / before, 3), "threads": threads,
                                      "how": f"median of {LATENCY_ROUNDS} interleaved single-image runs on the host"}
    finally:
        record["seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def _interleaved_latency(x: LadderInput, a: Exported, b: Exported, image, rounds: int | None = None):
    """Median ms per image of two backbones, run alternately on one image (the host is noisy:
    ±20 % run to run, so only interleaved runs compare)."""
    rounds = rounds or LATENCY_ROUNDS
    pa, pb = x.open_predictor(a.path, a.io, x.head), x.open_predictor(b.path, b.io, x.head)
    batch = pa.prepare([image])
    times: tuple[list, list] = ([], [])
    for i in range(rounds + 3):
        for pred, sink in ((pa, times[0]), (pb, times[1])):
            t0 = time.perf_counter()
            pred.backend.run(batch)
            if i >= 3:  # warm-up
                sink.append(time.perf_counter() - t0)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3), pa.backend.threads


def _climb(x: LadderInput, ladder: _Ladder, settle, skip) -> None:
    p = x.plan
    original = _Candidate(x.quantized, p.recipe, f"the exported {p.precision} backbone, head re-fitted on its "
                                                  "embeddings of the training images")
    if ladder.keep_head:
        skip("a", "head refit", ladder.keep_head)
    elif settle("a", "head refit", original):
        return

    # b. calibration: rank the variants on the slice, score the best one if it beats the original.
    best = original
    best.slice_cosine = ladder.slice_cosine(original.exported)[0]
    tried = []
    for i, recipe in enumerate(_recipe_variants(x)):
        exported = _export_variant(x, recipe, f"b{i}")
        cos = ladder.slice_cosine(exported)[0]
        tried.append({"recipe": recipe.name, "method": recipe.method, "samples": recipe.samples,
                      "slice_cosine": round(cos, 6)})
        if cos > best.slice_cosine:
            best = _Candidate(exported, recipe, f"re-calibrated: recipe '{recipe.name}' ({recipe.method}, "
                                                f"{recipe.samples} samples)", cos)
    if not tried:
        skip("b", "calibration", f"no other calibration recipe applies to {p.fmt.name}")
    elif best is original:
        skip("b", "calibration", "no recipe came closer to FP32 on the training slice than the exported one: "
                                 + ", ".join(f"{t['recipe']} {t['slice_cosine']:.4f}" for t in tried)
             + f" vs {original.slice_cosine:.4f}")
    else:
        best.extra = {"candidates": tried, "baseline_slice_cosine": round(original.slice_cosine, 6)}
        if settle("b", "calibration", best):
            return

    hooks = {"tflite": _TfliteBlocks, "tensorrt": _QdqBlocks}.get(p.fmt.name)
    if hooks is None:
        skip("c", "float blocks", f"format {p.fmt.name} has no way to keep blocks float")
    elif _float_blocks(ladder, best, settle, skip, hooks(x)):
        return
    if p.fmt.name == "tflite":
        _int16(x, ladder, best, settle, skip)
    else:
        skip("d", "int16 activations", "TensorRT has no int16 activations")


class _TfliteBlocks:
    """Step c's TFLite hooks: ops grouped by block; kept float with ai-edge-quantizer's
    per-tensor float overrides, from one calibration; XNNPACK partitions as the extra fact."""

    unit = "ops"

    def __init__(self, x: LadderInput):
        from edgetl.formats import tflite

        self.x, self.tflite = x, tflite
        source = tflite.int8_source_path(x.fp32.path)
        self.source = source if source.is_file() else x.fp32.path
        self.io = tflite.describe_io(self.source, x.plan.target.layout)

    def blocks(self) -> list[tuple[str, list[str]]]:
        return _tflite_blocks(self.source)

    def ranges(self, recipe: CalibrationRecipe):
        io = self.io["input"]
        return self.tflite.calibrate_int8(self.source, self.x.calibration(recipe), recipe, io["signature_input"],
                                          io["signature"], min(self.x.plan.target.threads, 2))

    def variant(self, ranges, recipe: CalibrationRecipe, tag: str, what: str, members: Sequence[str] = (),
                **options) -> _Candidate:
        x, io = self.x, self.io["input"]
        out = _variant_folder(x, tag) / x.quantized.path.name
        self.tflite.quantize_int8(self.source, out, None, recipe, io["signature_input"], io["signature"],
                                  ranges=ranges, float_tensors=list(members), **options)
        info = {**x.quantized.info, "calibration": {**recipe.to_dict(), "images": ranges.samples}}
        return _Candidate(Exported(out, self.tflite.describe_io(out, x.plan.target.layout), info), recipe, what)

    def facts(self, cand: _Candidate, members: list[str]) -> dict:
        partitions, outside = self.tflite.xnnpack_partitions(cand.exported.path)
        return {"float_ops": len(members), "xnnpack": {"partitions": partitions, "undelegated_ops": outside}}


class _QdqBlocks:
    """Step c's QDQ ONNX hooks: nodes grouped by block; kept float with onnxruntime's
    `nodes_to_exclude` (no Q/DQ on their inputs, float32 weights), from one calibration (its
    range cache); the other weights stay int8 initializers."""

    unit = "nodes"

    def __init__(self, x: LadderInput):
        from edgetl.formats import onnx_tensorrt

        self.x, self.fmt = x, onnx_tensorrt

    def blocks(self) -> list[tuple[str, list[str]]]:
        return _onnx_blocks(self.x.fp32.path)

    def ranges(self, recipe: CalibrationRecipe):
        cache = _variant_folder(self.x, "c-ranges") / f"{recipe.name}.json"
        return self.fmt.calibrate_qdq(self.x.fp32.path, self.x.calibration(recipe), recipe, cache)

    def variant(self, ranges, recipe: CalibrationRecipe, tag: str, what: str,
                members: Sequence[str] = ()) -> _Candidate:
        x = self.x
        out = _variant_folder(x, tag) / x.quantized.path.name
        exported = self.fmt.export_int8(x.fp32.path, out, recipe, x.plan.target, x.plan.target.layout,
                                        ranges=ranges, float_nodes=members)
        return _Candidate(exported, recipe, what)

    def facts(self, cand: _Candidate, members: list[str]) -> dict:
        s = self.fmt.qdq_structure(cand.exported.path)
        return {"float_nodes": list(members),
                "qdq": {k: s[k] for k in ("convs", "convs_kept_float", "initializer_bytes")}}


def _variant_folder(x: LadderInput, tag: str) -> Path:
    folder = x.stage / "recovery" / tag
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _float_blocks(ladder: _Ladder, best: _Candidate, settle, skip, hooks) -> bool:
    """Step c: sensitivity of each block (all int8 but it), then the k most sensitive float.

    `hooks` is the format's (_TfliteBlocks, _QdqBlocks): `unit` what a member is (ops, nodes),
    `blocks()` the graph's (block, members) groups, `ranges(recipe)` one calibration,
    `variant(ranges, recipe, tag, what, members)` a quantized candidate with `members` float,
    `facts(candidate, members)` its extra record."""
    recipe = best.recipe
    blocks = hooks.blocks()
    if len(blocks) < 3:
        skip("c", "float blocks", f"the graph has no timm block structure to rank ({len(blocks)} group(s))")
        return False
    ranges = hooks.ranges(recipe)
    base_cos = best.slice_cosine  # same recipe, same images: the same ranges
    gains = []
    for i, (name, members) in enumerate(blocks):
        cand = hooks.variant(ranges, recipe, f"c{i}", "", members)
        gains.append((ladder.slice_cosine(cand.exported)[0] - base_cos, name, members))
    gains.sort(key=lambda g: -g[0])
    sensitivity = [{"block": n, "slice_cosine_gain": round(g, 6)} for g, n, _ in gains]
    for k in FLOAT_BLOCK_TRIES:
        if k > len(gains):
            break
        chosen = gains[:k]
        names = [n for _, n, _ in chosen]
        members = [m for _, _, ms in chosen for m in ms]
        cand = hooks.variant(ranges, recipe, f"c-top{k}", f"{k} most sensitive block(s) kept float: "
                             + ", ".join(names) + f" ({len(members)} {hooks.unit}, recipe '{recipe.name}')", members)
        cand.slice_cosine = ladder.slice_cosine(cand.exported)[0]
        cand.extra = {"float_blocks": names, **hooks.facts(cand, members), "sensitivity": sensitivity}
        cand.exported.info["float_blocks"] = names
        if settle("c", "float blocks", cand):
            return True
    return False


def _int16(x: LadderInput, ladder: _Ladder, best: _Candidate, settle, skip) -> None:
    """Step d (TFLite): int16 activations, int8 weights; measured, refused over the latency budget."""
    recipe = best.recipe
    hooks = _TfliteBlocks(x)
    cand = hooks.variant(hooks.ranges(recipe), recipe, "d", f"int16 activations, int8 weights "
                         f"(ai-edge-quantizer static_wi8_ai16, recipe '{recipe.name}')", activation_bits=16)
    cand.exported.info["quantizer"] = "ai-edge-quantizer static_wi8_ai16 (int16 activations and I/O, int8 weights)"
    cand.scheme = "int16x8"
    cand.slice_cosine, ms = ladder.slice_cosine(cand.exported)
    budget = x.plan.target.latency_budget_ms
    if budget and ms > budget:
        skip("d", "int16 activations", f"{ms:.0f} ms per image on this host (slice, {len(ladder.sel_paths)} images) "
                                       f"exceeds target '{x.plan.target.name}' latency budget of {budget:g} ms: "
                                       f"XNNPACK has no int16 kernels; slice cosine to FP32 {cand.slice_cosine:.4f}")
        return
    settle("d", "int16 activations", cand)


def describe(record: dict) -> str:
    """One line for the CLI: which step won and what it cost, or that none did."""
    winner = record.get("winner")
    tried = ", ".join(f"{s['step']}" + ("" if "skipped" not in s else " (skipped)") for s in record.get("steps", []))
    if not winner:
        return f"recovery: no step passed the gate (tried {tried or 'none'})"
    row = next(s for s in record["steps"] if s["step"] == winner and s.get("passed"))
    t = record["trigger"]
    cost = record.get("latency_cost")
    latency = (f"latency {cost['before_ms']:.2f} -> {cost['after_ms']:.2f} ms/img (x{cost['ratio']:.2f}, interleaved)"
               if cost else "same backbone, same latency")
    return (f"recovery: step {winner} ({row['name']}) passed: top1 {t['top1']:.4f} -> {row['top1']:.4f}, drop "
            f"{t['drop_pts']:.2f} -> {row['drop_pts']:.2f} pts; {latency}; size {t['size_bytes'] / 1e6:.2f} -> "
            f"{row['size_bytes'] / 1e6:.2f} MB; ladder {record['seconds']:.0f} s")
