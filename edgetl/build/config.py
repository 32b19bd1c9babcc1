"""`edgetl.yaml`, the project file of `edgetl build`: read, validated, frozen (host side, no torch).

Every mistake comes back as one ConfigError naming the file and the key path
(`targets.rpi5.precision`, `candidates[1].input_size`), because the person editing the
file in CI is rarely the person who wrote this code.

    data: images/                        # or {path: images/, val_split: 0.2, seed: 0}
    candidates:                          # a backbone name, NAME@SIZE, or a mapping of finetune options
      - tf_efficientnet_lite0
      - {backbone: tf_efficientnet_lite0, input_size: 288}
    finetune: {strategy: linear}         # any FinetuneConfig field, for every candidate
    targets:                             # a target name or a path to a target YAML
      rpi5: {precision: int8, latency_budget_ms: 40}
      jetson-orin-nano: {precision: int8, calib_recipe: minmax}
    gates: {max_drop_pts: 1.0, min_top1: 0.9}
    benchmark: {runs: 50, warmup: 10}
    keep_top: 2
    adapt: {target_images: field/, method: selftrain}   # every candidate adapted to field images
    tasks: {parity: parity.csv, hand: {labels: by-hand/, weight: 0.5}}   # extra heads on the backbone
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.yamlcfg import ConfigError, _coerce, read_mapping

TOP_KEYS = ("data", "candidates", "finetune", "targets", "gates", "benchmark", "keep_top", "adapt", "tasks")
ADAPT_KEYS = ("target_images", "method")
TASK_KEYS = ("labels", "weight")
DATA_KEYS = ("path", "val_split", "seed")
GATE_KEYS = ("max_drop_pts", "min_top1")
# Per-target keys that are build gates, not export options: changing them re-gates the
# exported bundles without exporting again.
TARGET_GATE_KEYS = ("latency_budget_ms", "accuracy_tolerance_pts", "min_top1")
BENCHMARK_KEYS = ("runs", "warmup")
# Host latency runs: 10 warm-up runs reach the steady state of LiteRT/XNNPACK and
# onnxruntime (their first 2-3 runs pack weights and allocate arenas); 50 timed
# single-image runs keep a p90 from resting on fewer than 5 samples, for about a second
# per bundle (Lite0 INT8: ~15 ms an image on this 2-vCPU host).
DEFAULT_RUNS, DEFAULT_WARMUP = 50, 10
# Finetune options that say where to cache, not what to train: not part of a stage key.
NOT_IN_KEY = ("cache_dir",)


@dataclass(frozen=True)
class Limit:
    """One gate's limit and where it came from (named in failure messages)."""

    value: float | None
    source: str  # e.g. "edgetl.yaml: targets.rpi5.latency_budget_ms" or "targets/rpi5.yaml: latency_budget_ms"


@dataclass(frozen=True)
class Candidate:
    """One model to fine-tune: a name (unique in the project) and its FinetuneConfig options."""

    name: str
    finetune: dict  # FinetuneConfig keyword arguments, the project's `finetune:` merged under the candidate's

    @property
    def backbone(self) -> str:
        return self.finetune.get("backbone", "tf_efficientnet_lite0")

    @property
    def input_size(self) -> int | None:
        return self.finetune.get("input_size")


@dataclass(frozen=True)
class TargetSpec:
    """One target of the project: the target YAML plus the project's overrides."""

    key: str  # as written under `targets:` (a name or a path)
    name: str  # the target's own name: dist/<name>/
    yaml_path: Path  # the target YAML file
    export: dict  # ExportConfig keyword arguments (precision resolved to a value)
    latency_budget_ms: Limit
    max_drop_pts: Limit
    min_top1: Limit

    @property
    def precision(self) -> str:
        return self.export["precision"]


@dataclass(frozen=True)
class AdaptSpec:
    """`adapt:`: every candidate is fine-tuned, then adapted to these unlabeled field images
    (`edgetl finetune --target-images DIR --adapt METHOD`); its exports calibrate on them."""

    target_images: Path
    method: str = "auto"


@dataclass(frozen=True)
class TaskEntry:
    """`tasks.NAME`: an extra task's labels (a `file,label` CSV or a folder layout of the same
    images, as `edgetl finetune --task`) and loss weight; `default` carries only a weight."""

    name: str
    labels: Path | None
    weight: float = 1.0


