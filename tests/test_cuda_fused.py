"""CUDA fused row kernels and optimizer updates (gtnumba/kernels/cuda/fused.py, updates.py) against
the op table's NumPy references and the CPU kernels, in Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) or on a real GPU.

Every fused and update row's "cuda" kernel on the row's samples in float32 and float64; softmax /
log-softmax (and backward) over every axis with rows longer than the shared tree, rows sharing a
block, and a grid too small to cover the rows; rows with large values; cross-entropy labels out of
range rejected before any launch; layer norm with a large offset and its backward with both column
sum paths; several SGD (momentum, dampening, Nesterov, weight decay) and Adam/AdamW steps matching
the CPU kernels, with lr and step as device or host 0-d arrays.
"""

import numpy as np
import pytest
from numba import cuda

if not cuda.is_available():
    pytest.skip("needs a CUDA GPU or Numba's simulator (NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

from gtnumba.kernels import cpu  # noqa: E402
from gtnumba.kernels.cuda import fused, memory, runtime, updates  # noqa: E402
from gtnumba.ops import OPS, Spec  # noqa: E402
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")

FUSED_ROWS = ["softmax", "softmax_backward", "log_softmax", "log_softmax_backward", "cross_entropy",
              "cross_entropy_backward", "layer_norm", "layer_norm_backward"]
UPDATE_ROWS = ["sgd_update", "adam_update"]
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def small_launch(monkeypatch):
    """Small trees and blocks (the simulator pays per thread and per barrier)."""
    if runtime.SIMULATOR:
        monkeypatch.setattr(runtime, "REDUCE_BLOCK", 8)
        monkeypatch.setattr(runtime, "BLOCK", 8)


def _tol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-12


def _check(got, want, what, dtype=np.float64, tol=None):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    tol = _tol(dtype) if tol is None else tol
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def _cast(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" and a.ndim else a


def _run(name, args, attrs):
    out = OPS[name].kernels["cuda"](*[_dev(a) for a in args], **attrs)
    return tuple(_host(o) for o in out) if isinstance(out, tuple) else _host(out)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


# ---- completeness ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FUSED_ROWS + UPDATE_ROWS)
def test_row_has_a_cuda_kernel(name):
    assert callable(OPS[name].kernels.get("cuda")), f"{name}: row without a 'cuda' kernel"


# ---- every row on its samples ---------------------------------------------------------------------
def _cases():
    return [pytest.param(name, dt, id=f"{name}-{np.dtype(dt).name}") for name in FUSED_ROWS + UPDATE_ROWS
            for dt in DTYPES]


@pytest.mark.parametrize("name,dtype", _cases())
def test_samples_match_reference(name, dtype):
    row = OPS[name]
    for i, (args, attrs) in enumerate(row.sample(_rng(name))):
        args = [_cast(a, dtype) for a in args]
        got = _as_tuple(_run(name, args, attrs))
        specs = _as_tuple(row.infer(attrs, *[Spec(np.shape(a), np.asarray(a).dtype) for a in args]))
        wide = [np.asarray(a).astype(np.float64) if np.asarray(a).dtype.kind == "f" else a for a in args]
        want = _as_tuple(row.reference(*wide, **attrs))
        assert len(got) == len(specs) == len(want)
        for k, (g, s, w) in enumerate(zip(got, specs, want)):
            assert g.shape == s.shape and g.dtype == s.dtype, \
                f"{name} sample {i} output {k}: kernel gave {g.shape} {g.dtype}, infer says {s.shape} {s.dtype}"
            _check(g, w, f"{name} sample {i} output {k}", dtype)


# ---- softmax family: axes, launch shapes, large values -------------------------------------------------
SOFTMAX_OPS = ["softmax", "log_softmax"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 19), 1),
                                        ((5, 1), 1)], ids=str)
