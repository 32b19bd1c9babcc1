"""Transfer learning: linear probe, partial and full fine-tuning, auto choice, regularization."""

from edgetl.finetune.config import STRATEGIES, FinetuneConfig
from edgetl.finetune.run import finetune

__all__ = ["FinetuneConfig", "STRATEGIES", "finetune"]
