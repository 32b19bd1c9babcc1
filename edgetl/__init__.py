"""edgetl: fine-tune compact backbones, compile them per edge device, retrain heads on the device.

This package's top level imports nothing heavy: the device side (edgetl.runtime,
edgetl.ondevice, edgetl.bundle) must import without torch, timm or onnx.
"""

__version__ = "0.1.0"
