"""`edgetl adapt RUN --target-images DIR --adapt align|coral|adabn|auto --out RUN2`.

Unsupervised adaptation of a run to field images (no labels): the adapted run is a normal
run folder (model.pt with the same keys, labels.txt, metrics.json), so `edgetl export`
builds its bundle unchanged: one backbone + one head.

  align   per-dimension alignment of the embedding statistics (edgetl.core.align), folded
          into the head; the backbone is untouched.
  coral   the same with correlations (CORAL, shrunk); needs n_target >= 2 D images.
  adabn   BatchNorm running statistics from the target images (edgetl.adapt.adabn,
          "anchored" to the source's per-layer statistics); the head is untouched.
  auto    each method at the largest strength that passes the source check, plus no
          adaptation; the lowest information-maximisation score on the target images wins.

The source check (every method, recorded; auto's filter): the adapted model must lose at
most `tolerance` points of top-1 against the run on labelled *source* images of the
training side, the run's selection split (plus its training images when the selection
split has fewer than 100 images, where one image is more than a point). The validation
split is never looked at before the final, reported score.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.adapt import adabn
from edgetl.adapt.features import embedding_cache, run_record, target_images
from edgetl.api import Run
from edgetl.bundle.writer import STAGE_MARK, clean_stale_staging
from edgetl.core import align
from edgetl.core.fsutil import fsync_dir, ordinary_permissions, replace_dir
from edgetl.core.metrics import classification_metrics
from edgetl.core.progress import ProgressCallback, reporting
from edgetl.data import carve_selection, split_from_record
from edgetl.errors import EdgetlError
from edgetl.model import load_run, save_run
from edgetl.transfer.features import default_cache_dir
from edgetl.transfer.pretrained import state_digest
from edgetl.transfer.run import check_run_destination

log = logging.getLogger("edgetl")

METHODS = ("align", "coral", "adabn", "auto")
# auto tries each method at these strengths, strongest first, and keeps the first that passes
# the source check. Measured on hymenoptera seeds 0-2 (Lite0, docs/benchmarks.md): full
# alignment gained 16.5 points on the shifted camera and cost 2.2 on clean validation images
# (5.2 on seed 0), half strength gained 10.9 and cost 0.5.
STRENGTHS = (1.0, 0.75, 0.5, 0.25)
SOURCE_TOLERANCE = 1.0  # points of source top-1 an adapted model may lose (the bound)
MIN_CHECK_IMAGES = 100  # below this the selection split is joined by the training images
CORAL_IMAGES_PER_DIM = 2  # CORAL needs n_target >= 2 D (see `_coral_allowed`)
AUTO_CRITERION = ("lowest information-maximisation score (mean per-image entropy minus the entropy of the mean "
                  "prediction) of the adapted model on the target images, among the candidates whose source "
                  f"check loses at most the tolerance; each method at the largest strength of {list(STRENGTHS)} "
                  "that passes, and no adaptation")


@dataclass
class _Candidate:
    method: str  # align | coral | adabn | none
    strength: float
    weight: np.ndarray
    bias: np.ndarray
    backbone: nn.Module  # the run's own module unless adabn
    info: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def summary(self) -> dict:
        return {"method": self.method, "strength": self.strength, "source_check": self.check,
                "target_scores": self.scores}


class _Context:
    """Everything the candidates share: the run, its images and their embeddings."""

    def __init__(self, run_dir: Path, target_dir: Path, cache_dir):
        self.run_dir = run_dir
        self.metrics = run_record(run_dir)
        self.loaded = load_run(run_dir)
        split = split_from_record(self.metrics["data"])
        if list(split.labels) != list(self.loaded.labels):
            raise EdgetlError(f"'{run_dir / 'metrics.json'}' lists labels {split.labels} but '{run_dir / 'model.pt'}' "
                              f"has {self.loaded.labels}; re-run finetune")
        self.check_name = "selection"
        if not split.selection:  # a run from before selection splits: hold a slice of train out
            split = carve_selection(split)
            self.check_name = "held-out training slice"
        self.split = split
        self.cache_dir = cache_dir
        self.cache = embedding_cache(self.loaded.backbone, self.loaded, cache_dir)
        self.target = target_images(target_dir)
        self.check_items = list(split.selection)
        if len(self.check_items) < MIN_CHECK_IMAGES:
            self.check_items += list(split.train)
            self.check_name += " + train"
        head = self.loaded.model.head
        self.weight = head.weight.detach().cpu().numpy().astype(np.float64)
        self.bias = head.bias.detach().cpu().numpy().astype(np.float64)
        self.source_x = self.cache.embed([p for p, _ in split.train], "embedding source (training) images")
        self.target_x = self.cache.embed(self.target, "embedding target images")
        self.check_x = self.cache.embed([p for p, _ in self.check_items], f"embedding {self.check_name} images")
        self.check_y = np.array([y for _, y in self.check_items])
        self._layer_moments = None

    def source_check(self, cand: _Candidate, check_x: np.ndarray, tolerance: float) -> dict:
        before = float(np.mean((self.check_x @ self.weight.T + self.bias).argmax(1) == self.check_y))
        after = float(np.mean(cand.logits(check_x).argmax(1) == self.check_y))
        drop = 100.0 * (before - after)
        return {"split": self.check_name, "n": len(self.check_y), "source_top1": before, "adapted_top1": after,
                "drop_points": round(drop, 3), "tolerance_points": tolerance, "passed": round(drop, 6) <= tolerance}

    def layer_moments(self):
        """Per-BatchNorm-layer input moments of the source images, cached on disk by backbone
        and file content (a forward pass over every training image otherwise)."""
        if self._layer_moments is None:
            paths = [p for p, _ in self.split.train]
            h = hashlib.sha256(state_digest(self.loaded.backbone.state_dict()).encode())
            h.update(json.dumps(self.loaded.preprocess.to_dict(), sort_keys=True).encode())
            for p in paths:
                h.update(self.cache.file_digest(p).encode())
            path = Path(self.cache_dir or default_cache_dir()) / "adapt" / f"bn-{h.hexdigest()[:24]}.npz"
            try:
                with np.load(path, allow_pickle=False) as z:
                    names = [str(n) for n in z["names"]]
                    self._layer_moments = {n: (z[f"m{i}"], z[f"v{i}"]) for i, n in enumerate(names)}
            except (OSError, ValueError, KeyError, EOFError):
                moments = adabn.layer_moments(self.loaded.backbone, paths, self.loaded.preprocess)
                path.parent.mkdir(parents=True, exist_ok=True)
                arrays = {"names": np.array(list(moments), dtype=np.str_)}
                for i, (m, v) in enumerate(moments.values()):
                    arrays[f"m{i}"], arrays[f"v{i}"] = m, v
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
                np.savez(tmp, **arrays)
                tmp.replace(path)
                self._layer_moments = moments
        return self._layer_moments


def _coral_allowed(ctx: _Context) -> str | None:
    """Why CORAL is refused, or None. Below 2 D target images the target correlation matrix
    is mostly estimation noise (D = 1280 for Lite0): with its data-estimated shrinkage CORAL
    scored 60.3 % on the shifted hymenoptera camera (245 images) against 75.8 % for the
    per-dimension map, and 36.4 % against 53.5 % on the digits (400 images); no fixed
    intensity from 0.3 to 0.9 beat the per-dimension map either (docs/benchmarks.md)."""
    dim, n = ctx.target_x.shape[1], len(ctx.target_x)
    if n < CORAL_IMAGES_PER_DIM * dim:
        return (f"coral needs at least {CORAL_IMAGES_PER_DIM * dim} target images ({CORAL_IMAGES_PER_DIM} per "
                f"embedding dimension, D = {dim}); {n} were given. Use --adapt align")
    return None


def _affine(ctx: _Context, method: str, full: align.AffineMap, strength: float, tolerance: float) -> _Candidate:
    amap = full.toward_identity(strength)
    w, b = align.fold(ctx.weight, ctx.bias, amap)
    cand = _Candidate(method, strength, w, b, ctx.loaded.backbone, dict(amap.info))
    cand.check = ctx.source_check(cand, ctx.check_x, tolerance)
    return cand


class _BatchNorm:
    """AdaBN candidates at several strengths from one estimation pass."""

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.module = copy.deepcopy(ctx.loaded.backbone)
        self.shift = adabn.adapt_batchnorm(self.module, ctx.target, ctx.loaded.preprocess, ctx.layer_moments())

    def candidate(self, strength: float, tolerance: float) -> _Candidate:
        ctx = self.ctx
        module = copy.deepcopy(self.module)
        self.shift.apply(module, strength)
        cand = _Candidate("adabn", strength, ctx.weight.astype(np.float32), ctx.bias.astype(np.float32), module,
                          {**self.shift.info, "strength": strength})
        cache = embedding_cache(module, ctx.loaded, ctx.cache_dir)
        check_x = cache.embed([p for p, _ in ctx.check_items], f"embedding {ctx.check_name} images (AdaBN)")
        cand.check = ctx.source_check(cand, check_x, tolerance)
        return cand

    def target_x(self, cand: _Candidate) -> np.ndarray:
        return embedding_cache(cand.backbone, self.ctx.loaded, self.ctx.cache_dir).embed(
            self.ctx.target, "embedding target images (AdaBN)")


def _build(ctx: _Context, method: str, strength: float, tolerance: float, bn: list) -> _Candidate:
    if method == "align":
        full = align.per_dimension(align.Moments.of(ctx.source_x), align.Moments.of(ctx.target_x))
        return _affine(ctx, "align", full, strength, tolerance)
    if method == "coral":
        return _affine(ctx, "coral", align.coral(ctx.source_x, ctx.target_x), strength, tolerance)
    if not bn:
        bn.append(_BatchNorm(ctx))
    return bn[0].candidate(strength, tolerance)


def _score(ctx: _Context, cand: _Candidate, bn: list) -> dict:
    x = bn[0].target_x(cand) if cand.method == "adabn" else ctx.target_x
    cand.scores = align.prediction_scores(cand.logits(x))
    return cand.scores


def _none(ctx: _Context, tolerance: float) -> _Candidate:
    cand = _Candidate("none", 0.0, ctx.weight.astype(np.float32), ctx.bias.astype(np.float32), ctx.loaded.backbone)
    cand.check = ctx.source_check(cand, ctx.check_x, tolerance)
    return cand


def _auto(ctx: _Context, tolerance: float, bn: list) -> tuple[_Candidate, dict]:
    methods = ["align", "adabn"] + ([] if _coral_allowed(ctx) else ["coral"])
    chosen = [_none(ctx, tolerance)]
    tried = []
    for method in methods:
        for strength in STRENGTHS:
            cand = _build(ctx, method, strength, tolerance, bn)
            tried.append({"method": method, "strength": strength, "drop_points": cand.check["drop_points"],
                          "passed": cand.check["passed"]})
            if cand.check["passed"]:
                chosen.append(cand)
                break
    for cand in chosen:
        _score(ctx, cand, bn)
    best = min(chosen, key=lambda c: c.scores["im_score"])
    return best, {"criterion": AUTO_CRITERION, "tried": tried, "candidates": [c.summary() for c in chosen],
                  "chosen": {"method": best.method, "strength": best.strength}}


def _write(out: Path, ctx: _Context, cand: _Candidate, metrics: dict) -> None:
    """Stage the run folder beside `out` and swap it in whole (as `edgetl finetune` does)."""
    loaded = ctx.loaded
    head = nn.Linear(cand.weight.shape[1], cand.weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.asarray(cand.weight, np.float32)))
        head.bias.copy_(torch.from_numpy(np.asarray(cand.bias, np.float32)))
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out.parent, out.name)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.run-", dir=out.parent))
    try:
        (stage / STAGE_MARK).touch()
        save_run(stage / "model.pt", spec=loaded.spec, labels=loaded.labels, preprocess=loaded.preprocess,
                 weights_origin=loaded.weights_origin, strategy=loaded.strategy,
                 dropout=float(loaded.model.dropout.p), backbone_state=cand.backbone.state_dict(), head=head)
        (stage / "labels.txt").write_text("\n".join(loaded.labels) + "\n", encoding="utf-8")
        curve = ctx.run_dir / "training_curve.png"
        if curve.is_file():  # the source run's training; adaptation trains nothing
            shutil.copyfile(curve, stage / "training_curve.png")
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (stage / STAGE_MARK).unlink()
        ordinary_permissions(stage)
        for path in stage.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(stage)
        check_run_destination(out)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise EdgetlError(f"strength must be a number above 0 and at most 1 (1: the full map), not {strength!r}")
    return float(strength)


def adapt_run(run: str | Path | Run, target_images: str | Path, method: str = "auto", out: str | Path | None = None,
              *, strength: float = 1.0, tolerance: float = SOURCE_TOLERANCE, cache_dir: str | Path | None = None,
              progress: ProgressCallback | None = None) -> Run:
    """Adapt a run to unlabeled field images and write the adapted run to `out`.

    Args:
        run: the source run folder (or a Run).
        target_images: a folder of unlabeled field images (searched recursively).
        method: align (per-dimension embedding statistics, folded into the head), coral (with
            correlations; needs 2 x embedding-width images), adabn (BatchNorm statistics) or
            auto (see the module docstring).
        out: the adapted run folder to write (new, empty, or an earlier run).
        strength: for align, coral, adabn: how far from the run (0) to the full adaptation (1)
            to go; auto chooses it.
        tolerance: points of source top-1 the adapted model may lose in the source check
            (recorded for every method; auto only considers candidates within it).
        cache_dir: the embedding cache (default: $EDGETL_CACHE or ~/.cache/edgetl).
        progress: called as progress(description, done, total) during long stages.

    Returns:
        The adapted Run; its metrics.json holds the clean validation metrics of the adapted
        model, the source run's `data` record, `adaptation` (method, strength, map, image
        counts, source check, target scores, auto's candidates) and `calibration_images`.

    Raises:
        EdgetlError: an unknown method, a bad strength or tolerance, a run without its data
            record or images, too few target images, an `out` that is not a run folder.
    """
    if method not in METHODS:
        raise EdgetlError(f"--adapt '{method}' is not one of {', '.join(METHODS)}")
    strength = _check_strength(strength)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 100:
        raise EdgetlError(f"tolerance must be a number of points from 0 to 100, not {tolerance!r}")
    if out is None:
        raise EdgetlError("pass out: the folder to write the adapted run to")
    run_dir = Path(run.path if isinstance(run, Run) else run)
    out = Path(out)
    out = out.resolve() if out.is_symlink() else out
    if out.resolve() == run_dir.resolve():
        raise EdgetlError(f"out '{out}' is the source run; write the adapted run to another folder")
    check_run_destination(out)
    started = time.perf_counter()
    with reporting(progress):
        ctx = _Context(run_dir, Path(target_images), cache_dir)
        bn: list = []
        auto = None
        if method == "auto":
            cand, auto = _auto(ctx, float(tolerance), bn)
        else:
            if method == "coral" and _coral_allowed(ctx):
                raise EdgetlError(_coral_allowed(ctx))
            cand = _build(ctx, method, strength, float(tolerance), bn)
            _score(ctx, cand, bn)
            if not cand.check["passed"]:
                log.warning("adapt %s: the adapted model loses %.1f points on %d source images (%s; tolerance %g); "
                            "it is specialised to the target images. A lower --strength, or --adapt auto, keeps more "
                            "of the source accuracy", method, cand.check["drop_points"], cand.check["n"],
                            cand.check["split"], tolerance)
        source_scores = align.prediction_scores(ctx.target_x @ ctx.weight.T + ctx.bias)
        # Scored once, after every decision: the reported metrics, on the run's validation split.
        val_paths = [p for p, _ in ctx.split.val]
        val_cache = embedding_cache(cand.backbone, ctx.loaded, cache_dir)
        val_x = val_cache.embed(val_paths, "embedding val images")
        val_y = [y for _, y in ctx.split.val]
        metrics = classification_metrics(val_y, cand.logits(val_x).argmax(1), list(ctx.loaded.labels))
    source_metrics = ctx.metrics
    adaptation = {
        "method": cand.method,
        "requested": method,
        "strength": cand.strength,
        "source_run": str(run_dir.resolve()),
        "source_top1": source_metrics.get("top1"),
        "target_images": str(Path(target_images).resolve()),
        "n_target": len(ctx.target),
        "n_source": len(ctx.source_x),
        "source_statistics": f"embeddings of the run's {len(ctx.source_x)} training images",
        "map": cand.info,
        "source_check": cand.check,
        "target_scores": {"source_model": source_scores, "adapted": cand.scores},
        "reported_on": "val: the run's validation split (clean), scored once after every decision",
        "seconds": round(time.perf_counter() - started, 2),
    }
    if auto:
        adaptation["auto"] = auto
    merged = {k: v for k, v in source_metrics.items() if k not in metrics}
    merged.update(metrics)
    merged.update({"adaptation": adaptation,
                   # The INT8 calibration set of the adapted model is the field images: its
                   # activations are the ones the quantization ranges must cover.
                   "calibration_images": str(Path(target_images).resolve())})
    merged["data"] = source_metrics["data"]
    _write(out, ctx, cand, merged)
    log.info("adapted run written to '%s' (%s, strength %g): val top1 %.4f (source %.4f)", out, cand.method,
             cand.strength, metrics["top1"], source_metrics.get("top1") or float("nan"))
    return Run(out, merged, list(ctx.loaded.labels))
