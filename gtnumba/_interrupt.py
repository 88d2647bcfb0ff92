"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when the signal is handled.  Inside
a finalizer (a `__del__`, a `weakref.finalize` callback) the exception is printed as "Exception
ignored" and the program carries on: a training loop would then never stop.  gtnumba runs such
finalizers all the time (every Tensor, every value on the workers), so its handler delivers the
interrupt again once the finalizer has returned.
"""
import _thread
import signal
import threading
import weakref

_FINALIZER_CODES = {weakref.finalize.__call__.__code__}
REDELIVER_S = 0.005             # finalizers take microseconds: by then this one has returned


def _in_finalizer(frame):
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code in _FINALIZER_CODES:
            return True
        frame = frame.f_back
    return False


def _redeliver(signum):
    """A real signal to the main thread: it also ends a blocking wait there (a read waiting for a worker)."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:
        _thread.interrupt_main(signum)


def _on_sigint(signum, frame):
    if _in_finalizer(frame):
        # re-raised from here, the signal would be handled again at once, still inside the finalizer
        threading.Timer(REDELIVER_S, _redeliver, (signum,)).start()
        return
    raise KeyboardInterrupt


def install():
    """Replaces Python's default SIGINT handler only (never one the program or its host installed)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
