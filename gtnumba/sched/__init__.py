"""Planning and execution of the lazy graph: pending nodes -> cached plan -> executor."""
from .materialize import materialize, STATS

__all__ = ["materialize", "STATS"]
