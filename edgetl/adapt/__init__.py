"""Host-side adaptation of a run to unlabeled field images (torch; issue 17).

    import edgetl.adapt
    run2 = edgetl.adapt.adapt_run("runs/a", "field/", "auto", "runs/a-field")

`align` and `coral` fold an affine map of the embedding into the head (edgetl.core.align,
shared with `edgetl-device adapt`); `adabn` re-estimates BatchNorm statistics; `auto`
chooses without target labels. The adapted run exports like any run. See
edgetl/adapt/run.py for the method details and the source check.
"""

from edgetl.adapt.run import METHODS, adapt_run

__all__ = ["METHODS", "adapt_run"]
