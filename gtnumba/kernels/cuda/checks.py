"""Data checks that never stop the stream: a kernel that finds a bad value (a label outside the
classes, an index outside its axis) records it in a device-side flag and carries on; the host
looks at the flag at the next read (`memory.to_host`), after the stream is synchronized anyway,
and raises the error there, naming the op and the offending value.

The flag is 4 int64 in mapped (pinned, device-visible) host memory: (site code, value, bound,
axis).  The first kernel to report wins (an atomic compare-and-swap on the code); reading it after
a synchronize costs no copy.  A site is registered once per check: its code names the op, the
exception type and the message, so the device only ever writes numbers.
"""
from numba import cuda

from .runtime import jit

_SITES = [None]          # code -> (exception type, message format); code 0 means "no error"
_FLAG = []


def site(exc_type, message):
    """Register a check; returns its code.  `message` is formatted with value, bound and axis."""
    _SITES.append((exc_type, message))
    return len(_SITES) - 1


def flag():
    """The device-visible error flag (made on first use)."""
    if not _FLAG:
        f = cuda.mapped_array(4, dtype="int64")
        f[:] = 0
        _FLAG.append(f)
    return _FLAG[0]


@jit(device=True)
def report(flag, code, value, bound, axis):
    """Record a bad value (device side); only the first report of a run is kept."""
    if cuda.atomic.cas(flag, 0, 0, code) == 0:
        flag[1] = value
        flag[2] = bound
        flag[3] = axis


def raise_pending():
    """Raise the error a kernel recorded since the last check, and clear it.  The caller has
    synchronized the stream (so the kernels that could report have finished)."""
    if not _FLAG or int(_FLAG[0][0]) == 0:
        return
    f = _FLAG[0]
    code, value, bound, axis = (int(v) for v in f[:4])
    f[:] = 0
    exc_type, message = _SITES[code]
    raise exc_type(message.format(value=value, bound=bound, axis=axis, last=bound - 1))


def clear():
    if _FLAG:
        _FLAG[0][:] = 0
