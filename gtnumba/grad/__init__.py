"""Reverse-mode autodiff as graph -> graph: backward() appends gradient nodes to the lazy graph."""
from .backward import backward

__all__ = ["backward"]
