"""`edgetl adapt RUN --target-images DIR --adapt align|coral|adabn|dann|selftrain|auto --out RUN2`.

Unsupervised adaptation of a run to field images (no labels): the adapted run is a normal
run folder (model.pt with the same keys, labels.txt, metrics.json), so `edgetl export`
builds its bundle unchanged: one backbone + one head.

  align   per-dimension alignment of the embedding statistics (edgetl.core.align), folded
          into the head; the backbone is untouched.
  coral   the same with correlations (CORAL, shrunk); needs n_target >= 2 D images.
  adabn   BatchNorm running statistics from the target images (edgetl.adapt.adabn,
          "anchored" to the source's per-layer statistics); the head is untouched.
  dann    domain-adversarial fine-tuning of the top (partial) or all (full) backbone stages
          and the head from the run's weights (edgetl.adapt.dann): source classification
          plus a gradient-reversed domain classifier on the embedding; early stopping on
          the selection split, and a stop when the domain classifier is at chance.
  selftrain  the head re-trained on the labelled training images plus the target images,
          pseudo-labelled by a teacher (align and adabn averaged); the backbone untouched, so
          the one head serves source-like and field images alike (edgetl.adapt.selftrain).
  auto    each method at the largest strength that passes the source check (dann, selftrain:
          their one model), plus no adaptation; the lowest information-maximisation score on
          the target images wins.

The source check (every method, recorded; auto's filter): the adapted model must lose at
most `tolerance` points of top-1 against the run on labelled *source* images of the
training side, the run's selection split (plus its training images when the selection
split has fewer than 100 images, where one image is more than a point). The validation
split is never looked at before the final, reported score.
"""

from __future__ import annotations

import copy
import functools
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
from edgetl.adapt.dann import DannConfig, train_dann
from edgetl.adapt.features import embedding_cache, run_record
from edgetl.adapt.features import target_images as target_images_of
from edgetl.adapt.methods import METHODS, ONE_MODEL
from edgetl.adapt.selftrain import teacher_probabilities, train_student
from edgetl.api import Run
from edgetl.core.fsutil import STAGE_MARK, clean_stale_staging, staged_replace
from edgetl.core import align
from edgetl.core.metrics import classification_metrics
from edgetl.core.progress import ProgressCallback, reporting
from edgetl.data import carve_selection, split_from_record
from edgetl.errors import EdgetlError
from edgetl.model import load_run, save_run
from edgetl.transfer.features import default_cache_dir
from edgetl.transfer.pretrained import state_digest
from edgetl.transfer.run import check_run_destination

log = logging.getLogger("edgetl")


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
                  "that passes (dann, selftrain: their one trained model), and no adaptation")


@dataclass
class _Candidate:
    method: str  # align | coral | adabn | dann | selftrain | none
    strength: float
    weight: np.ndarray
    bias: np.ndarray
    backbone: nn.Module  # the run's own module unless adabn or dann
    info: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # dann, selftrain: history, stop rule, options

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def summary(self) -> dict:
        out = {"method": self.method, "strength": self.strength, "source_check": self.check,
               "target_scores": self.scores}
        if self.training:
            out["stopped"] = self.training["stopped"]
        return out


