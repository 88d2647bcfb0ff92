"""Ctrl-C landing inside a finalizer (a Tensor's __del__, a value freed on the workers) stops the
program once the finalizer has returned; Python alone would print it as ignored and carry on."""
import _thread
import signal
import threading
import time
import weakref

import pytest

import gtnumba as gt  # noqa: F401  (installs the handler)
from gtnumba import _interrupt


class _Dies:
    def __del__(self):
        _thread.interrupt_main()          # the signal arrives while the finalizer runs
        sum(range(1000))


def _loop(seconds=5.0):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(100))


def test_gtnumba_handles_sigint_in_place_of_python_default():
    assert signal.getsignal(signal.SIGINT) is _interrupt._on_sigint


@pytest.mark.parametrize("finalizer", ["__del__", "weakref.finalize"])
def test_an_interrupt_inside_a_finalizer_is_raised_after_it(finalizer):
    with pytest.raises(KeyboardInterrupt):
        if finalizer == "__del__":
            _Dies()
        else:
            class Value:
                pass
            weakref.finalize(Value(), lambda: (_thread.interrupt_main(), sum(range(1000))))
        _loop()


def test_a_handler_the_program_installed_is_left_alone():
    def mine(signum, frame):
        pass
    old = signal.signal(signal.SIGINT, mine)
    try:
        _interrupt.install()
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, old)


def test_an_interrupt_from_a_finalizer_also_ends_a_blocking_wait():
    """The main thread waiting for a worker's reply right after the finalizer still stops at once."""
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _Dies()
        threading.Event().wait(5)
    assert time.perf_counter() - t0 < 2
