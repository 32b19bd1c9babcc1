"""On-device adaptation of the head (torch-free): new classes by weight imprinting,
softmax-regression retraining, alignment to the device's camera (adapt), the drift test, the
guardrail that keeps old classes safe, the versions and their rollback. Everything writes a new head version through edgetl.bundle's head store;
it depends on edgetl.bundle, edgetl.backends and edgetl.core, never on edgetl.runtime.

    import edgetl.ondevice as od
    r = od.add_class("dist/rpi5", "screw", ["photos/screw/"])
    od.heads("dist/rpi5").active, od.rollback("dist/rpi5")
"""

from edgetl.ondevice.adapt import adapt
from edgetl.ondevice.drift import drift
from edgetl.ondevice.imprint import add_class
from edgetl.ondevice.manage import heads, rollback
from edgetl.ondevice.results import AdaptResult, DriftResult, HeadsReport, HeadVersion
from edgetl.ondevice.retrain import retrain

__all__ = ["AdaptResult", "DriftResult", "HeadVersion", "HeadsReport", "adapt", "add_class", "drift", "heads",
           "retrain", "rollback"]
