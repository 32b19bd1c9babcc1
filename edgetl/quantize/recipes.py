"""Calibration recipes as data: `calibration/<name>.yaml` -> frozen `CalibrationRecipe`.

A recipe says how many images to calibrate on, how to pick them (stratified by class,
seeded, so two exports of the same run calibrate on the same images) and which range
estimator the quantizer should use. Each backend supports a subset of methods and refuses
the rest via `require_method`, rather than silently substituting another.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from edgetl.yamlcfg import ConfigError, load_config

CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration"

Method = Literal["minmax", "percentile", "entropy", "moving_average", "histogram"]


@dataclass(frozen=True)
class CalibrationRecipe:
    name: str
    description: str
    samples: int
    method: Method
    selection: Literal["stratified"] = "stratified"
    seed: int = 0
    percentile: float | None = None  # only for method 'percentile', e.g. 99.99
    per_channel_weights: bool = True
    symmetric_activations: bool = False
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "path" and getattr(self, k) is not None}


def _validate(r: CalibrationRecipe, path: Path) -> None:
    def bad(key: str, why: str):
        raise ConfigError(f"'{path}': key '{key}' {why}")

    if r.name != path.stem:
        bad("name", f"is '{r.name}' but the file is '{path.name}'; make them equal")
    if r.samples < 1:
        bad("samples", f"must be at least 1, got {r.samples}")
    if r.method == "percentile":
        if r.percentile is None or not 50 < r.percentile <= 100:
            bad("percentile", f"must be a number in (50, 100] for method 'percentile', got {r.percentile!r}")
    elif r.percentile is not None:
        bad("percentile", f"is only used by method 'percentile', and this recipe's method is '{r.method}'; remove it")


def load_recipe(name_or_path: str | Path) -> CalibrationRecipe:
    """A recipe by name (calibration/<name>.yaml) or by path to a YAML file."""
    return load_config(CalibrationRecipe, name_or_path, CALIBRATION_DIR, "calibration recipe", _validate)


def list_recipes() -> list[CalibrationRecipe]:
    return [load_recipe(p) for p in sorted(CALIBRATION_DIR.glob("*.yaml"))]


def require_method(recipe: CalibrationRecipe, supported: Sequence[str], backend: str) -> None:
    """Refuse a recipe whose method `backend` cannot apply, naming recipes that would work."""
    if recipe.method in supported:
        return
    fits = [r.name for r in list_recipes() if r.method in supported]
    raise ConfigError(f"calibration recipe '{recipe.name}' uses method '{recipe.method}', which {backend} does not "
                      f"support (it supports {', '.join(supported)}); pass calib_recipe (--calib-recipe) "
                      f"{' or '.join(fits) if fits else 'with one of those methods'}")


def select_calibration_images(paths: Sequence, labels: Sequence, recipe: CalibrationRecipe) -> list:
    """The recipe's `samples` items of `paths`, stratified by label, seeded by its `seed`."""
    return select_stratified(paths, labels, recipe.samples, recipe.seed)


def select_stratified(paths: Sequence, labels: Sequence, samples: int, seed: int) -> list:
    """`samples` items of `paths`, stratified by label and seeded.

    Each class gets a share proportional to its size (largest remainder, at least one image
    per class when the budget allows), so a rare class still shapes the activation ranges.
    The result is shuffled with the same seed so a streaming range estimator (moving
    average) never sees one class at a time.
    """
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    if samples >= len(paths):
        order = rng.permutation(len(paths))
        return [paths[i] for i in order]
    by_class: dict = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    classes = sorted(by_class, key=str)
    sizes = np.array([len(by_class[c]) for c in classes], dtype=np.float64)
    quota = sizes / sizes.sum() * samples
    take = np.floor(quota).astype(int)
    if samples >= len(classes):
        take = np.maximum(take, 1)
    remainder_order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for k in remainder_order:
        if take.sum() >= samples:
            break
        if take[k] < sizes[k]:
            take[k] += 1
    while take.sum() > samples:  # the at-least-one rule can overshoot: trim the largest share
        take[int(np.argmax(take))] -= 1
    chosen = []
    for c, n in zip(classes, take):
        members = np.array(by_class[c])
        chosen.extend(rng.choice(members, size=int(n), replace=False).tolist())
    chosen = np.array(chosen)[rng.permutation(len(chosen))]
    return [paths[i] for i in chosen]
