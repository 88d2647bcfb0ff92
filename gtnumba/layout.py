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
        out, start = [], 0
        for s in self.sizes:
            out.append((start, start + s))
            start += s
        return out


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
