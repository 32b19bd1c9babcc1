"""The bundle manifest as a type: `Manifest`, frozen, versioned, validated on the way in.

A manifest carries the sha256 of every bundle file and of its own content
(`manifest_sha256`), so an edited preprocess block or label list is refused like a flipped
byte in the model. This catches accidents and casual edits, not an attacker who recomputes
the digests: that needs signing.

Schemas: 1 (edgetl 0.1 before the typed manifest) and 2 (this one) are read; 2 is written.
Schema 2 adds `data` (a digest of the validation set instead of its host path) and makes
the manifest's `labels` the truth (`labels.txt` is a convenience copy). Devices in the field
hold schema-1 bundles, so reading 1 stays (tests/test_bundle_schema.py opens, predicts and
retrains one).

A multi-task bundle adds `tasks` (extra task name -> its head file and labels) within schema 2:
a bundle without it is a one-task bundle, as every earlier one is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_TASK = "default"  # the task of the class folders: the manifest's `labels` and `head`
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # also a folder name under heads/


class BundleError(EdgetlError):
    """A bundle that cannot be trusted or read; the message names the file and the fix."""


def manifest_digest(body: dict) -> str:
    """sha256 of a manifest's content without its own digest, in canonical JSON."""
    body = {k: v for k, v in body.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_label(label: Any, where: str, fix: str = "rename the class folder") -> str:
    """A class label as a bundle stores it: a non-empty single-line UTF-8 string.

    Args:
        label: the candidate.
        where: what to name in the error (a file, a folder, a command).
        fix: what the user should do, ending the error.
    """
    if not isinstance(label, str) or not label.strip():
        raise BundleError(f"{where}: label {label!r} is empty or not text")
    if any(c in label for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        raise BundleError(f"{where}: label {label!r} contains a line break; {fix}")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:  # a file name in another encoding, read with surrogate escapes
        raise BundleError(f"{where}: label {label!r} is not valid UTF-8 text (a name in another encoding?); "
                          f"{fix}") from None
    return label


def _finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def _check_tasks(tasks: Any, files: dict, source: str | Path) -> None:
    """The `tasks` entry: each extra task names a listed head file and its unique labels."""
    if not isinstance(tasks, dict):
        raise BundleError(f"'{source}': 'tasks' is a {type(tasks).__name__}, not an object; re-export the bundle")
    for name, task in tasks.items():
        if not isinstance(name, str) or not TASK_NAME.match(name) or name == DEFAULT_TASK:
            raise BundleError(f"'{source}': task name {name!r} is not a valid extra task name (letters, digits, "
                              f"'_', '-', '.'; not '{DEFAULT_TASK}'); re-export the bundle")
        if not isinstance(task, dict) or not isinstance(task.get("head"), str) or task["head"] not in files:
            raise BundleError(f"'{source}': task '{name}' lacks a head file among the listed files; re-export the "
                              "bundle")
        labels = task.get("labels")
        if not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels):
            raise BundleError(f"'{source}': task '{name}' labels must be a list of two or more unique labels, got "
                              f"{labels!r}; re-export the bundle")
        for label in labels:
            check_label(label, f"{source} (task '{name}')")


@dataclass(frozen=True)
class Manifest:
    """What a bundle is: target, precision, backend, model I/O, preprocessing, labels, metrics.

    Build one with `Manifest.from_json` (validates) or the exporter's stages; write it with
    `BundleWriter`, which fills `files` and `schema`.
    """

    target: dict  # the target YAML as exported (name, runtime, threads, ...)
    precision: str  # fp32 | fp16 | int8
    backend: str  # key of edgetl.backends.BACKENDS
    model: dict  # file, input {name, dtype, shape, layout, ...}, output, embedding_dim
    preprocess: dict  # edgetl.core.preprocess.Preprocess.to_dict()
    labels: tuple[str, ...]
    metrics: dict
    versions: dict
    files: dict = field(default_factory=dict)  # bundle file name -> sha256
    schema: int = SCHEMA_VERSION
    format: str | None = None
    head: str = "head.npz"
    backbone: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    reference: dict | None = None
    fused: dict | None = None
    calibration: dict | None = None
    metrics_backend: str | None = None
    data: dict | None = None  # schema 2: digest and layout of the validation set
    # Multi-task bundles: extra task name -> {"head": file, "labels": [...]}, heads on the same
    # embedding. Optional, so bundles without it (every earlier one) read as before.
    tasks: dict | None = None
    extra: dict = field(default_factory=dict)  # keys a newer edgetl wrote; kept, not interpreted

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_json(cls, body: Any, source: str | Path = MANIFEST, check_digest: bool = True) -> "Manifest":
        """Validate a parsed manifest.

        Args:
            body: the parsed JSON object.
            source: the file it came from, named in every error.
            check_digest: refuse a body whose `manifest_sha256` does not match its content.

        Returns:
            The Manifest.

        Raises:
            BundleError: unknown schema, a missing or ill-typed key, an edited manifest.
        """
        if not isinstance(body, dict):
            raise BundleError(f"'{source}' is not a JSON object; re-export the bundle")
        schema = body.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise BundleError(f"'{source}' has schema {schema!r}; this edgetl reads schemas "
                              f"{', '.join(map(str, READABLE_SCHEMAS))}; re-export the bundle with this version")
        required = ("target", "precision", "backend", "files", "preprocess", "labels", "metrics", "versions", "model")
        missing = [k for k in required if k not in body]
        if missing:
            raise BundleError(f"'{source}' lacks {', '.join(missing)}; re-export the bundle")
        if check_digest and body.get("manifest_sha256") != manifest_digest(body):
            raise BundleError(f"'{source}' does not match its manifest_sha256: it was edited after export "
                              "(preprocess, labels, metrics or file list); re-export the bundle")
        for key, kind in (("target", dict), ("model", dict), ("preprocess", dict), ("metrics", dict),
                          ("versions", dict), ("files", dict), ("labels", list), ("precision", str), ("backend", str)):
            if not isinstance(body[key], kind):
                raise BundleError(f"'{source}': '{key}' is a {type(body[key]).__name__}, not a {kind.__name__}; "
                                  "re-export the bundle")
        labels = tuple(check_label(v, str(source)) for v in body["labels"])
        if not labels or len(set(labels)) != len(labels):
            raise BundleError(f"'{source}': labels must be unique and non-empty, got {list(labels)}; re-export the bundle")
        for name, digest in body["files"].items():
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts \
                    or not isinstance(digest, str) or not _SHA256.match(digest):
                raise BundleError(f"'{source}': file entry {name!r}: {digest!r} is not a relative name and a sha256; "
                                  "re-export the bundle")
        model = body["model"]
        for key in ("file", "input", "embedding_dim"):
            if key not in model:
                raise BundleError(f"'{source}': model lacks '{key}'; re-export the bundle")
        if model["file"] not in body["files"]:
            raise BundleError(f"'{source}': model file '{model['file']}' is not among the listed files; re-export")
        if "tasks" in body:
            _check_tasks(body["tasks"], body["files"], source)
        known = {f.name for f in fields(cls)} - {"extra", "labels"}
        values = {k: body[k] for k in known if k in body}
        extra = {k: v for k, v in body.items() if k not in known and k not in ("labels", "manifest_sha256")}
        return cls(labels=labels, extra=extra, **values)

    @classmethod
    def read(cls, bundle_dir: str | Path) -> "Manifest":
        """Read and validate `bundle_dir/manifest.json` (file digests are checked by Bundle.open)."""
        path = Path(bundle_dir) / MANIFEST
        if not path.is_file():
            raise BundleError(f"'{bundle_dir}' is not a bundle: {MANIFEST} is missing; create one with `edgetl export`")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"'{path}' is corrupt ({exc}); re-export the bundle") from None
        return cls.from_json(body, path)

    # -- writing ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The manifest as JSON, with `manifest_sha256`. Refuses NaN/Infinity (not JSON)."""
        body: dict = {**self.extra}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("reference", "fused", "calibration", "metrics_backend", "data", "format",
                                            "tasks"):
                continue
            body[f.name] = list(value) if f.name == "labels" else value
        if not _finite(body):
            raise BundleError("internal: the manifest holds a NaN or infinite number; report this with the run")
        body["manifest_sha256"] = manifest_digest(body)
        return body

    def replace(self, **changes) -> "Manifest":
        from dataclasses import replace

        return replace(self, **changes)

    # -- what readers ask ---------------------------------------------------------------------
    @property
    def target_name(self) -> str:
        return str(self.target.get("name", "?"))

    @property
    def threads(self) -> int | None:
        threads = self.target.get("threads")
        return int(threads) if isinstance(threads, int) and threads > 0 else None

    @property
    def embedding_dim(self) -> int:
        return int(self.model["embedding_dim"])

    @property
    def model_file(self) -> str:
        return str(self.model["file"])
