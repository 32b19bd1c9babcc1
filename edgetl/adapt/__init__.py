"""Host-side adaptation of a run to unlabeled field images (torch; issue 17).

    import edgetl.adapt
    run2 = edgetl.adapt.adapt_run("runs/a", "field/", "auto", "runs/a-field")

`align` and `coral` fold an affine map of the embedding into the head (edgetl.core.align,
shared with `edgetl-device adapt`); `adabn` re-estimates BatchNorm statistics; `dann`
fine-tunes the backbone domain-adversarially (edgetl/adapt/dann.py); `auto` chooses
without target labels. `finetune_adapted` is `edgetl finetune --target-images --adapt`.
The adapted run exports like any run. See edgetl/adapt/run.py for the method details and
the source check.
"""

from edgetl.adapt.methods import METHODS

__all__ = ["METHODS", "adapt_run", "finetune_adapted"]


def __getattr__(name: str):
    # Lazy: `edgetl.adapt.methods` (the names) is read by the CLI and the build's config
    # without importing torch.
    if name in ("adapt_run", "finetune_adapted"):
        import importlib

        return getattr(importlib.import_module("edgetl.adapt.run"), name)
    raise AttributeError(f"module 'edgetl.adapt' has no attribute {name!r}")
