"""Large elementwise passes split over threads.

NumPy's ufunc loops run on one core and release the GIL, so a parameter-sized pass (the update
`p -= lr * p.grad` over a 40000 x 128 weight: 20 MB read and written per pass) runs in blocks of
rows on as many threads as Numba's parallel kernels use (the same knob: NUMBA_NUM_THREADS, which
a Dask worker gets as its share of the cores).  Each block reads only its own rows of the inputs
that have them (an input broadcast along the rows is read whole), so `out` may be an input.
"""
import concurrent.futures

import numba

MIN_ELEMENTS = 1 << 20        # below this a pass takes under ~0.3 ms: a thread handoff is not worth it
_POOL = {}


def _executor(n):
    pool = _POOL.get(n)
    if pool is None:
        pool = _POOL[n] = concurrent.futures.ThreadPoolExecutor(n - 1, thread_name_prefix="gtnumba-cpu")
    return pool


def _blocks(out):
    """Row ranges, one per thread, or None where a pass is not worth splitting."""
    n = numba.get_num_threads()
    if n < 2 or out.size < MIN_ELEMENTS or out.ndim == 0 or out.shape[0] < n:
        return None
    rows = out.shape[0]
    edges = [rows * i // n for i in range(n + 1)]
    return list(zip(edges, edges[1:]))


def _rows(x, lo, hi, out):
    own = getattr(x, "ndim", 0) == out.ndim and x.shape[0] == out.shape[0]
    return x[lo:hi] if own else x


def run_split(fn, out):
    """fn(lo, hi) for each block of out's rows, the last on this thread; False when not split."""
    blocks = _blocks(out)
    if blocks is None:
        return False
    others = [_executor(len(blocks)).submit(fn, lo, hi) for lo, hi in blocks[:-1]]
    fn(*blocks[-1])
    for f in others:
        f.result()
    return True


def ufunc_into(ufunc, args, out):
    """ufunc(*args, out=out) in row blocks; False (nothing done) when not worth splitting."""
    if out.flags.c_contiguous is False:
        return False
    return run_split(lambda lo, hi: ufunc(*[_rows(a, lo, hi, out) for a in args], out=out[lo:hi]), out)