def test_softmax_family_matches_cpu(shape, axis, dtype):
    """Rows along a middle axis (strided in place), rows longer than the tree (19 > 8) and rows of
    length 1, against the CPU kernels (same float64 sums, exp in the input dtype)."""
    rng = _rng("axes", shape, axis, np.dtype(dtype).name)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for op in SOFTMAX_OPS:
        y = getattr(cpu, op)(x, axis)
        _check(_run(op, [x], {"axis": axis}), y, f"{op} {shape} axis {axis}", dtype)
        _check(_run(op + "_backward", [y, g], {"axis": axis}), getattr(cpu, op + "_backward")(y, g, axis),
               f"{op}_backward {shape} axis {axis}", dtype)


def test_row_plan():
    saved = runtime.REDUCE_BLOCK, runtime.MIN_REDUCE_BLOCK, runtime.MAX_GRID
    try:
        runtime.REDUCE_BLOCK, runtime.MIN_REDUCE_BLOCK, runtime.MAX_GRID = 256, 32, 10 ** 6
        assert fused._row_plan(1000, 16) == (256, 16, 256, 63)        # 16 rows of 16 per block
        assert fused._row_plan(3, 40000) == (256, 256, 256, 3)        # long rows: a block each
        assert fused._row_plan(1, 5) == (256, 8, 32, 1)               # at least one warp
        assert fused._row_plan(2, 3) == (256, 4, 32, 1)
    finally:
        runtime.REDUCE_BLOCK, runtime.MIN_REDUCE_BLOCK, runtime.MAX_GRID = saved


def test_rows_sharing_blocks_and_a_short_grid(monkeypatch):
    """Several rows per block (g = 2 threads per row, 4 rows per 8-thread block) and one block for
    all row groups: the grid-stride loop over groups wraps, with a partly filled last group."""
    monkeypatch.setattr(runtime, "MAX_GRID", 1)
    x = _rng("groups").standard_normal((11, 2))
    _check(_run("softmax", [x], {"axis": 1}), OPS["softmax"].reference(x, 1), "softmax 11x2")
    _check(_run("log_softmax", [x], {"axis": 0}), OPS["log_softmax"].reference(x, 0), "log_softmax axis 0")
    labels = np.arange(11) % 2
    got = _run("cross_entropy", [x, labels], {})
    for g, w in zip(got, OPS["cross_entropy"].reference(x, labels)):
        _check(g, w, "cross_entropy 11x2")
    w, b = np.array([0.5, 2.0]), np.array([1.0, -1.0])
    for g, want in zip(_run("layer_norm", [x, w, b], {"eps": 1e-5}), OPS["layer_norm"].reference(x, w, b, 1e-5)):
        _check(g, want, "layer_norm 11x2")


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_values(dtype):
    """Max-shifted: rows around +-1e4 neither overflow nor lose the distribution."""
    x = np.array([[1e4, 1e4 - 1, 1e4 - 2, 1e4 - 30], [-1e4, -1e4 + 1, -1e4 + 2, -1e4 + 3]]).astype(dtype)
    ref = x.astype(np.float64) - x.astype(np.float64).max(1, keepdims=True)      # exact in float32 too
    for op in SOFTMAX_OPS:
        got = _run(op, [x], {"axis": 1})
        assert np.isfinite(got).all(), f"{op}: {got}"
        _check(got, OPS[op].reference(ref, 1), f"{op} large", dtype)
    loss, lse = _run("cross_entropy", [x, np.array([0, 3])], {})
    want_loss, want_lse = OPS["cross_entropy"].reference(x.astype(np.float64), np.array([0, 3]))
    _check(loss, want_loss, "cross_entropy loss large", dtype)
    _check(lse, want_lse, "cross_entropy lse large", dtype, tol=1e-7 if dtype == np.float32 else None)
    # layer norm of a row with a large offset: two-pass float64 statistics keep it exact
    base = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    xl = (1e4 + base).astype(dtype)[None, :]
    w, b = np.ones(5, dtype), np.zeros(5, dtype)
    y, mean, rstd = _run("layer_norm", [xl, w, b], {"eps": 1e-5})
    want = OPS["layer_norm"].reference(base[None, :], np.ones(5), np.zeros(5), 1e-5)[0]
    _check(y, want, "layer_norm large offset", dtype)
    _check(mean, [1e4 + base.mean()], "layer_norm mean", dtype)