@dataclass(frozen=True)
class Project:
    """A validated edgetl.yaml."""

    path: Path
    data: Path
    candidates: tuple[Candidate, ...]
    targets: tuple[TargetSpec, ...]
    keep_top: int | None = None
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    adapt: AdaptSpec | None = None
    tasks: tuple[TaskEntry, ...] = ()
    raw: dict = field(default_factory=dict, compare=False)  # the file as read, for the summary


def _where(path: Path, key: str) -> str:
    return f"'{path}': key '{key}'"


def _mapping(value, path: Path, key: str, example: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(path, key)} must be a mapping, e.g. `{example}`; got {value!r}")
    return value


def _refuse_unknown(data: dict, allowed, path: Path, key: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        at = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(f"'{path}': unknown key '{at}'; allowed keys{' under ' + repr(key) if key else ''}: "
                          f"{', '.join(allowed)}")


def _relative(path: Path, value: str) -> str:
    """A path written in the project file, relative to the file (absolute paths stay)."""
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else (path.parent / p))


def parse_options(cls, data: dict, path: Path, key: str, skip: tuple[str, ...] = ()) -> dict:
    """Validated keyword arguments for config dataclass `cls` (FinetuneConfig, ExportConfig).

    Types come from the field annotations, ranges and choices from the `opt()` metadata the
    CLI options are generated from, so the file accepts exactly what the command line does.

    Args:
        cls: the dataclass.
        data: the mapping read from the file.
        path: the file, named in errors.
        key: the key path of `data` in the file (`finetune`, `candidates[1]`, `targets.rpi5`).
        skip: keys the caller handles itself.

    Returns:
        The options, coerced (ints, floats, bools, strings).

    Raises:
        ConfigError: an unknown key, a wrong type, a value out of range or not among the choices.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for name, value in data.items():
        if name in skip:
            continue
        at = f"{key}.{name}" if key else name
        if name not in fields:
            allowed = [n for n in fields if n not in skip]
            raise ConfigError(f"'{path}': unknown key '{at}'; {cls.__name__} options are: {', '.join(allowed)}")
        value = _coerce(value, hints[name], path, at)
        meta = fields[name].metadata
        if value is not None and meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{_where(path, at)} is {value!r}; choose one of: {', '.join(meta['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("lo"), meta.get("hi")
            if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ConfigError(f"{_where(path, at)} is {value!r}; it must be a number from {lo:g} to {hi:g}")
        out[name] = value
    return out


def _number(value, path: Path, key: str, lo: float | None = None, hi: float | None = None,
            positive: bool = False, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_where(path, key)} must be a {'whole ' if integer else ''}number, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{_where(path, key)} must be a whole number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{_where(path, key)} must be greater than 0, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{_where(path, key)} must be from {lo:g} to {hi:g}, got {value!r}")
    return value


def _min_top1(value, path: Path, key: str) -> float:
    value = _number(value, path, key)
    if not 0 <= value <= 1:
        raise ConfigError(f"{_where(path, key)} is {value!r}; it is a fraction of images from 0 to 1 "
                          f"(0.9 = 90 %), like every accuracy edgetl reports")
    return float(value)


# -- sections ---------------------------------------------------------------------------------
def _data(raw: dict, path: Path) -> tuple[Path, dict]:
    if "data" not in raw:
        raise ConfigError(f"'{path}': required key 'data' is missing; write the image folder, relative to the "
                          "file: `data: images/` (train/ + val/, or one folder per class)")
    value, split = raw["data"], {}
    if isinstance(value, dict):
        _refuse_unknown(value, DATA_KEYS, path, "data")
        if "path" not in value:
            raise ConfigError(f"'{path}': required key 'data.path' is missing; write `data: {{path: images/}}`")
        split = {k: value[k] for k in ("val_split", "seed") if k in value}
        value = value["path"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_where(path, 'data')} must be the image folder (relative to the file), got {value!r}")
    folder = Path(_relative(path, value))
    if not folder.is_dir():
        raise ConfigError(f"{_where(path, 'data')} is '{value}', which is not a folder ('{folder}'); write the "
                          "image folder relative to the project file")
    return folder, split


def _candidates(raw: dict, path: Path, common: dict) -> tuple[Candidate, ...]:
    from edgetl.backbones import BACKBONES
    from edgetl.transfer.config import FinetuneConfig

    entries = raw.get("candidates")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{_where(path, 'candidates')} must be a non-empty list of backbones, e.g. "
                          "`candidates: [tf_efficientnet_lite0, {backbone: tf_efficientnet_lite0, input_size: 288}]`")
    out, seen = [], {}
    for i, entry in enumerate(entries):
        key = f"candidates[{i}]"
        if isinstance(entry, str):
            backbone, _, size = entry.partition("@")
            entry = {"backbone": backbone}
            if size:
                if not size.isdigit():
                    raise ConfigError(f"{_where(path, key)} is '{backbone}@{size}'; write NAME or NAME@SIZE "
                                      "(e.g. tf_efficientnet_lite0@288)")
                entry["input_size"] = int(size)
        elif not isinstance(entry, dict):
            raise ConfigError(f"{_where(path, key)} is {entry!r}; write a backbone name or a mapping "
                              "`{backbone: NAME, input_size: N, ...finetune options}`")
        name = entry.get("name")
        options = parse_options(FinetuneConfig, {k: v for k, v in entry.items() if k != "name"}, path, key)
        merged = {**common, **options}
        backbone = merged.get("backbone", FinetuneConfig.backbone)
        if backbone not in BACKBONES:
            at = f"{key}.backbone" if "backbone" in options else "finetune.backbone"
            raise ConfigError(f"{_where(path, at)} is '{backbone}', not a registered backbone; choose one of: "
                              f"{', '.join(BACKBONES)}")
        merged["backbone"] = backbone
        if isinstance(merged.get("weights"), str) and merged["weights"] not in ("default", "timm", "none"):
            merged["weights"] = _relative(path, merged["weights"])
            if not Path(merged["weights"]).is_file():
                raise ConfigError(f"{_where(path, key + '.weights')} is '{entry.get('weights')}', which is not a "
                                  "file; write default, timm, none or a state-dict path relative to the project file")
        if name is None:
            name = backbone + (f"@{merged['input_size']}" if merged.get("input_size") else "")
        elif not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
            raise ConfigError(f"{_where(path, key + '.name')} must be a folder-safe name (no '/', not starting "
                              f"with '.'), got {name!r}")
        if name in seen:
            raise ConfigError(f"{_where(path, key)} is named '{name}' like candidates[{seen[name]}]; give one of "
                              "them a distinct `name:`")
        seen[name] = i
        out.append(Candidate(name, merged))
    return tuple(out)


def _gates(raw: dict, path: Path) -> dict:
    gates = _mapping(raw.get("gates"), path, "gates", "gates: {max_drop_pts: 1.0, min_top1: 0.9}")
    _refuse_unknown(gates, GATE_KEYS, path, "gates")
    out = {}
    if gates.get("max_drop_pts") is not None:
        # Negative is allowed: "the quantized model must beat FP32 by N points".
        out["max_drop_pts"] = float(_number(gates["max_drop_pts"], path, "gates.max_drop_pts", -100, 100))
    if gates.get("min_top1") is not None:
        out["min_top1"] = _min_top1(gates["min_top1"], path, "gates.min_top1")
    return out


def _targets(raw: dict, path: Path, gates: dict) -> tuple[TargetSpec, ...]:
    from edgetl.exporter import ExportConfig
    from edgetl.formats import format_for
    from edgetl.quantize.recipes import load_recipe
    from edgetl.targets import TARGETS_DIR, load_target

    entries = raw.get("targets")
    if not isinstance(entries, dict) or not entries:
        known = ", ".join(p.stem for p in sorted(TARGETS_DIR.glob("*.yaml")))
        raise ConfigError(f"{_where(path, 'targets')} must be a mapping of target names to options, e.g. "
                          f"`targets: {{rpi5: {{precision: int8}}}}`; targets: {known}")
    export_keys = [f.name for f in dataclasses.fields(ExportConfig)]
    out, names = [], {}
    for key, options in entries.items():
        at = f"targets.{key}"
        options = _mapping(options, path, at, "rpi5: {precision: int8}")
        written = str(key)
        ref = _relative(path, written) if written.endswith((".yaml", ".yml")) or "/" in written else written
        try:
            target = load_target(ref)
        except ConfigError as exc:
            raise ConfigError(f"{_where(path, at)}: {exc}") from None
        if target.name in names:
            raise ConfigError(f"{_where(path, at)} is target '{target.name}' again (as '{names[target.name]}'); "
                              "each target once")
        names[target.name] = written
        _refuse_unknown(options, (*export_keys, *TARGET_GATE_KEYS), path, at)
        export = parse_options(ExportConfig, {k: v for k, v in options.items() if k not in TARGET_GATE_KEYS},
                               path, at)
        precision = export.get("precision") or target.default_precision
        if precision not in target.precisions:
            raise ConfigError(f"{_where(path, at + '.precision')} is '{precision}', which target '{target.name}' "
                              f"({target.path}) does not allow; choose one of: {', '.join(target.precisions)}")
        why = format_for(target.runtime).refusal(target, precision)
        if why:
            raise ConfigError(f"{_where(path, at + '.precision')}: {why}")
        export["precision"] = precision
        for name in ("calib", "val"):
            if export.get(name):
                export[name] = _relative(path, export[name])
                if not Path(export[name]).is_dir():
                    raise ConfigError(f"{_where(path, f'{at}.{name}')} is '{options[name]}', which is not a folder "
                                      "(relative to the project file)")
        if export.get("calib_recipe"):
            recipe = export["calib_recipe"]
            if recipe.endswith((".yaml", ".yml")) or "/" in recipe:
                export["calib_recipe"] = recipe = _relative(path, recipe)
            try:
                load_recipe(recipe)
            except ConfigError as exc:
                raise ConfigError(f"{_where(path, at + '.calib_recipe')}: {exc}") from None

        tname = target.path.name if target.path else target.name
        budget = Limit(float(target.latency_budget_ms), f"{tname}: latency_budget_ms")
        if "latency_budget_ms" in options:
            budget = Limit(float(_number(options["latency_budget_ms"], path, f"{at}.latency_budget_ms",
                                         positive=True)), f"{path.name}: {at}.latency_budget_ms")
        drop = Limit(float(target.accuracy_tolerance_pts), f"{tname}: accuracy_tolerance_pts")
        if "max_drop_pts" in gates:
            drop = Limit(gates["max_drop_pts"], f"{path.name}: gates.max_drop_pts")
        if "accuracy_tolerance_pts" in options:
            drop = Limit(float(_number(options["accuracy_tolerance_pts"], path, f"{at}.accuracy_tolerance_pts",
                                       -100, 100)), f"{path.name}: {at}.accuracy_tolerance_pts")
        floor = Limit(gates.get("min_top1"), f"{path.name}: gates.min_top1")
        if "min_top1" in options:
            floor = Limit(_min_top1(options["min_top1"], path, f"{at}.min_top1"), f"{path.name}: {at}.min_top1")
        out.append(TargetSpec(written, target.name, Path(target.path), export, budget, drop, floor))
    return tuple(out)


def _benchmark(raw: dict, path: Path) -> tuple[int, int]:
    bench = _mapping(raw.get("benchmark"), path, "benchmark", "benchmark: {runs: 50, warmup: 10}")
    _refuse_unknown(bench, BENCHMARK_KEYS, path, "benchmark")
    runs = int(_number(bench.get("runs", DEFAULT_RUNS), path, "benchmark.runs", 1, 100000, integer=True))
    warmup = int(_number(bench.get("warmup", DEFAULT_WARMUP), path, "benchmark.warmup", 0, 100000, integer=True))
    return runs, warmup


def _existing_path(value, path: Path, key: str, what: str, folder: bool = False) -> Path:
    """A path written in the project file at `key`, resolved against the file; it must exist
    (and be a folder when `folder`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_where(path, key)} must be {what} (relative to the file), got {value!r}")
    where = Path(_relative(path, value))
    if not (where.is_dir() if folder else where.exists()):
        raise ConfigError(f"{_where(path, key)} is '{value}', which {'is not a folder' if folder else 'does not exist'} "
                          f"('{where}')")
    return where


