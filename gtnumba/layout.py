"""Layouts of a tensor over a 1-D mesh of workers: Replicate, Shard(dim) and Partial (sum).

A Shard carries the size of its dim on every worker, so uneven shards (batch 5 on 2 workers) and
shards derived from them (a (5, 4) batch reshaped to (20,) has shards of 12 and 8) stay exact.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Replicate:
    def __repr__(self):
        return "Replicate()"


@dataclass(frozen=True)
class Partial:
    """Each worker holds a summand; the tensor is their sum."""

    def __repr__(self):
        return "Partial(sum)"


@dataclass(frozen=True)
class Shard:
    dim: int
    sizes: tuple = None     # size of `dim` on each worker; None until placed on a mesh

    def __repr__(self):
        return f"Shard({self.dim})"

    def offsets(self):
        return offsets(self.sizes)


REPLICATE = Replicate()
PARTIAL = Partial()


def even_sizes(n, workers):
    """NumPy's array_split sizes: the first n % workers shards get one more."""
    base, extra = divmod(n, workers)
    return tuple(base + (1 if w < extra else 0) for w in range(workers))


def shard_over(dim, n, workers):
    return Shard(dim, even_sizes(n, workers))


def local_shape(shape, layout, worker):
    if isinstance(layout, Shard):
        shape = list(shape)
        shape[layout.dim] = layout.sizes[worker]
        return tuple(shape)
    return tuple(shape)


# ---- bytes a collective moves ------------------------------------------------------------------
# Bytes one worker sends (and receives) per collective on a tensor of `n` bytes over `w` workers,
# as a ring does it: the one formula per kind that the cost planner and the sharding rules use.
_RING_BYTES = {
    "allreduce": lambda n, w: 2 * (w - 1) * n / w,
    "allgather": lambda n, w: (w - 1) * n / w,
    "reducescatter": lambda n, w: (w - 1) * n / w,
}


def collective_bytes(kind, nbytes, workers):
    return _RING_BYTES[kind](nbytes, workers)


def redistribution_bytes(have, want, nbytes, workers):
    """Bytes per worker to turn `have` into `want` the way the planner does: a Partial is
    all-reduced, a Shard all-gathered; slicing a replicated value into shards is local."""
    if have == want:
        return 0
    if isinstance(have, Partial):
        return collective_bytes("allreduce", nbytes, workers)
    if isinstance(have, Shard):
        return collective_bytes("allgather", nbytes, workers)
    return 0


def offsets(sizes):
    """(start, stop) of each worker's run, for runs of `sizes` laid end to end."""
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out
