"""Rows of a data set, read where the step needs them.

`Rows(source)[idx]` is a data tensor holding rows `idx` of `source`.  In-process it is read at the
call.  On a mesh the client never reads it: the tensor's value is a `WorkerRows` (which rows), and
once its layout is chosen each worker reads just its own part (`RowsPart`) from its own copy of the
source, so a batch of pixels never travels through the client or the scheduler.  The source goes
to each worker once (the runner ships it with the first part) and lives in that client's store.

A source is any picklable object with `shape`, `dtype` and NumPy indexing by `(rows, *slices)`:
a NumPy array, or a loader that renders rows on demand.
"""
import threading
import uuid

import numpy as np

from . import creation
from .graph import leaf_node
from .kernels import backend
from .leaves import infer_dtype
from .layout import Replicate, Shard, even_sizes, offsets
from .ops import Spec
from .sched.mesh import current_mesh
from ._tensor import Tensor


class Rows:
    """Row-indexable data: `rows[idx]` is a tensor of rows idx (1-D ints or a slice)."""

    def __init__(self, source):
        shape = tuple(getattr(source, "shape", ()))
        if not shape or not hasattr(source, "__getitem__") or not hasattr(source, "dtype"):
            raise TypeError(f"Rows: the source needs shape (at least 1-D), dtype and indexing, got "
                            f"{type(source).__name__} with shape {shape}")
        self.source, self.shape = source, tuple(int(n) for n in shape)
        self.dtype = infer_dtype(np.empty(0, np.dtype(source.dtype)))
        self.uid = uuid.uuid4().hex

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        idx = self._rows(idx)
        if current_mesh() is None:
            return _data_tensor(self.read(idx), self)
        return _data_tensor(WorkerRows(self, idx), self)

    def read(self, idx, rest=()):
        """Rows idx (and the slices `rest` of the other dims) as an array of this Rows' dtype."""
        want = (len(idx),) + tuple(len(range(*s.indices(n))) for s, n in zip(rest, self.shape[1:]))
        want += self.shape[1 + len(rest):]
        arr = np.asarray(self.source[(idx,) + tuple(rest)])
        if arr.shape != want:
            raise ValueError(f"Rows: the source gave shape {arr.shape} for {len(idx)} rows, expected {want}")
        if arr.dtype != self.dtype or not arr.flags.c_contiguous or arr.base is not None:
            arr = np.array(arr, dtype=self.dtype, order="C")    # a view could change under the step
        return arr

    def loader(self, batches):
        """(idx, rows[idx]) for each idx of `batches`, the next batch read ahead in a thread (NumPy
        and most loaders release the GIL): here in-process, on a mesh by each worker."""
        batches = [self._rows(b) for b in batches]
        if current_mesh() is not None:
            for i, idx in enumerate(batches):
                ahead = batches[i + 1] if i + 1 < len(batches) else None
                yield idx, _data_tensor(WorkerRows(self, idx, ahead), self)
            return
        reading = _Reading(self, batches[0]) if batches else None
        for i, idx in enumerate(batches):
            arr = reading.result()
            reading = _Reading(self, batches[i + 1]) if i + 1 < len(batches) else None
            yield idx, _data_tensor(arr, self)

    def _rows(self, idx):
        if isinstance(idx, slice):
            return np.arange(*idx.indices(len(self)), dtype=np.int64)
        arr = np.asarray(idx)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise IndexError(f"Rows: rows must be a 1-D integer array or a slice, got {arr.dtype} of shape "
                             f"{arr.shape}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < -len(self)) | (arr >= len(self))]
        if bad.size:
            raise IndexError(f"Rows: row {int(bad[0])} is out of range for {len(self)} rows")
        return np.where(arr < 0, arr + len(self), arr)

    def __reduce__(self):
        raise TypeError("Rows: the source travels to the workers inside RowsPart, not as a Rows")


def _data_tensor(value, rows):
    shape = (value.shape[0],) + rows.shape[1:]
    value = backend.to_backend(value) if isinstance(value, np.ndarray) else value
    node = leaf_node(value, Spec(shape, rows.dtype))
    return creation._data(Tensor._wrap(node))


def _rest_key(rest):
    return tuple((r.start, r.stop, r.step) for r in rest)


class _Reading:
    """Rows idx (slices rest) being read in a thread; `result()` waits and gives them (or raises
    the reader's error in the caller's thread)."""

    def __init__(self, rows, idx, rest=()):
        self.key, self.box = (idx.tobytes(), _rest_key(rest)), {}
        self.thread = threading.Thread(target=self._read, args=(rows, idx, rest), daemon=True)
        self.thread.start()

    def _read(self, rows, idx, rest):
        try:
            self.box["value"] = rows.read(idx, rest)
        except BaseException as exc:
            self.box["error"] = exc

    def result(self):
        self.thread.join()
        if "error" in self.box:
            raise self.box["error"]
        return self.box["value"]


class WorkerRows:
    """The value of a data leaf on a mesh before it is placed: rows `idx` of `rows`, and the rows
    the next step will read (`ahead`, or None), which the workers start reading when done with these."""
    __slots__ = ("rows", "idx", "ahead")

    def __init__(self, rows, idx, ahead=None):
        self.rows, self.idx, self.ahead = rows, idx, ahead

    @property
    def shape(self):
        return (len(self.idx),) + self.rows.shape[1:]

    @property
    def dtype(self):
        return np.dtype(self.rows.dtype.name)

    def worker_parts(self, layout, workers):
        """Each worker's part as a recipe: its rows, and for a split along another dim its slice."""
        now = _split(self.idx, layout, workers)
        ahead = _split(self.ahead, layout, workers) if self.ahead is not None else [None] * workers
        return [RowsPart(self.rows, idx, rest, nxt) for (idx, rest), nxt in zip(now, ahead)]

    def __array__(self, dtype=None, copy=None):
        """Read here (a read before placement, or a value coming home after a worker loss)."""
        arr = self.rows.read(self.idx)
        return arr if dtype is None else arr.astype(dtype)


def _split(idx, layout, workers):
    """(rows, slices of the other dims) of each worker for rows idx laid out as `layout` (a batch
    split along dim 0 is cut by its own length: the next batch may be the smaller last one)."""
    if isinstance(layout, Replicate):
        return [(idx, ())] * workers
    assert isinstance(layout, Shard), f"rows cannot be placed as {layout}"
    if layout.dim == 0:
        return [(idx[a:b], ()) for a, b in offsets(even_sizes(len(idx), workers))]
    keep = (slice(None),) * (layout.dim - 1)
    return [(idx, keep + (slice(a, b),)) for a, b in layout.offsets()]


class RowsPart:
    """One worker's part of a WorkerRows: read on the worker from its copy of the source."""
    __slots__ = ("uid", "idx", "rest", "ahead", "rows", "ship")

    def __init__(self, rows, idx, rest, ahead=None):
        self.uid, self.idx, self.rest, self.ahead, self.rows, self.ship = rows.uid, idx, rest, ahead, rows, True

    def shipped(self, ship):
        """This part as it travels: with its source only where the worker has not got it yet."""
        part = RowsPart(self.rows, self.idx, self.rest, self.ahead)
        part.ship = ship
        return part

    def __getstate__(self):
        source = (self.rows.source, self.rows.shape, self.rows.dtype) if self.ship else None
        return self.uid, self.idx, self.rest, self.ahead, source

    def __setstate__(self, state):
        self.uid, self.idx, self.rest, self.ahead, source = state
        self.rows, self.ship = None, source is not None
        if source is not None:
            self.rows = Rows.__new__(Rows)
            self.rows.source, self.rows.shape, self.rows.dtype = source
            self.rows.uid = self.uid

    def read(self, sources=None):
        """The part's array.  `sources` (a worker's: uid -> Rows, and the reads started ahead)
        keeps the sources this worker was sent; then the next step's rows start reading."""
        if sources is None:
            return self.rows.read(self.idx, self.rest)
        rows = sources.setdefault(self.uid, self.rows) if self.rows is not None else sources.get(self.uid)
        if rows is None:
            raise RuntimeError(f"Rows: this worker never received the source of rows {self.uid[:8]}")
        reading = sources.pop(("ahead", self.uid), None)
        if reading is not None and reading.key == (self.idx.tobytes(), _rest_key(self.rest)):
            arr = reading.result()
        else:
            arr = rows.read(self.idx, self.rest)
        if self.ahead is not None:
            sources[("ahead", self.uid)] = _Reading(rows, *self.ahead)
        return arr
