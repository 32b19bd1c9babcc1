"""Blocks `import timm` in device subprocesses: device code must run without it."""

raise ImportError("timm is blocked in edgetl device tests")
