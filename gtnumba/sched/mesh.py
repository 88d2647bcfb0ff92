"""The mesh of workers a step runs on, and how values are held across it.

Without a mesh everything runs in-process on one device.  With one, each value is a DistValue:
its layout plus one part per worker (an array in-process, a Dask future on a cluster).
"""
from dataclasses import dataclass

from ..layout import REPLICATE, Partial, Replicate, Shard, offsets

_CURRENT = [None]


def current_mesh():
    return _CURRENT[0]


def set_mesh(mesh):
    _CURRENT[0] = mesh


class WorkerLost(RuntimeError):
    """Workers of the mesh died while a step ran on them."""

    def __init__(self, dead):
        super().__init__(f"gtnumba: lost {len(dead)} worker(s): {', '.join(dead)}")
        self.dead = list(dead)


@dataclass(frozen=True)
class Flat:
    """A value held flattened in slices (ZeRO-1): worker w holds elements offsets()[w] of the
    C-order flattening of a `shape` array.  Parameters and optimizer state after a sharded update."""
    shape: tuple
    sizes: tuple

    def __repr__(self):
        return f"Flat({self.sizes})"

    def offsets(self):
        return offsets(self.sizes)


def unsliced(layouts):
    """The layouts with each Flat one (a replicated value stored sliced, ZeRO-1) as Replicate: what
    the planner and the cost model plan with."""
    return tuple(REPLICATE if isinstance(l, Flat) else l for l in layouts)


class DistValue:
    """A value on the mesh: its layout and one part per worker (arrays in-process, `Part`s of the
    Dask runner).  After a worker loss it may come home (`parts` None, `host` the array) or be
    recomputed on the survivors (`adopt`), so readers holding it still read the right value."""
    __slots__ = ("layout", "parts", "runner", "host", "__weakref__")

    def __init__(self, layout, parts, runner, host=None):
        self.layout, self.parts, self.runner = layout, list(parts), runner
        self.host = host          # the host array it was placed from, if any (kept for recovery)

    def adopt(self, other):
        self.layout, self.parts, self.runner, self.host = other.layout, other.parts, other.runner, other.host

    def come_home(self, array):
        self.parts, self.host = None, array

    def recover(self, alive):
        """A host copy after some workers died: from the host copy or surviving parts/backups."""
        if self.parts is None or self.host is not None:
            return self.host
        if hasattr(self.runner, "recover_parts"):
            parts = self.parts[alive[0]:alive[0] + 1] if isinstance(self.layout, Replicate) else self.parts
            arrays = self.runner.recover_parts(self.layout, parts, alive)
            return None if arrays is None else assemble(self.layout, arrays)
        if isinstance(self.layout, Replicate) and alive:
            return assemble(self.layout, self.runner.fetch([self.parts[alive[0]]]))
        if len(alive) == len(self.parts):
            return self.to_host()
        return None

    def to_host(self):
        while self.parts is not None:
            parts = self.parts[:1] if isinstance(self.layout, Replicate) else self.parts
            try:
                return assemble(self.layout, self.runner.fetch(parts))
            except WorkerLost as lost:
                self.runner.lost(lost.dead)         # carries on without them, then read again
        return self.host


def assemble(layout, arrays):
    import numpy as np
    if isinstance(layout, Replicate):
        return np.asarray(arrays[0])
    if isinstance(layout, Flat):
        return np.concatenate([np.asarray(a).reshape(-1) for a in arrays]).reshape(layout.shape)
    if isinstance(layout, Partial):
        total = np.array(arrays[0], copy=True)
        for a in arrays[1:]:
            total = total + a
        return total
    return np.concatenate([np.asarray(a) for a in arrays], axis=layout.dim)


def split(layout, array, workers):
    """The part each worker holds of a host array laid out as `layout` (rows read on the workers
    split into recipes)."""
    if hasattr(array, "worker_parts"):
        return array.worker_parts(layout, workers)
    if isinstance(layout, Shard):
        parts = []
        for start, stop in layout.offsets():
            index = (slice(None),) * layout.dim + (slice(start, stop),)
            parts.append(array[index])
        return parts
    assert isinstance(layout, Replicate), f"host values cannot be placed as {layout}"
    return [array] * workers


class Mesh:
    """`workers` workers and the runner that executes blocks on them."""

    def __init__(self, workers, runner):
        self.workers, self.runner = workers, runner

    def __repr__(self):
        return f"Mesh({self.workers} workers, {self.runner.name})"