def _adapt(raw: dict, path: Path) -> AdaptSpec | None:
    from edgetl.adapt.methods import METHODS

    if raw.get("adapt") is None:
        return None
    value = _mapping(raw["adapt"], path, "adapt", "adapt: {target_images: field/, method: selftrain}")
    _refuse_unknown(value, ADAPT_KEYS, path, "adapt")
    target = _existing_path(value.get("target_images"), path, "adapt.target_images",
                            "the folder of unlabeled field images", folder=True)
    method = value.get("method", "auto")
    if method not in METHODS:
        raise ConfigError(f"{_where(path, 'adapt.method')} is {method!r}; it is one of {', '.join(METHODS)}")
    return AdaptSpec(target, method)


def _tasks(raw: dict, path: Path) -> tuple[TaskEntry, ...]:
    from edgetl.bundle.manifest import DEFAULT_TASK, TASK_NAME

    value = _mapping(raw.get("tasks"), path, "tasks", "tasks: {parity: parity.csv}")
    out = []
    for name, spec in value.items():
        key = f"tasks.{name}"
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ConfigError(f"{_where(path, key)}: a task name is 1 to 64 letters, digits, '_', '-' or '.'")
        spec = {"labels": spec} if isinstance(spec, str) else _mapping(spec, path, key,
                                                                       f"{name}: {{labels: {name}.csv, weight: 1}}")
        _refuse_unknown(spec, TASK_KEYS, path, key)
        weight = float(_number(spec.get("weight", 1.0), path, f"{key}.weight", positive=True))
        if name == DEFAULT_TASK:
            if "labels" in spec:
                raise ConfigError(f"{_where(path, key + '.labels')}: the class folders are the default task's labels; "
                                  "give `default` only a weight")
            out.append(TaskEntry(name, None, weight))
            continue
        where = _existing_path(spec.get("labels"), path, f"{key}.labels",
                               "a CSV of `file,label` rows or a folder <label>/<image>")
        out.append(TaskEntry(name, where, weight))
    if out and not any(t.labels for t in out):
        raise ConfigError(f"{_where(path, 'tasks')} gives only the default task's weight; add an extra task")
    return tuple(out)


