"""Device runtime (torch-free): `Predictor` (a bundle's backbone + its active head) and
evaluation of a bundle on labelled images. Depends on edgetl.bundle, edgetl.backends and
edgetl.core; never on edgetl.ondevice."""

from edgetl.runtime.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