class _Context:
    """Everything the candidates share: the run, its images and their embeddings."""

    def __init__(self, run_dir: Path, target_dir: Path, cache_dir):
        self.run_dir = run_dir
        self.metrics = run_record(run_dir)
        self.loaded = load_run(run_dir)
        if self.loaded.tasks:  # the adapted run would silently lose or mis-pair them
            raise EdgetlError(f"'{run_dir}' has extra task heads ({', '.join(self.loaded.tasks)}); adaptation changes the "
                              "primary task only and would drop them. Adapt a run fine-tuned without --task, or adapt "
                              "on the device: `edgetl-device adapt BUNDLE DIR --task NAME`")
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
        self.target = target_images_of(target_dir)
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

    def embed(self, backbone: nn.Module, paths: list, what: str) -> np.ndarray:
        """Embeddings of `paths` by `backbone`: the run's, or an adapted copy (its own cache key)."""
        return embedding_cache(backbone, self.loaded, self.cache_dir).embed(paths, f"embedding {what}")

    @functools.cached_property
    def align_map(self) -> align.AffineMap:
        """Per-dimension alignment of the target embeddings to the source's (full strength)."""
        return align.per_dimension(align.Moments.of(self.source_x), align.Moments.of(self.target_x))

    def check_embeddings(self, backbone: nn.Module) -> np.ndarray:
        return self.embed(backbone, [p for p, _ in self.check_items], f"{self.check_name} images (adapted backbone)")

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

    def module_at(self, strength: float) -> nn.Module:
        """A copy of the backbone with the BatchNorm statistics `strength` of the way to the target's."""
        module = copy.deepcopy(self.module)
        self.shift.apply(module, strength)
        return module

    def candidate(self, strength: float, tolerance: float) -> _Candidate:
        ctx = self.ctx
        module = self.module_at(strength)
        cand = _Candidate("adabn", strength, ctx.weight.astype(np.float32), ctx.bias.astype(np.float32), module,
                          {**self.shift.info, "strength": strength})
        cand.check = ctx.source_check(cand, ctx.check_embeddings(module), tolerance)
        return cand


def _dann(ctx: _Context, cfg: DannConfig, tolerance: float) -> _Candidate:
    """Train DANN on the run's training images and the target images; early stopping on the
    split the source check uses first (the selection split, or a held-out training slice)."""
    split_name = "selection" if ctx.check_name.startswith("selection") else "held-out training slice"
    result = train_dann(ctx.loaded.model, ctx.loaded.preprocess, list(ctx.split.train), list(ctx.split.selection),
                        ctx.target, cfg, split=split_name)
    head = result.model.head
    cand = _Candidate("dann", 1.0, head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy(),
                      result.model.backbone, {}, training={**result.info, "stopped": result.stopped,
                                                           "history": result.history})
    cand.check = ctx.source_check(cand, ctx.check_embeddings(result.model.backbone), tolerance)
    if ctx.check_name.endswith("+ train"):  # the training images are DANN's own: say so where it is read
        cand.check["note"] = "dann trained on the training images in this check; the selection part is held out"
    return cand


def _selftrain(ctx: _Context, tolerance: float, bn: list) -> _Candidate:
    """The student head: trained on the training images (labels) and the target images (the
    teacher's labels), early-stopped on the selection split; the run's backbone unchanged."""
    if not bn:
        bn.append(_BatchNorm(ctx))
    w_align, b_align = align.fold(ctx.weight, ctx.bias, ctx.align_map)
    probs = teacher_probabilities({"align": ctx.target_x @ w_align.T + b_align,
                                   "adabn": ctx.embed(bn[0].module_at(1.0), ctx.target, "target images (adabn teacher)")
                                   @ ctx.weight.T + ctx.bias})
    # The check items start with the selection split (then, when it is small, the training images).
    n_sel = len(ctx.split.selection) or len(ctx.check_items)
    student = train_student(ctx.weight, ctx.bias, ctx.source_x, np.array([y for _, y in ctx.split.train]),
                            ctx.align_map.inverse().apply(ctx.source_x), ctx.target_x, probs,
                            ctx.check_x[:n_sel], ctx.check_y[:n_sel], ctx.metrics, float(ctx.loaded.model.dropout.p))
    cand = _Candidate("selftrain", 1.0, student.weight, student.bias, ctx.loaded.backbone, student.info,
                      training={"history": student.history, "stopped": student.stopped})
    cand.check = ctx.source_check(cand, ctx.check_x, tolerance)
    if ctx.check_name.endswith("+ train"):
        cand.check["note"] = "selftrain trained on the training images in this check; the selection part is held out"
    return cand