# ---- cross-entropy labels ---------------------------------------------------------------------------
def test_cross_entropy_bad_labels_raise_at_the_next_read():
    """Labels are checked on the device: no host copy at the call, the error at the next read."""
    x = _dev(np.zeros((3, 4)))
    for labels in ([0, 4, 1], [0, -1, 1]):
        bad = [v for v in labels if not 0 <= v < 4][0]
        d2h = memory.COPIES["d2h"]
        loss, _ = fused.cross_entropy(x, _dev(np.array(labels)))
        assert memory.COPIES["d2h"] == d2h
        with pytest.raises(ValueError, match=rf"cross_entropy: label {bad} is out of range for 4 classes"):
            memory.to_host(loss)
        assert np.isnan(memory.to_host(loss)[1]) and memory.to_host(loss)[0] == np.log(4)
        gx = fused.cross_entropy_backward(x, _dev(np.array(labels)), _dev(np.zeros(3)), _dev(np.ones(3)))
        with pytest.raises(ValueError, match=rf"cross_entropy_backward: label {bad} is out of range"):
            memory.to_host(gx)
    with pytest.raises(TypeError, match="cross_entropy: labels must be integers"):
        fused.cross_entropy(x, _dev(np.zeros(3)))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        fused.cross_entropy(x, _dev(np.zeros(2, np.int64)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_cpu(dtype):
    rng = _rng("ce", np.dtype(dtype).name)
    x = (rng.standard_normal((5, 11)) * 3).astype(dtype)
    labels = rng.integers(0, 11, 5).astype(np.int32)
    loss, lse = _run("cross_entropy", [x, labels], {})
    want_loss, want_lse = cpu.cross_entropy(x, labels)
    _check(loss, want_loss, "loss", dtype)
    _check(lse, want_lse, "lse", dtype)
    gl = rng.standard_normal(5)            # float64 g on float32 logits: cast as the CPU kernel does
    _check(_run("cross_entropy_backward", [x, labels, want_lse, gl], {}),
           cpu.cross_entropy_backward(x, labels, want_lse, gl), "cross_entropy_backward", dtype)


# ---- layer norm backward: both column-sum paths ---------------------------------------------------------
@pytest.mark.parametrize("chunk_min", [1, 3, 100], ids=["many-chunks", "some-chunks", "one-chunk"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_backward_matches_cpu(monkeypatch, chunk_min, dtype):
    monkeypatch.setattr(fused, "COLSUM_CHUNK_MIN", chunk_min)
    rng = _rng("lnb", np.dtype(dtype).name)
    x = (rng.standard_normal((2, 4, 10)) * 2 + 1).astype(dtype)
    w, b = rng.standard_normal(10).astype(dtype), rng.standard_normal(10).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y, mean, rstd = cpu.layer_norm(x, w, b, 1e-5)
    for got, want in zip(_run("layer_norm", [x, w, b], {"eps": 1e-5}), (y, mean, rstd)):
        _check(got, want, "layer_norm", dtype)
    chunk, n_chunks = fused._colsum_plan(8, 10)
    assert (n_chunks == 1) == (chunk_min == 100)
    for k, (got, want) in enumerate(zip(_run("layer_norm_backward", [x, w, mean, rstd, g], {}),
                                        cpu.layer_norm_backward(x, w, mean, rstd, g))):
        assert got.dtype == dtype
        _check(got, want, f"layer_norm_backward output {k}", dtype)


def test_empty_rows():
    x = np.zeros((0, 3))
    assert _run("softmax", [x], {"axis": 1}).shape == (0, 3)
    y, mean, rstd = _run("layer_norm", [np.zeros((2, 0)), np.zeros(0), np.zeros(0)], {"eps": 1e-5})
    assert y.shape == (2, 0) and np.isnan(mean).all() and np.isnan(rstd).all()
    gx, gw, gb = _run("layer_norm_backward", [x, np.ones(3), np.zeros(0), np.zeros(0), x], {})
    assert gx.shape == (0, 3) and not gw.any() and not gb.any()


# ---- optimizer updates: several steps against the CPU kernels -------------------------------------------
SGD_CONFIGS = [dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
               dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True),
               dict(momentum=0.8, dampening=0.3, weight_decay=0.05, nesterov=False)]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=["plain", "nesterov-wd", "dampening-wd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_steps_match_cpu(cfg, dtype):
    rng = _rng("sgd", str(cfg), np.dtype(dtype).name)
    p = rng.standard_normal((3, 4)).astype(dtype)
    buf = np.zeros_like(p)
    dp, dbuf = _dev(p), _dev(buf)
    for step in range(3):
        g = rng.standard_normal(p.shape).astype(dtype)
        lr = np.array(0.1 / (step + 1), dtype)
        first = step == 0
        p, buf = cpu.sgd_update(p, g, g if first else buf, lr, first_step=first, **cfg)
        lr_arg = _dev(lr) if step % 2 == 0 else lr            # device and host 0-d learning rates
        dp, dbuf = updates.sgd_update(dp, _dev(g), _dev(g) if first else dbuf, lr_arg, first_step=first, **cfg)
        assert runtime.is_device_array(dp) and dp.dtype == dtype
        _check(_host(dp), p, f"sgd p step {step}", dtype, tol=1e-6 if dtype == np.float32 else 1e-14)
        _check(_host(dbuf), buf, f"sgd buf step {step}", dtype, tol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_steps_match_cpu(decoupled, dtype):
    rng = _rng("adam", decoupled, np.dtype(dtype).name)
    p = rng.standard_normal(7).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    dp, dm, dv = _dev(p), _dev(m), _dev(v)
    attrs = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.02, decoupled=decoupled)
    for step in range(1, 4):
        g = rng.standard_normal(p.shape).astype(dtype)
        lr = np.array(1e-2, dtype)
        p, m, v = cpu.adam_update(p, g, m, v, lr, np.array(step), **attrs)
        dp, dm, dv = updates.adam_update(dp, _dev(g), dm, dv, _dev(lr), _dev(np.array(step)), **attrs)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        for got, want, what in ((dp, p, "p"), (dm, m, "m"), (dv, v, "v")):
            _check(_host(got), want, f"adam {what} step {step}", dtype, tol=tol)
    d2h = memory.COPIES["d2h"]
    out = updates.adam_update(dp, dp, dm, dv, np.array(1e-2), np.array(0), **attrs)
    assert memory.COPIES["d2h"] == d2h, "lr and step stay on the device"
    with pytest.raises(ValueError, match="adam_update: step must be >= 1 .1-based., got 0"):
        memory.to_host(out[0])


def test_update_errors():
    p = _dev(np.zeros(3))
    with pytest.raises(ValueError, match=r"sgd_update: parameter of shape \(3,\) got a gradient of shape \(2,\)"):
        updates.sgd_update(p, _dev(np.zeros(2)), p, np.array(0.1), 0.0, 0.0, 0.0, False, True)
    with pytest.raises(TypeError, match="sgd_update: unsupported dtype int64"):
        updates.sgd_update(_dev(np.zeros(3, np.int64)), p, p, np.array(0.1), 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="lr must be a scalar"):
        updates.sgd_update(p, p, p, np.array([0.1, 0.2]), 0.0, 0.0, 0.0, False, True)
