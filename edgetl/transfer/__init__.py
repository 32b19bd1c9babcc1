"""Transfer learning: linear probe, partial and full fine-tuning, auto choice, regularization,
early stopping. The entry point is `edgetl.finetune` (edgetl/api.py) over
`edgetl.transfer.run.finetune`; importing this package imports no torch."""

from edgetl.transfer.config import STRATEGIES, FinetuneConfig

__all__ = ["FinetuneConfig", "STRATEGIES"]
