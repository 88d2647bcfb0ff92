"""Large elementwise passes split over threads give NumPy's bits exactly: inputs with their own
rows, inputs broadcast along the rows, scalars, an output that is one of the inputs, and fills."""
import numba
import numpy as np
import pytest

from gtnumba.kernels import cpu
from gtnumba.kernels import cpu_threads

SHAPE = (1031, 1033)            # over MIN_ELEMENTS, rows that do not split evenly


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)


def _inputs(rng):
    a = rng.standard_normal(SHAPE).astype(np.float32)
    return {"rows": a, "row": rng.standard_normal((1, SHAPE[1])).astype(np.float32),
            "vector": rng.standard_normal(SHAPE[1]).astype(np.float32), "scalar": np.array(0.5, np.float32)}


@pytest.mark.parametrize("other", ["rows", "row", "vector", "scalar"])
@pytest.mark.parametrize("ufunc", [np.subtract, np.multiply, np.add])
def test_a_split_binary_pass_gives_numpys_bits(ufunc, other, two_threads):
    assert np.prod(SHAPE) >= cpu_threads.MIN_ELEMENTS
    x = _inputs(np.random.default_rng(0))
    a, b = x["rows"], x[other]
    want = ufunc(b, a)
    kernel = cpu.binary(ufunc)
    out = np.empty(SHAPE, np.float32)
    assert kernel.into(b, a, out=out) is out
    np.testing.assert_array_equal(out, want)
    kernel.into(b, a, out=a)                         # in place: each block reads only its own rows
    np.testing.assert_array_equal(a, want)


def test_a_split_fill_and_a_small_pass(two_threads):
    out = np.ones(SHAPE, np.float32)
    cpu.fill(SHAPE, 0.0, np.float32, out=out)
    assert not out.any()
    small = np.ones((4, 4), np.float32)
    assert cpu_threads.ufunc_into(np.add, (small, small), small) is False     # not worth splitting


def test_one_thread_never_splits(monkeypatch):
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    out = np.empty(SHAPE, np.float32)
    assert cpu_threads.ufunc_into(np.negative, (out,), out) is False
