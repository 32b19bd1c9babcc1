"""edgetl: fine-tune compact backbones, compile them per edge device, retrain heads on the device.

The public API (names load on first use, so `import edgetl` on a device imports no torch):

    run = edgetl.finetune("images/", "runs/a", strategy="linear")      # host: -> Run
    result = edgetl.export(run, "rpi5", "dist/rpi5")                  # host: -> ExportResult
    bundle = edgetl.open_bundle("dist/rpi5")                          # device: -> Bundle
    edgetl.Predictor.open("dist/rpi5").predict(["photo.jpg"])          # device: -> [Prediction]
    edgetl.ondevice.add_class / retrain / heads / rollback             # device: typed results
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "finetune": "edgetl.api",
    "export": "edgetl.api",
    "open_bundle": "edgetl.api",
    "Run": "edgetl.api",
    "Bundle": "edgetl.bundle",
    "Manifest": "edgetl.bundle",
    "BundleError": "edgetl.bundle",
    "Predictor": "edgetl.runtime",
    "Prediction": "edgetl.runtime",
    "EdgetlError": "edgetl.errors",
    "ExportResult": "edgetl.exporter",
    "FinetuneConfig": "edgetl.transfer.config",
    "ExportConfig": "edgetl.exporter",
}

__all__ = [*_LAZY, "ondevice", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from edgetl import ondevice  # noqa: F401
    from edgetl.api import Run, export, finetune, open_bundle  # noqa: F401
    from edgetl.bundle import Bundle, BundleError, Manifest  # noqa: F401
    from edgetl.errors import EdgetlError  # noqa: F401
    from edgetl.exporter import ExportConfig, ExportResult  # noqa: F401
    from edgetl.transfer.config import FinetuneConfig  # noqa: F401
    from edgetl.runtime import Prediction, Predictor  # noqa: F401


def __getattr__(name: str):
    if name == "ondevice":
        return importlib.import_module("edgetl.ondevice")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgetl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
