"""The CUDA backend as a whole: device choice, host <-> device transfer, the memory pool, kernel
signatures matching the CPU twins, and the public API end to end on `gt.set_device('cuda')`
(forward and backward through elementwise and reduction ops), in Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) or on a real GPU.
"""
import importlib
import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import cuda

import gtnumba as gt
import gtnumba.kernels.cuda as gcuda
from gtnumba.kernels import backend
from gtnumba.ops import OPS
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")


CUDA_ROWS = sorted(n for n, r in OPS.items() if "cuda" in r.kernels)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan_cache():
    return importlib.import_module("gtnumba.sched.plan_cache")._CACHE


@pytest.fixture
def on_cuda():
    """Run the test on the CUDA backend; afterwards the previous device again, and no cached
    plan made here (some may hold this file's stand-in kernels)."""
    saved = backend._current
    gt.set_device("cuda")
    try:
        yield
    finally:
        backend._current = saved
        cache = _plan_cache()
        for key in [k for k in cache if "cuda" in k[:3]]:
            del cache[key]


@pytest.fixture
def shape_stand_ins(monkeypatch):
    """reshape/expand/fill belong to other kernel families; until those land, stand-ins on the
    device so a scalar backward (which reshapes, expands and fills) can run here."""
    from gtnumba.kernels.cuda import elementwise as ew
    stand_ins = {
        "reshape": lambda x, shape: x.reshape(shape) if x.ndim else x.reshape(shape or (1,)).reshape(shape),
        "expand": lambda x, shape: ew.broadcast_to(x, shape),
        "fill": ew.fill,
    }
    for op, kernel in stand_ins.items():
        if "cuda" not in OPS[op].kernels:
            monkeypatch.setitem(OPS[op].kernels, "cuda", kernel)


# ---- device choice ---------------------------------------------------------------------------------
def test_cuda_backend_is_registered():
    assert set(backend.available()) >= {"cpu", "cuda"}


def test_default_is_cpu_without_a_real_gpu(monkeypatch):
    monkeypatch.delenv("GTNUMBA_DEVICE", raising=False)
    if gcuda.simulator() or not cuda.is_available():
        assert not gcuda.gpu_present()
        assert backend.default() == "cpu"       # the simulator is never chosen on its own
    monkeypatch.setattr(gcuda, "gpu_present", lambda: True)
    monkeypatch.setattr(backend, "cuda_complete", lambda: True)
    assert backend.default() == "cuda"          # a real GPU is
    monkeypatch.setattr(gcuda, "gpu_present", lambda: False)
    assert backend.default() == "cpu"


def test_gpu_default_waits_for_every_row(monkeypatch):
    """Until every op row has a CUDA kernel, a GPU machine stays on "cpu" unless forced."""
    monkeypatch.delenv("GTNUMBA_DEVICE", raising=False)
    monkeypatch.setattr(gcuda, "gpu_present", lambda: True)
    monkeypatch.setitem(OPS, "_no_cuda_kernel", OPS["reshape"].__class__("_no_cuda_kernel", None, None))
    assert not backend.cuda_complete()
    with pytest.warns(RuntimeWarning, match="some op rows have no CUDA kernel"):
        assert backend.default() == "cpu"


