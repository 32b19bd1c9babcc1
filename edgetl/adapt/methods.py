"""The adaptation methods' names, importable without torch (the CLI's choices, edgetl.yaml)."""

METHODS = ("align", "coral", "adabn", "dann", "selftrain", "auto")
ONE_MODEL = ("dann", "selftrain")  # trained, not a map: no strength
