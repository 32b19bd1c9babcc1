"""Blocks `import onnx` in device subprocesses: device code must run without it."""

raise ImportError("onnx is blocked in edgetl device tests")