def load_project(path: str | Path) -> Project:
    """Read and validate an edgetl.yaml.

    Args:
        path: the project file; `data`, target YAML paths, weights, calib and recipe paths in
            it are relative to it.

    Returns:
        The Project.

    Raises:
        ConfigError: the file is unreadable or a key is unknown, missing or invalid; the message
            names the file and the key path (e.g. `targets.rpi5.precision`).
    """
    from edgetl.transfer.config import FinetuneConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"project file '{path}' does not exist; write an edgetl.yaml (README: edgetl build)")
    raw = read_mapping(path)
    _refuse_unknown(raw, TOP_KEYS, path, "")
    data, split = _data(raw, path)
    common_raw = _mapping(raw.get("finetune"), path, "finetune", "finetune: {strategy: linear}")
    common = parse_options(FinetuneConfig, common_raw, path, "finetune")
    for k, v in parse_options(FinetuneConfig, split, path, "data").items():
        if k in common and common[k] != v:
            raise ConfigError(f"'{path}': key 'data.{k}' is {v!r} but 'finetune.{k}' is {common[k]!r}; keep one")
        common[k] = v
    candidates = _candidates(raw, path, common)
    gates = _gates(raw, path)
    targets = _targets(raw, path, gates)
    keep_top = raw.get("keep_top")
    if keep_top is not None:
        keep_top = int(_number(keep_top, path, "keep_top", 1, 10000, integer=True))
    runs, warmup = _benchmark(raw, path)
    adapt, tasks = _adapt(raw, path), _tasks(raw, path)
    if adapt is not None and tasks:
        raise ConfigError(f"'{path}': keys 'adapt' and 'tasks' together are not supported yet (adaptation changes the "
                          "primary task only); keep one")
    return Project(path, data, candidates, targets, keep_top, runs, warmup, adapt, tasks, raw)


def stage_options(options: dict[str, Any]) -> dict:
    """Finetune options as a stage key sees them: every field filled, cache locations dropped."""
    from edgetl.transfer.config import FinetuneConfig

    full = FinetuneConfig(**options).to_dict()
    return {k: v for k, v in full.items() if k not in NOT_IN_KEY}
