"""Candidates to rank: `NAME[@SIZE]` strings, or the `data` and `candidates` of a project file
(edgetl.yaml). Torch-free: names are checked against the backbone registry only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.backbones import MAX_INPUT_SIZE, MIN_INPUT_SIZE, get_spec
from edgetl.errors import EdgetlError
from edgetl.yamlcfg import read_mapping


@dataclass(frozen=True)
class Candidate:
    """A backbone at one input resolution: what a build fine-tunes, and rank scores."""

    backbone: str
    input_size: int

    @property
    def name(self) -> str:
        """`backbone@size`, the name summary.json and the build use."""
        return f"{self.backbone}@{self.input_size}"


def make_candidate(backbone: str, input_size: int | None = None, where: str = "--candidate") -> Candidate:
    """Check a backbone name and size against the registry.

    Args:
        backbone: a name from `edgetl backbones`.
        input_size: pixels; None: the backbone's pretrained size.
        where: the option or file key named in errors.

    Returns:
        Candidate with the size resolved.

    Raises:
        EdgetlError: unknown backbone, or a size outside 64-640.
    """
    try:
        spec = get_spec(str(backbone))
    except EdgetlError as exc:
        raise EdgetlError(f"{where}: {exc}") from None
    size = spec.size if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise EdgetlError(f"{where}: input size {size!r} for {spec.name} is not a whole number in "
                          f"{MIN_INPUT_SIZE}-{MAX_INPUT_SIZE}; {spec.name} was trained at {spec.size}")
    return Candidate(spec.name, size)


def parse_candidate(text: str) -> Candidate:
    """`tf_efficientnet_lite0` or `tf_efficientnet_lite0@288` -> Candidate.

    Raises:
        EdgetlError: unknown backbone, or a size that is not a number in range.
    """
    name, _, size = str(text).partition("@")
    if not size:
        return make_candidate(name, None, f"--candidate '{text}'")
    if not size.isdigit():
        raise EdgetlError(f"--candidate '{text}': '{size}' is not an input size in pixels; write NAME@SIZE, "
                          "e.g. tf_efficientnet_lite0@288")
    return make_candidate(name, int(size), f"--candidate '{text}'")


@dataclass(frozen=True)
class Project:
    """What rank reads from a project file; the build reads the rest."""

    path: Path
    data: Path
    candidates: list[Candidate]
    val_split: float | None = None
    seed: int | None = None


def read_project(path: str | Path) -> Project:
    """Read `data` (relative to the file) and `candidates` from a project YAML.

    `candidates` entries are backbone names (`NAME` or `NAME@SIZE`) or mappings
    `{backbone: NAME, input_size: N}`. `val_split` and `seed` are read where `edgetl build`
    reads them, the `finetune:` mapping or a `data:` mapping (`data: {path: images/,
    val_split: 0.2, seed: 0}`), so rank scores the training images the build trains on.

    Args:
        path: the project file (edgetl.yaml).

    Returns:
        Project.

    Raises:
        EdgetlError: unreadable YAML, or `data` / `candidates` missing or malformed (the key is named).
    """
    path = Path(path)
    raw = read_mapping(path)
    data = raw.get("data")
    common = raw.get("finetune") if isinstance(raw.get("finetune"), dict) else {}
    options = {k: common[k] for k in ("val_split", "seed") if k in common}
    if isinstance(data, dict):
        for k in ("val_split", "seed"):
            if k in data and k in options and data[k] != options[k]:
                raise EdgetlError(f"'{path}': key 'data.{k}' is {data[k]!r} but 'finetune.{k}' is {options[k]!r}; "
                                  "keep one")
            if k in data:
                options[k] = data[k]
        data = data.get("path")
    if not isinstance(data, str) or not data:
        raise EdgetlError(f"'{path}': key 'data' must be the image folder (relative to the file), "
                          "e.g. `data: images/`")
    entries = raw.get("candidates")
    if not isinstance(entries, list) or not entries:
        raise EdgetlError(f"'{path}': key 'candidates' must be a list of backbones, e.g. "
                          "`candidates: [tf_efficientnet_lite0, {backbone: tf_efficientnet_lite0, input_size: 288}]`")
    candidates = []
    for i, entry in enumerate(entries):
        where = f"'{path}': candidates[{i}]"
        if isinstance(entry, str):
            candidates.append(parse_candidate(entry) if "@" in entry else make_candidate(entry, None, where))
        elif isinstance(entry, dict) and "backbone" in entry:
            candidates.append(make_candidate(entry["backbone"], entry.get("input_size"), where))
        else:
            raise EdgetlError(f"{where} is {entry!r}; write a backbone name or {{backbone: NAME, input_size: N}}")
    val_split, seed = options.get("val_split"), options.get("seed")
    if val_split is not None and (isinstance(val_split, bool) or not isinstance(val_split, (int, float))):
        raise EdgetlError(f"'{path}': key 'val_split' is {val_split!r}; write a fraction such as 0.2")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise EdgetlError(f"'{path}': key 'seed' is {seed!r}; write a whole number")
    return Project(path, (path.parent / data), list(dict.fromkeys(candidates)),
                   None if val_split is None else float(val_split), seed)
