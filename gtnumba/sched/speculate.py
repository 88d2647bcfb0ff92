"""The next step, predicted: a training loop runs one plan step after step, each step's leaves taken
from the step before in the same way (parameters from its outputs, constants as they were, a new
batch).  Learned from steps N-1 and N, that mapping names step N+1's leaves before the client has
recorded it, so the Dask runner can submit N+1 right behind N (dask_runner); N+1's new data get
keys reserved now.  When the client then runs N+1, it is the predicted step if the mapping learned
from N and N+1 is the predicted one: the same plan object, the same parts where a leaf was
predicted to be an output or a constant, and fresh host arrays where it was predicted to be new.
"""
import numpy as np

GO = -1     # the leafkeys entry a predicted step waits for on its workers: sent when it is confirmed


class Prediction:
    """Step N+1 as predicted after step N: its plan, where each leaf comes from, and the parts of
    step N those sources name (parts only, never values: dropping a value still frees it)."""
    __slots__ = ("plan", "sources", "kept", "leaf_parts", "leafkeys", "reserved", "token", "issued")

    def __init__(self, plan, sources, kept, leaf_parts):
        self.plan, self.sources, self.kept, self.leaf_parts = plan, sources, kept, leaf_parts
        self.leafkeys, self.reserved, self.token, self.issued = {}, {}, None, None

    def reserve(self, new_key):
        """N+1's key of every leaf: step N's output or constant, or a new key for new data."""
        for slot, (kind, k) in enumerate(self.sources):
            if kind == "kept":
                self.leafkeys[slot] = self.kept[k][0].key
            elif kind == "same":
                self.leafkeys[slot] = self.leaf_parts[slot][0].key
            else:
                self.leafkeys[slot] = self.reserved[slot] = new_key()
        self.leafkeys[GO] = new_key()


def fresh(parts):
    """Parts of a host array placed for this step, not sent anywhere yet."""
    return all(p.future is None and isinstance(p.pending, np.ndarray) for p in parts)


def sources(prev, plan, leaf_parts):
    """Where each leaf of this step (plan, leaf_parts) comes from in step `prev` (plan, leaf_parts,
    kept): ("kept", slot) an output of it, ("same", slot) the same parts, ("new", None) fresh host
    data.  None when the steps' plans differ or a leaf is none of these."""
    if prev is None or prev[0] is not plan or len(prev[1]) != len(leaf_parts):
        return None
    kept_of = {id(parts[0]): k for k, parts in prev[2].items()}
    out = []
    for slot, parts in enumerate(leaf_parts):
        if id(parts[0]) in kept_of:
            out.append(("kept", kept_of[id(parts[0])]))
        elif parts[0] is prev[1][slot][0]:
            out.append(("same", slot))
        elif fresh(parts):
            out.append(("new", None))
        else:
            return None
    return out


class Chain:
    """Predicted steps in a row, submitted once as one task per worker (dask_worker.run_chain) that runs
    each when its go-ahead comes.  The first step's keys are its prediction's; each next step takes the
    outputs of the step before (`output_key(token, slot)`), the same constants and new keys for new data.
    Steps are taken in order, one per confirmed step; one called off ends the chain on its workers."""
    __slots__ = ("plan", "sources", "token", "tokens", "leafkeys", "reserved", "taken", "confirmed", "task")

    def __init__(self, first, token, length, new_key, output_key):
        first.reserve(new_key)
        self.plan, self.sources, self.token = first.plan, first.sources, token
        self.tokens = [f"{token}.{i}" for i in range(length)]
        self.leafkeys, self.reserved = [first.leafkeys], [first.reserved]
        for before in self.tokens[:-1]:
            keys, reserved = {}, {}
            for slot, (kind, k) in enumerate(self.sources):
                if kind == "kept":
                    keys[slot] = output_key(before, k)
                elif kind == "same":
                    keys[slot] = first.leafkeys[slot]
                else:
                    keys[slot] = reserved[slot] = new_key()
            keys[GO] = new_key()
            self.leafkeys.append(keys)
            self.reserved.append(reserved)
        self.taken = self.confirmed = 0
        self.task = None          # what the runner keeps of its submission

    def continues(self, pred):
        """Whether `pred` is this chain's next step: every step taken so far ran, and it follows them alike."""
        return self.confirmed == self.taken < len(self.tokens) and pred.plan is self.plan \
            and pred.sources == self.sources

    def take(self, pred):
        """`pred` becomes the chain's next step (its token and keys); returns its index."""
        i = self.taken
        pred.token, pred.leafkeys, pred.reserved = self.tokens[i], self.leafkeys[i], self.reserved[i]
        self.taken += 1
        return i

    def waiting(self):
        """The go-ahead key of the next step not taken, which the chain's tasks wait for; None at its end."""
        return self.leafkeys[self.taken][GO] if self.taken < len(self.tokens) else None
