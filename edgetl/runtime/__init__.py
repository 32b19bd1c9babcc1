"""Device runtime: numpy, Pillow and one inference backend. Never imports torch, timm or onnx."""
