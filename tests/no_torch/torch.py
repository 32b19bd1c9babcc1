"""Blocks `import torch` in device subprocesses: device code must run without it."""

raise ImportError("torch is blocked in edgetl device tests")
