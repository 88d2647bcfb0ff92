"""gtnumba.optim: SGD, Adam, AdamW (one fused update op per parameter) and lr schedulers."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .lr_scheduler import warmup_cosine
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "warmup_cosine"]