@needs_cuda
def test_gpu_default_needs_a_tiny_kernel_to_run(monkeypatch):
    """"cuda" is picked on its own only if a test kernel compiles and runs; else "cpu" and one
    warning that says why (here the real probe, in the simulator or on the GPU, then a failing one)."""
    import warnings
    monkeypatch.delenv("GTNUMBA_DEVICE", raising=False)
    monkeypatch.setattr(gcuda, "gpu_present", lambda: True)
    assert gcuda.probe() == (True, "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.default() == "cuda"

    def broken(*args):
        raise RuntimeError("NVVM: cannot compile (np.row_stack is gone)")
    from gtnumba.kernels.cuda import elementwise
    monkeypatch.setattr(elementwise, "fill", broken)
    assert gcuda.probe()[0] is False
    with pytest.warns(RuntimeWarning) as record:
        assert backend.default() == "cpu"
    assert len(record) == 1
    assert "CUDA backend is not usable (RuntimeError: NVVM: cannot compile" in str(record[0].message)


@needs_cuda
def test_environment_forces_a_device(monkeypatch):
    monkeypatch.setattr(backend, "_current", None)
    monkeypatch.setenv("GTNUMBA_DEVICE", "cuda")
    assert backend.current() == "cuda"
    monkeypatch.setattr(backend, "_current", None)
    monkeypatch.setenv("GTNUMBA_DEVICE", "cpu")
    monkeypatch.setattr(gcuda, "gpu_present", lambda: True)
    assert backend.current() == "cpu"
    monkeypatch.setattr(backend, "_current", None)
    monkeypatch.setenv("GTNUMBA_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.current()


@needs_cuda
def test_set_device(monkeypatch):
    monkeypatch.setattr(backend, "_current", backend._current)
    gt.set_device("cuda")
    assert backend.current() == "cuda"
    gt.set_device("CPU")
    assert backend.current() == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        gt.set_device("gpu0")
    monkeypatch.setattr(gcuda, "usable", lambda: False)
    with pytest.raises(RuntimeError, match="device 'cuda' is not available here: no CUDA GPU"):
        gt.set_device("cuda")
    assert backend.current() == "cpu"


@needs_cuda
def test_transfer_both_ways():
    from gtnumba.kernels.cuda import memory, runtime
    for a in [np.arange(6.0).reshape(2, 3), np.array(3, np.int32), np.zeros((0, 2), bool)]:
        d = backend._BACKENDS["cuda"]["to_backend"](a)
        assert runtime.is_device_array(d) and d.shape == a.shape and d.dtype == a.dtype
        back = backend._BACKENDS["cuda"]["to_host"](d)
        assert isinstance(back, np.ndarray)
        np.testing.assert_array_equal(back, a)
        # either backend reads the other's values (a tensor computed before a device switch)
        np.testing.assert_array_equal(backend._BACKENDS["cpu"]["to_host"](d), a)
        np.testing.assert_array_equal(backend._BACKENDS["cuda"]["to_host"](a), a)
        assert memory.to_device(d) is d
    with pytest.raises(TypeError, match="to_device: unsupported dtype float16"):
        memory.to_device(np.zeros(2, np.float16))


def test_import_does_not_load_numba_cuda():
    """The op table's cuda slots are lazy: `import gtnumba` stays as cheap as before."""
    code = "import sys, gtnumba; print('numba.cuda' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "GTNUMBA_DEVICE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---- kernels have their CPU twins' signatures -----------------------------------------------------------
@pytest.mark.parametrize("name", CUDA_ROWS)
def test_cuda_kernel_signature_matches_cpu(name):
    kernels = OPS[name].kernels
    cuda_kernel = kernels["cuda"]
    fn = cuda_kernel.resolve() if isinstance(cuda_kernel, gcuda.LazyKernel) else cuda_kernel

    def params(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
    assert params(fn) == params(kernels["cpu"]), f"{name}: cuda kernel signature differs from the cpu kernel's"


# ---- the memory pool ---------------------------------------------------------------------------------
@needs_cuda
def test_pool_outputs_are_fresh_device_arrays():
    from gtnumba.kernels.cuda import memory, runtime
    a = memory.empty((3, 4), np.float32)
    b = memory.empty((3, 4), np.float32)
    assert runtime.is_device_array(a) and a.shape == (3, 4) and a.dtype == np.float32 and a.is_c_contiguous()
    assert a is not b
    assert memory.empty((), np.int64).shape == ()
    assert "allocator" in memory.stats()


POOL_SCRIPT = textwrap.dedent("""
    import gc, weakref
    import numpy as np
    from gtnumba.kernels.cuda import memory

    class Raw:                                  # stands in for a Numba device allocation
        count = 0
        def __init__(self, size):
            Raw.count += 1
            self.device_pointer_value = 0x100000 * Raw.count
    class Context:
        def memalloc(self, size):
            return Raw(size)
        class deallocations:
            @staticmethod
            def clear():
                pass

    pool = memory._CachingAllocator(Context())
    a = pool.empty((10, 3), np.dtype(np.float32))
    assert type(a).__name__ == "DeviceNDArray" and a.shape == (10, 3) and a.strides == (12, 4)
    ptr = a.device_ctypes_pointer.value
    view = a.reshape(30)
    del a; gc.collect()
    assert pool.stats()["used_bytes"] == 512, "a live view must keep the block"
    del view; gc.collect()
    assert pool.stats()["cached_bytes"] == 512 and pool.stats()["used_bytes"] == 0
    b = pool.empty((100,), np.dtype(np.float32))          # 400 bytes: the same 512-byte block
    assert b.device_ctypes_pointer.value == ptr and pool.stats()["hits"] == 1
    c = pool.empty((200,), np.dtype(np.float32))          # 800 bytes: a new block
    assert c.device_ctypes_pointer.value != ptr and pool.stats()["misses"] == 2
    pool.empty_cache()
    assert pool.stats()["cached_bytes"] == 0

    class Block:                                # a CuPy pool block
        def __init__(self, n):
            self.ptr = 0x900000
    class Cupy:
        class cuda:
            alloc = Block
    cp = memory._CupyAllocator(Cupy, Context())
    d = cp.empty((4, 5), np.dtype(np.int64))
    assert d.device_ctypes_pointer.value == 0x900000 and d.shape == (4, 5)
    owner = weakref.ref(d.gpu_data.owner)
    view = d.reshape(20)
    del d; gc.collect()
    assert owner() is not None, "a live view must keep the CuPy block"
    del view; gc.collect()
    assert owner() is None, "the CuPy block must go back to CuPy's pool"
    print("ok")
""")


def test_caching_allocator_and_cupy_pool_bookkeeping():
    """Runs on the real CUDA target's array types (no simulator; no GPU needed: the device
    allocations are stand-ins)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", POOL_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# ---- the public API end to end -------------------------------------------------------------------------
def _is_device(t):
    from gtnumba.kernels.cuda import runtime
    return runtime.is_device_array(t._node.value)


@needs_cuda
def test_forward_chain_stays_on_the_device(on_cuda, monkeypatch):
    copies = []
    to_host = backend._BACKENDS["cuda"]["to_host"]
    monkeypatch.setitem(backend._BACKENDS["cuda"], "to_host", lambda v: copies.append(1) or to_host(v))
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((5,)).astype(np.float32)
    x, y = gt.tensor(xv), gt.tensor(yv)
    assert _is_device(x)
    z = ((x * y).exp() + 1).sum(axis=1)
    m = gt.maximum(x, 0.5).max(axis=0, keepdims=True) - (x.abs() / 2).sqrt().clamp(max=0.3).mean()
    w = gt.where(x > y, x.tanh(), -x.sigmoid()).argmax(axis=1)
    assert not copies
    np.testing.assert_allclose(z.numpy(), (np.exp(xv * yv) + 1).sum(axis=1), rtol=1e-5)
    assert len(copies) == 1 and _is_device(z)       # one copy, at materialization
    want_m = np.maximum(xv, 0.5).max(axis=0, keepdims=True) - np.clip(np.sqrt(np.abs(xv) / 2), None, 0.3).mean()
    np.testing.assert_allclose(m.numpy(), want_m, rtol=1e-5)
    np.testing.assert_array_equal(w.numpy(), np.where(xv > yv, np.tanh(xv), -1 / (1 + np.exp(-xv))).argmax(axis=1))
    assert w.dtype == gt.int64


@needs_cuda
def test_backward_with_explicit_gradient(on_cuda):
    rng = np.random.default_rng(1)
    xv, yv, gv = (rng.standard_normal((3, 4)) for _ in range(3))
    x = gt.tensor(xv, dtype=gt.float64, requires_grad=True)
    y = gt.tensor(yv, dtype=gt.float64, requires_grad=True)
    z = (x * y).exp() + 1
    z.backward(gradient=gt.tensor(gv, dtype=gt.float64))
    e = np.exp(xv * yv)
    np.testing.assert_allclose(z.numpy(), e + 1, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), gv * e * yv, rtol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), gv * e * xv, rtol=1e-12)
    assert _is_device(x.grad) and _is_device(y.grad)


@needs_cuda
def test_scalar_loss_backward(on_cuda, shape_stand_ins):
    rng = np.random.default_rng(2)
    xv, yv = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    x, y = gt.tensor(xv, requires_grad=True), gt.tensor(yv, requires_grad=True)
    loss = ((x * y).exp() + 1).sum()
    loss.backward()
    e = np.exp(xv.astype(np.float64) * yv)
    np.testing.assert_allclose(loss.item(), (e + 1).sum(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), e * yv, rtol=1e-5)
    np.testing.assert_allclose(y.grad.numpy(), e * xv, rtol=1e-5)
    # a second loss through max/gelu/tanh: the extremum rule's ==, sum, div and expand
    x.grad = None
    loss2 = (x.gelu() * y.tanh()).max(axis=1).sum()
    loss2.backward()
    g = (OPS["gelu"].reference(xv.astype(np.float64)) * np.tanh(yv.astype(np.float64)))
    hit = (g == g.max(axis=1, keepdims=True))
    want = hit * OPS["gelu_backward"].reference(xv.astype(np.float64), np.tanh(yv.astype(np.float64)))
    np.testing.assert_allclose(loss2.item(), g.max(axis=1).sum(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-4, atol=1e-6)