def _build(ctx: _Context, method: str, strength: float, tolerance: float, bn: list,
           dann: DannConfig | None = None) -> _Candidate:
    if method == "dann":
        return _dann(ctx, dann, tolerance)
    if method == "selftrain":
        return _selftrain(ctx, tolerance, bn)
    if method == "align":
        return _affine(ctx, "align", ctx.align_map, strength, tolerance)
    if method == "coral":
        return _affine(ctx, "coral", align.coral(ctx.source_x, ctx.target_x), strength, tolerance)
    if not bn:
        bn.append(_BatchNorm(ctx))
    return bn[0].candidate(strength, tolerance)


def _score(ctx: _Context, cand: _Candidate) -> dict:
    x = ctx.target_x if cand.backbone is ctx.loaded.backbone else ctx.embed(cand.backbone, ctx.target,
                                                                             f"target images ({cand.method})")
    cand.scores = align.prediction_scores(cand.logits(x))
    return cand.scores


def _none(ctx: _Context, tolerance: float) -> _Candidate:
    cand = _Candidate("none", 0.0, ctx.weight.astype(np.float32), ctx.bias.astype(np.float32), ctx.loaded.backbone)
    cand.check = ctx.source_check(cand, ctx.check_x, tolerance)
    return cand


def _auto(ctx: _Context, tolerance: float, bn: list, dann: DannConfig | None) -> tuple[_Candidate, dict]:
    methods = ["selftrain", "align", "adabn", "dann"] + ([] if _coral_allowed(ctx) else ["coral"])
    chosen = [_none(ctx, tolerance)]
    tried = []
    for method in methods:
        for strength in STRENGTHS if method not in ONE_MODEL else (1.0,):
            cand = _build(ctx, method, strength, tolerance, bn, dann)
            tried.append({"method": method, "strength": strength, "drop_points": cand.check["drop_points"],
                          "passed": cand.check["passed"]})
            if cand.check["passed"]:
                chosen.append(cand)
                break
    for cand in chosen:
        _score(ctx, cand)
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
    with staged_replace(out, before_swap=lambda: check_run_destination(out)) as stage:
        save_run(stage / "model.pt", spec=loaded.spec, labels=loaded.labels, preprocess=loaded.preprocess,
                 weights_origin=loaded.weights_origin, strategy=loaded.strategy,
                 dropout=float(loaded.model.dropout.p), backbone_state=cand.backbone.state_dict(), head=head)
        (stage / "labels.txt").write_text("\n".join(loaded.labels) + "\n", encoding="utf-8")
        curve = ctx.run_dir / "training_curve.png"
        if curve.is_file():  # the source run's training; adaptation trains nothing
            shutil.copyfile(curve, stage / "training_curve.png")
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise EdgetlError(f"strength must be a number above 0 and at most 1 (1: the full map), not {strength!r}")
    return float(strength)


def _check_request(method: str, strength, tolerance, dann: dict | None) -> float:
    """Refuse a bad method, strength, tolerance or DANN option before any slow step; the strength."""
    if method not in METHODS:
        raise EdgetlError(f"--adapt '{method}' is not one of {', '.join(METHODS)}")
    strength = _check_strength(strength)
    if method in ONE_MODEL and strength != 1.0:
        raise EdgetlError(f"strength applies to align, coral and adabn; {method}'s extent is set by its training "
                          "(its epochs and stop rules). Leave strength at 1")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 100:
        raise EdgetlError(f"tolerance must be a number of points from 0 to 100, not {tolerance!r}")
    unknown = sorted(set(dann or {}) - set(DannConfig.__dataclass_fields__))
    if unknown:
        raise EdgetlError(f"dann has no option {', '.join(map(repr, unknown))}; its options are: "
                          f"{', '.join(DannConfig.__dataclass_fields__)}")
    return strength


def _destination(out: str | Path | None) -> Path:
    if out is None:
        raise EdgetlError("pass out: the folder to write the adapted run to")
    out = Path(out)
    out = out.resolve() if out.is_symlink() else out  # replace the folder a link points to, keep the link
    check_run_destination(out)
    return out


