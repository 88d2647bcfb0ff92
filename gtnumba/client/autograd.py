"""GT's `gt.client.autograd`: the autograd graph object GT code reaches through `get_graph()`.

gtnumba has no separate tape: the lazy graph is the record.  `get_graph().tape` lists what GT's
tape would hold (gt.debug.get_tape()); `backward(loss)` is `loss.backward()`.
"""
from ..functions import no_grad as _no_grad
from ..graph import GRAD_MODE


class AutogradGraph:
    @property
    def tape(self):
        from ..debug import get_tape
        return get_tape()

    @property
    def enabled(self):
        return GRAD_MODE.enabled

    @enabled.setter
    def enabled(self, flag):
        GRAD_MODE.enabled = bool(flag)

    def backward(self, loss):
        loss.backward()

    def no_grad(self):
        return _no_grad()


_GRAPH = AutogradGraph()


def get_graph():
    return _GRAPH


def no_grad():
    return _no_grad()


__all__ = ["AutogradGraph", "get_graph", "no_grad"]
