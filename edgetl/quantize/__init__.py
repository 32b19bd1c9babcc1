"""Quantization: calibration recipes (data) and the per-format quantizers that apply them."""