def adapt_run(run: str | Path | Run, target_images: str | Path, method: str = "auto", out: str | Path | None = None,
              *, strength: float = 1.0, tolerance: float = SOURCE_TOLERANCE, cache_dir: str | Path | None = None,
              dann: dict | None = None, progress: ProgressCallback | None = None) -> Run:
    """Adapt a run to unlabeled field images and write the adapted run to `out`.

    Args:
        run: the source run folder (or a Run).
        target_images: a folder of unlabeled field images (searched recursively).
        method: align (per-dimension embedding statistics, folded into the head), coral (with
            correlations; needs 2 x embedding-width images), adabn (BatchNorm statistics), dann
            (domain-adversarial fine-tuning), selftrain (the head re-trained on source labels and
            the target images' pseudo-labels) or auto (see the module docstring).
        out: the adapted run folder to write (new, empty, or an earlier run).
        strength: for align, coral, adabn: how far from the run (0) to the full adaptation (1)
            to go; auto chooses it; dann and selftrain take none (1).
        tolerance: points of source top-1 the adapted model may lose in the source check
            (recorded for every method; auto only considers candidates within it).
        cache_dir: the embedding cache (default: $EDGETL_CACHE or ~/.cache/edgetl).
        dann: dann's (and auto's dann candidate's) options, fields of
            `edgetl.adapt.dann.DannConfig` (strategy, unfreeze, epochs, patience, lr, batch_size,
            augment, seed); unset ones come from the run's finetune options (`DannConfig.for_run`).
        progress: called as progress(description, done, total) during long stages.

    Returns:
        The adapted Run; its metrics.json holds the clean validation metrics of the adapted
        model, the source run's `data` record, `adaptation` (method, strength, map, image
        counts, source check, target scores, dann's `training`, auto's candidates) and
        `calibration_images`.

    Raises:
        EdgetlError: an unknown method or dann option, a bad strength or tolerance, a run
            without its data record or images, too few target images, an `out` that is not a
            run folder.
    """
    strength = _check_request(method, strength, tolerance, dann)
    run_dir = Path(run.path if isinstance(run, Run) else run)
    out = _destination(out)
    if out.resolve() == run_dir.resolve():
        raise EdgetlError(f"out '{out}' is the source run; write the adapted run to another folder")
    with reporting(progress):
        return _adapt(run_dir, Path(target_images), method, out, strength, float(tolerance), cache_dir, dann,
                      source_run=str(run_dir.resolve()))


UNADAPTED_KEYS = ("top1", "balanced_accuracy", "n", "per_class", "confusion")  # recorded under `unadapted`


def finetune_adapted(data: str | Path, out: str | Path, cfg, target_images: str | Path, method: str = "auto", *,
                     tolerance: float = SOURCE_TOLERANCE, dann: dict | None = None) -> Run:
    """`edgetl finetune DATA --target-images DIR --adapt METHOD`: fine-tune, then adapt, one run.

    The fine-tuned run is written to a staging folder beside `out` (removed afterwards) and
    adapted exactly as `adapt_run` would (same code, same options: the test checks that the
    two routes give the same model). `out` receives only the adapted run; its metrics.json
    keeps the fine-tune's record (config, history, selection) and adds `unadapted`: the
    fine-tuned model's validation metrics before adaptation.

    Args:
        data: the finetune data folder.
        out: the adapted run folder to write.
        cfg: an `edgetl.transfer.FinetuneConfig`.
        target_images: a folder of unlabeled field images.
        method: as `adapt_run` (at full strength; auto chooses its own).
        tolerance: as `adapt_run`.
        dann: as `adapt_run`; unset options come from `cfg`.

    Returns:
        The adapted Run.

    Raises:
        EdgetlError: as `edgetl.finetune` and `adapt_run`, before any training where it can.
    """
    from edgetl.transfer.run import finetune as run_finetune

    _check_request(method, 1.0, tolerance, dann)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would adapt and write `out`
        raise EdgetlError("--target-images runs in one process, not under torchrun: fine-tune under torchrun, then "
                          "run `edgetl adapt RUN --target-images DIR --adapt METHOD --out RUN2`")
    out = _destination(out)
    target_dir = Path(target_images)
    target_images_of(target_dir)  # too few or no images: refused now, not after the training
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out.parent, out.name)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.unadapted-", dir=out.parent))
    try:
        (stage / STAGE_MARK).touch()  # a killed command leaves it for the next writer to delete
        run_dir = stage / "run"
        source = run_finetune(data, run_dir, cfg)
        adapted = _adapt(run_dir, target_dir, method, out, 1.0, float(tolerance), cfg.cache_dir, dann,
                         source_run=None, unadapted={k: source[k] for k in UNADAPTED_KEYS if k in source})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return adapted


