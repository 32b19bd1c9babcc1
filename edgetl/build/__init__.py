"""`edgetl build`: a project file (edgetl.yaml) -> every device's verified bundle, selected
under its latency budget and gated, plus summary.json, report.md, junit.xml (host side).

    from edgetl.build import build, load_project
    result = build("edgetl.yaml", "dist", jobs=2)       # -> BuildResult (.passed, .summary, .failures)

Modules: config (edgetl.yaml), cache (stage cache by content hash), stages (finetune, export,
verify, benchmark), select (selection under the budget, gates, Pareto data), devresults
(board latency files), dist (bundles into OUT/), pipeline (the order of it all).
"""

from edgetl.build.config import Project, load_project
from edgetl.build.pipeline import BuildResult, build

__all__ = ["BuildResult", "Project", "build", "load_project"]
