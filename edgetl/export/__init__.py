"""Export a run to per-target bundles. One FORMATS table (formats.py) drives export,
validation and the test matrix."""