def _adapt(run_dir: Path, target_dir: Path, method: str, out: Path, strength: float, tolerance: float, cache_dir,
           dann: dict | None, source_run: str | None, unadapted: dict | None = None) -> Run:
    """The adaptation itself, arguments checked: decide on source/target images, score val once, write."""
    started = time.perf_counter()
    ctx = _Context(run_dir, target_dir, cache_dir)
    dann_cfg = DannConfig.for_run(ctx.metrics, **(dann or {})) if method in ("dann", "auto") else None
    bn: list = []
    auto = None
    if method == "auto":
        cand, auto = _auto(ctx, tolerance, bn, dann_cfg)
    else:
        if method == "coral" and _coral_allowed(ctx):
            raise EdgetlError(_coral_allowed(ctx))
        cand = _build(ctx, method, strength, tolerance, bn, dann_cfg)
        _score(ctx, cand)
        if not cand.check["passed"]:
            log.warning("adapt %s: the adapted model loses %.1f points on %d source images (%s; tolerance %g); "
                        "it is specialised to the target images. A lower --strength, or --adapt auto, keeps more "
                        "of the source accuracy", method, cand.check["drop_points"], cand.check["n"],
                        cand.check["split"], tolerance)
    source_scores = align.prediction_scores(ctx.target_x @ ctx.weight.T + ctx.bias)
    # Scored once, after every decision: the reported metrics, on the run's validation split.
    val_x = ctx.embed(cand.backbone, [p for p, _ in ctx.split.val], "val images")
    val_y = [y for _, y in ctx.split.val]
    metrics = classification_metrics(val_y, cand.logits(val_x).argmax(1), list(ctx.loaded.labels))
    source_metrics = ctx.metrics
    adaptation = {
        "method": cand.method,
        "requested": method,
        "strength": cand.strength,
        "source_run": source_run if source_run else "fine-tuned by this command: its figures are under `unadapted`",
        "source_top1": source_metrics.get("top1"),
        "target_images": str(target_dir.resolve()),
        "n_target": len(ctx.target),
        "n_source": len(ctx.source_x),
        "source_statistics": f"embeddings of the run's {len(ctx.source_x)} training images",
        "map": cand.info,
        "source_check": cand.check,
        "target_scores": {"source_model": source_scores, "adapted": cand.scores},
        "reported_on": "val: the run's validation split (clean), scored once after every decision",
        "seconds": round(time.perf_counter() - started, 2),
    }
    if cand.training:
        adaptation["training"] = cand.training
    if auto:
        adaptation["auto"] = auto
    merged = {k: v for k, v in source_metrics.items() if k not in metrics}
    merged.update(metrics)
    if unadapted is not None:
        merged["unadapted"] = {**unadapted, "about": "the fine-tuned model before adaptation, same validation split"}
    merged.update({"adaptation": adaptation,
                   # The INT8 calibration set of the adapted model is the field images: its
                   # activations are the ones the quantization ranges must cover (edgetl export
                   # reads this when no calibration folder is given).
                   "calibration_images": str(target_dir.resolve())})
    merged["data"] = source_metrics["data"]
    _write(out, ctx, cand, merged)
    log.info("adapted run written to '%s' (%s, strength %g): val top1 %.4f (source %.4f)", out, cand.method,
             cand.strength, metrics["top1"], source_metrics.get("top1") or float("nan"))
    return Run(out, merged, list(ctx.loaded.labels))
