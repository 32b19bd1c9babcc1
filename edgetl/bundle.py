"""Per-device bundles: write atomically, load with every file's sha256 verified (torch-free).

A bundle directory holds `manifest.json` and the files it lists (backbone model, head.npz,
labels.txt, optional reference embeddings). The manifest carries the sha256 of every file and
of its own content (`manifest_sha256`), so an edited preprocess block or label list is refused
like a flipped byte in the model. This catches accidents and casual edits, not an attacker who
recomputes the digests: that needs signing. The device-owned `heads/` store lives beside them
and is verified by its own index, not by the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgetl.errors import EdgetlError
from edgetl.fsutil import atomic_write_json, fsync_dir, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("schema", "target", "precision", "backend", "files", "preprocess", "labels", "metrics", "versions")


class BundleError(EdgetlError):
    pass


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content without its own digest, in canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_bundle(out_dir: str | Path, manifest: dict, files: dict[str, str | Path]) -> Path:
    """Copy `files` (name in bundle -> source path) and write the manifest with their sha256.

    The bundle is staged in a temp directory beside `out_dir` and renamed into place, so a
    reader sees the old bundle or the new one, never half of one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        digests = {}
        for name, src in files.items():
            dst = stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            digests[name] = sha256_file(dst)
        manifest = {**manifest, "schema": SCHEMA_VERSION, "files": digests}
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise BundleError(f"internal: manifest lacks {missing}")
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(stage / MANIFEST, manifest)
        fsync_dir(stage)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            stage.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir


def read_manifest(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"'{bundle_dir}' is not a bundle: {MANIFEST} is missing; create one with `edgetl export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"'{path}' is corrupt ({exc}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise BundleError(f"'{path}' has schema {found!r}; this edgetl reads schema {SCHEMA_VERSION}; "
                          "re-export the bundle with this version")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"'{path}' lacks {', '.join(missing)}; re-export the bundle")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"'{path}' does not match its manifest_sha256: it was edited after export "
                          "(preprocess, labels, metrics or file list); re-export the bundle")
    return manifest


def verify_files(bundle_dir: str | Path, manifest: dict) -> None:
    for name, expected in manifest["files"].items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"bundle file '{path}' is missing; re-copy or re-export the bundle")
        if sha256_file(path) != expected:
            raise BundleError(f"bundle file '{path}' does not match its sha256 in {MANIFEST} "
                              "(tampered or truncated); re-copy or re-export the bundle")


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> dict:
    """Read the manifest and (by default) check the schema and every listed file's sha256."""
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest
