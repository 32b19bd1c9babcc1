"""`edgetl build --device-results FILE...`: board latency from `edgetl-device benchmark --json`.

Each file is the benchmark JSON of one bundle, measured on the board. It names the bundle's
target and the sha256 of its manifest.json, so it is matched to exactly the bundle that was
measured; a figure for an older build of a bundle is refused rather than silently applied
to a different model.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from edgetl.yamlcfg import ConfigError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _number(body: dict, key: str, path: Path) -> float:
    value = body
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"device results '{path}': key '{key}' must be a number of milliseconds, got {value!r}; "
                          "pass the output of `edgetl-device benchmark BUNDLE --json`")
    return float(value)


def read_device_result(path: str | Path) -> dict:
    """One benchmark JSON, checked.

    Returns:
        {"target", "bundle_sha256", "median", "p90", "runs", "threads", "backend", "machine", "file"}.

    Raises:
        ConfigError: unreadable, not JSON, or a key missing or ill-typed (named, with the file).
    """
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"device results '{path}' cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"device results '{path}' is not JSON ({exc}); pass the output of "
                          "`edgetl-device benchmark BUNDLE --json`") from None
    if not isinstance(body, dict):
        raise ConfigError(f"device results '{path}' is not a JSON object; pass `edgetl-device benchmark --json` output")
    for key in ("target", "bundle_sha256"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ConfigError(f"device results '{path}': key '{key}' is missing; pass the output of "
                              "`edgetl-device benchmark BUNDLE --json`")
    if not _SHA256.match(body["bundle_sha256"]):
        raise ConfigError(f"device results '{path}': key 'bundle_sha256' is not a sha256 ({body['bundle_sha256']!r})")
    return {"target": body["target"], "bundle_sha256": body["bundle_sha256"],
            "median": _number(body, "latency_ms.median", path), "p90": _number(body, "latency_ms.p90", path),
            "runs": body.get("runs"), "threads": body.get("threads"), "backend": body.get("backend"),
            "bundle_backend": body.get("bundle_backend"), "machine": body.get("machine"), "file": str(path),
            "source": "device"}


def read_device_results(paths) -> dict[tuple[str, str], dict]:
    """(target, bundle_sha256) -> result for every file; the last file wins for a bundle measured twice."""
    out = {}
    for path in paths:
        r = read_device_result(path)
        out[(r["target"], r["bundle_sha256"])] = r
    return out


def check_all_matched(results: dict[tuple[str, str], dict], bundles: set[tuple[str, str]]) -> None:
    """Refuse a device result that matches no bundle of this build.

    Raises:
        ConfigError: naming the file, its target and sha256, and the fix.
    """
    for key, r in results.items():
        if key not in bundles:
            targets = sorted({t for t, _ in bundles})
            hint = ("" if r["target"] in targets else f"; this build's targets are {', '.join(targets)}")
            raise ConfigError(f"device results '{r['file']}' are for target '{r['target']}' bundle "
                              f"{r['bundle_sha256'][:16]}..., which this build did not produce (an older build?{hint}); "
                              "benchmark the bundles under OUT/candidates/<target>/ again and pass those files")
