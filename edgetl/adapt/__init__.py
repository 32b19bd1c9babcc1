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

from edgetl.adapt.run import METHODS, adapt_run, finetune_adapted

__all__ = ["METHODS", "adapt_run", "finetune_adapted"]
