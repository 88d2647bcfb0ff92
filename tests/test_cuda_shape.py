"""CUDA shape and indexing kernels (gtnumba/kernels/cuda/shape.py) against the op table's NumPy
references, in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or on a real GPU.

reshape, permute, expand, concat, index, index_backward, setitem and select run on their rows'
samples in float32 and float64, then on tiny extra cases: every permutation of 3-D arrays (tiled
transpose and strided gather, shapes that are not multiples of the tile, a grid too small so the
grid-stride loops wrap), NumPy's advanced-indexing rules (arrays anywhere, adjacent or not, with
ints, slices with negative steps, None, ...), repeated indices that must accumulate in
index_backward, and bad index arrays that must raise at the next read.  The host-side index plan
is also checked against NumPy over many specs without launching anything.  Last, every kernel of
the module compiles to PTX for sm_90 (no simulator, no GPU: a subprocess with the real target).
"""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("reshape", "permute", "expand", "concat", "index", "index_backward", "setitem", "select")
DTYPES = [np.float32, np.float64]


# ---- PTX: every kernel of the module compiles for sm_90 (the real target, no simulator) ---------
PTX_SCRIPT = textwrap.dedent("""
    import sys
    from numba import cuda
    from gtnumba.kernels.cuda import shape
    from gtnumba.kernels.cuda.ptx import _device_functions_for, nvvm_available
    if not nvvm_available():
        print("NO NVVM"); sys.exit(3)
    part, parts = int(sys.argv[1]), int(sys.argv[2])
    n, failed = 0, []
    with _device_functions_for((9, 0)):
        for k, (label, fn, sig) in enumerate(shape.ptx_cases()):
            if k % parts != part:
                continue
            n += 1
            try:
                ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
                assert ".target sm_90" in ptx, "not sm_90"
                if "transpose" in label:
                    assert "bar.sync" in ptx and ".shared" in ptx, "transpose without a shared tile"
                if "scatter_add" in label:
                    assert "atom" in ptx or "red." in ptx, "scatter-add without atomics"
            except Exception as exc:
                failed.append(f"FAILED {label}: {type(exc).__name__}: {exc}")
    print("\\n".join(failed))
    print(f"compiled {n - len(failed)}/{n}")
    sys.exit(1 if failed else 0)
""")


@pytest.mark.slow
def test_every_shape_kernel_compiles_to_ptx_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    parts = 2

    def start(i):
        return subprocess.Popen([sys.executable, "-c", PTX_SCRIPT, str(i), str(parts)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [start(i) for i in range(parts)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode == 3 and "NO NVVM" in o for p, o in zip(procs, outs)):
        pytest.skip('no CUDA compiler (libnvvm): pip install "numba-cuda[cu13]==0.30.4"')
    report = "\n".join(outs)
    assert all(p.returncode == 0 for p in procs), report
    assert report.count("compiled ") == parts and "FAILED" not in report, report


# ---- the rest runs kernels: the simulator or a GPU ------------------------------------------------
from numba import cuda  # noqa: E402
from conftest import dev as _dev, host as _host, needs_cuda, rng as _rng  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_simulator")



def _modules():
    from gtnumba.kernels.cuda import memory, runtime, shape
    return shape, memory, runtime


@pytest.fixture
def small_launch(monkeypatch):
    """Blocks and grids far smaller than the arrays: every grid-stride loop must wrap."""
    shape, _, runtime = _modules()
    monkeypatch.setattr(runtime, "BLOCK", 4)
    monkeypatch.setattr(runtime, "MAX_GRID", 2)
    monkeypatch.setattr(shape, "TILE_GRID", 1)


@pytest.fixture
def count_transposes(monkeypatch):
    """Counts tiled-transpose launches."""
    shape, _, _ = _modules()
    calls = []
    real = shape._transpose

    def wrapped(*key):
        calls.append(key)
        return real(*key)
    monkeypatch.setattr(shape, "_transpose", wrapped)
    return calls


def _as(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def _same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=what)


def _close(got, want, what, dtype):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def _run(name, inputs, attrs):
    """The row's cuda kernel on device copies of `inputs`: inputs untouched, shape and dtype as
    the row's shape rule says."""
    from gtnumba.ops import OPS, Spec
    row = OPS[name]
    dev = [_dev(a) for a in inputs]
    out = row.kernels["cuda"](*dev, **attrs)
    for d, a in zip(dev, inputs):
        np.testing.assert_array_equal(d.copy_to_host(), a, err_msg=f"{name}: kernel wrote into its input")
    got = _host(out)
    spec = row.infer(attrs, *[Spec(tuple(np.shape(a)), np.asarray(a).dtype) for a in inputs])
    assert got.shape == tuple(spec.shape), f"{name}: kernel shape {got.shape}, infer says {spec.shape}"
    assert got.dtype == spec.dtype, f"{name}: kernel dtype {got.dtype}, infer says {spec.dtype}"
    return got


# ---- the op table --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROWS)
def test_row_has_this_modules_cuda_kernel(name):
    import inspect
    import gtnumba.kernels.cuda as gcuda
    from gtnumba.ops import OPS
    shape, _, _ = _modules()
    slot = OPS[name].kernels.get("cuda")
    assert isinstance(slot, gcuda.LazyKernel) and slot.module == "shape", f"{name}: cuda slot {slot!r}"
    fn = slot.resolve()
    assert fn is shape.KERNELS[name]
    assert inspect.signature(fn) == inspect.signature(OPS[name].kernels["cpu"])


def _sample_cases():
    from gtnumba.ops import OPS
    out = []
    for name in ROWS:
        if OPS[name].sample is None:
            continue
        for i, _ in enumerate(OPS[name].sample(_rng(name))):
            for dt in DTYPES:
                out.append(pytest.param(name, i, dt, id=f"{name}-{i}-{np.dtype(dt).name}"))
    return out


@needs_cuda
@pytest.mark.parametrize("name,i,dtype", _sample_cases())
def test_kernel_matches_reference_on_samples(name, i, dtype):
    from gtnumba.ops import OPS
    row = OPS[name]
    inputs, attrs = row.sample(_rng(name))[i]
    inputs = [_as(a, dtype) for a in inputs]
    want = row.reference(*[_as(a, np.float64) for a in inputs], **attrs)
    _close(_run(name, inputs, attrs), want, f"{name} sample {i} ({np.dtype(dtype).name})", dtype)


@needs_cuda
def test_select_picks_one_output():
    a, b = _dev(np.arange(3.0)), _dev(np.ones((2, 2), np.float32))
    from gtnumba.ops import OPS
    assert OPS["select"].kernels["cuda"]((a, b), index=1) is b
    assert OPS["select"].kernels["cuda"]((a, b), index=0) is a


# ---- reshape ----------------------------------------------------------------------------------------
def _storage(d):
    if hasattr(d, "_ary"):                      # the simulator's FakeCUDAArray
        base = d._ary
        while base.base is not None:
            base = base.base
        return id(base)
    return d.gpu_data.device_ctypes_pointer.value if hasattr(d.gpu_data, "device_ctypes_pointer") \
        else d.device_ctypes_pointer.value


@needs_cuda
@pytest.mark.parametrize("src,dst", [((3, 4), (2, 6)), ((2, 3, 4), (24,)), ((6,), (-1, 2)),
                                     ((), (1, 1)), ((1,), ()), ((0, 3), (3, 0))])
def test_reshape_is_a_view(src, dst):
    shape, _, _ = _modules()
    x = np.arange(int(np.prod(src)), dtype=np.float32).reshape(src)
    d = _dev(x)
    out = shape.reshape(d, dst)
    _same(_host(out), x.reshape(dst), f"reshape {src} -> {dst}")
    if x.size:
        assert _storage(out) == _storage(d), "reshape must not copy"
    with pytest.raises(ValueError, match="reshape: cannot reshape"):
        shape.reshape(d, (x.size + 1,))


# ---- permute -------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("src", [(3, 5, 6), (2, 1, 9)])
def test_every_permutation_of_a_3d_array(src, count_transposes):
    shape, _, _ = _modules()
    x = _rng("perm", src).standard_normal(src).astype(np.float32)
    d = _dev(x)
    for axes in itertools.permutations(range(3)):
        before = len(count_transposes)
        _same(_host(shape.permute(d, axes)), x.transpose(axes), f"permute {src} by {axes}")
        # the last dim moves (and is not size 1 with everything else merged): tiled transpose
        moves = axes[-1] != 2 and [a for a in axes if src[a] != 1][-1] != 2
        assert (len(count_transposes) > before) == moves, f"permute {axes}: tiled path taken {not moves}"


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_])
def test_transpose_of_every_dtype_with_ragged_tiles(dtype, small_launch):
    """9 x 7 with tiles of 4 and a grid of one block per dim: partial tiles, wrapped loops."""
    shape, _, _ = _modules()
    x = _rng("t", dtype).standard_normal((9, 7))
    x = (x > 0) if dtype is np.bool_ else (x * 10).astype(dtype)
    _same(_host(shape.permute(_dev(x), (1, 0))), x.T, f"transpose {np.dtype(dtype).name}")


@needs_cuda
def test_permute_4d_and_negative_axes(small_launch):
    shape, _, _ = _modules()
    x = _rng("p4").standard_normal((2, 3, 1, 5))
    d = _dev(x)
    for axes in [(0, 3, 1, 2), (3, 2, 1, 0), (2, 0, 1, 3), (1, 0, 3, 2), (-1, 0, 1, 2)]:
        _same(_host(shape.permute(d, axes)), x.transpose(axes), f"permute {axes}")
    ident = shape.permute(d, (0, 2, 1, 3))          # only a size-1 dim moves: a view
    _same(_host(ident), x.transpose(0, 2, 1, 3), "size-1 permute")
    with pytest.raises(ValueError, match="not a permutation"):
        shape.permute(d, (0, 1, 1, 2))


# ---- expand / concat --------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("src,dst", [((3, 1), (2, 3, 5)), ((5,), (3, 5)), ((), (2, 3)),
                                     ((1, 4), (1, 4)), ((2, 1, 3), (2, 4, 3)), ((3, 1), (0, 3, 2))])
def test_expand(src, dst, small_launch):
    shape, _, _ = _modules()
    x = _rng("e", src).standard_normal(src)
    _same(_host(shape.expand(_dev(x), dst)), np.broadcast_to(x, dst), f"expand {src} -> {dst}")


@needs_cuda
def test_expand_rejects_bad_shapes():
    shape, _, _ = _modules()
    with pytest.raises(ValueError, match=r"expand: cannot expand shape \(3, 2\) to \(3, 3\)"):
        shape.expand(_dev(np.zeros((3, 2))), (3, 3))


@needs_cuda
@pytest.mark.parametrize("shapes,axis", [
    ([(2, 3), (1, 3), (4, 3)], 0), ([(2, 3, 2), (2, 1, 2), (2, 5, 2)], 1), ([(2, 3), (2, 4)], -1),
    ([(3, 2, 1), (3, 2, 2)], 2), ([(2, 0), (2, 3)], 1), ([(5,)], 0)])
def test_concat_any_axis(shapes, axis, small_launch):
    shape, _, _ = _modules()
    xs = [_rng("c", s).standard_normal(s) for s in shapes]
    _same(_host(shape.concat(*[_dev(x) for x in xs], axis=axis)), np.concatenate(xs, axis=axis),
          f"concat {shapes} axis {axis}")


@needs_cuda
def test_concat_promotes_dtypes_and_checks_shapes():
    shape, _, _ = _modules()
    a, b = np.arange(4, dtype=np.float32).reshape(2, 2), np.arange(2, dtype=np.int64).reshape(2, 1)
    _same(_host(shape.concat(_dev(a), _dev(b), axis=1)), np.concatenate([a, b], axis=1), "mixed dtypes")
    with pytest.raises(ValueError, match="concat: shapes .* differ outside axis 0"):
        shape.concat(_dev(a), _dev(np.zeros((2, 3))), axis=0)


# ---- indexing --------------------------------------------------------------------------------------
def _np_index(spec, arrays):
    from gtnumba.kernels import cpu
    return cpu._index(spec, arrays)


S, N, E = ("slice", None, None, None), ("none",), ("ellipsis",)
SPECS = [
    ((("int", -1), ("slice", None, None, -2)), []),
    ((("slice", 4, None, -1), ("int", 2), ("slice", -1, 0, -2)), []),
    ((E, N, ("slice", 1, None, 1)), []),
    ((("int", 1), ("int", -1), ("int", 0)), []),
    ((("slice", 3, 1, None),), []),
    ((N, E, N), []),
    ((("array", 0),), [[0, 4, 4, -1]]),
    ((S, ("array", 0)), [[[2, 0], [-3, 2]]]),
    ((E, ("array", 0)), [[2, 0, 1, 1, 2]]),
    ((("array", 0), ("array", 1)), [[0, 4, -5], [3, 0, 1]]),           # adjacent arrays
    ((("array", 0), S, ("array", 1)), [[[0], [4]], [2, 0, 1]]),        # separated: B first
    ((S, ("array", 0), ("int", 1)), [[3, 0]]),                         # int + array adjacent
    ((("int", 1), S, ("array", 0)), [[2, 0]]),                         # int, slice, array: B first
    ((S, ("array", 0), N, ("array", 1)), [[1, 2], [0, 2]]),            # None between: B first
    ((("slice", None, None, -2), ("array", 0), ("slice", 2, None, -1)), [[-1, 1]]),
    ((("array", 0), ("array", 1), ("array", 2)), [[1, 2], [[0], [3]], [2, 0]]),
    ((("array", 0),), [[]]),                                           # empty index array
]


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", range(len(SPECS)))
def test_index_matches_numpy(k, dtype, small_launch):
    shape, _, _ = _modules()
    spec, arrays = SPECS[k]
    x = _rng("ix").standard_normal((5, 4, 3)).astype(dtype)
    idx = [np.asarray(a, np.int64 if i % 2 == 0 else np.int32) for i, a in enumerate(arrays)]
    want = x[_np_index(spec, idx)]
    _same(_host(shape.index(_dev(x), *[_dev(a) for a in idx], spec=spec)), want, f"index {spec}")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [0, 1, 2, 6, 7, 9, 10, 11, 12, 13, 15])
def test_index_backward_matches_add_at(k, dtype, small_launch):
    shape, _, _ = _modules()
    spec, arrays = SPECS[k]
    idx = [np.asarray(a, np.int64) for a in arrays]
    target = (5, 4, 3)
    picked = np.zeros(target)[_np_index(spec, idx)]
    g = _rng("ib", k).standard_normal(picked.shape).astype(dtype)
    want = np.zeros(target, dtype)
    np.add.at(want, _np_index(spec, idx), g)
    got = _host(shape.index_backward(_dev(g), *[_dev(a) for a in idx], spec=spec, shape=target))
    _close(got, want, f"index_backward {spec}", dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_index_backward_accumulates_repeated_indices(dtype):
    shape, _, _ = _modules()
    idx = np.array([0, 4, 4, 1, 4, -1, 0])
    g = np.arange(1, 7 * 3 + 1, dtype=dtype).reshape(7, 3)
    want = np.zeros((5, 3), dtype)
    np.add.at(want, idx, g)
    got = _host(shape.index_backward(_dev(g), _dev(idx), spec=(("array", 0),), shape=(5, 3)))
    _close(got, want, "repeated rows", dtype)
    _close(got[4], g[1] + g[2] + g[4] + g[5], "row 4 (indices 4, 4, 4, -1)", dtype)
    _close(got[0], g[0] + g[6], "row 0 (indices 0, 0)", dtype)
    # a 2-D index array of one repeated column, along the last axis
    idx2 = np.array([[2, 2], [2, 0]])
    g2 = np.ones((5, 2, 2), dtype)
    want2 = np.zeros((5, 3), dtype)
    np.add.at(want2, (slice(None), idx2), g2)
    got2 = _host(shape.index_backward(_dev(g2), _dev(idx2), spec=(S, ("array", 0)), shape=(5, 3)))
    _close(got2, want2, "repeated columns", dtype)
    assert (got2[:, 2] == 3).all()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec,arrays,vshape", [
    ((("slice", 1, 3, None),), [], (3,)),
    ((("slice", None, None, -2), ("int", -1)), [], (3,)),
    ((S, ("slice", 2, 0, -1)), [], (5, 2)),
    ((("array", 0),), [[3, -5]], (2, 3)),
    ((S, ("array", 0)), [[[2], [0]]], (2, 1)),
    ((("array", 0), ("array", 1)), [[4, 0, 2], [1, -1, 0]], ()),
    ((("int", 0), S), [], ()),
])
def test_setitem(spec, arrays, vshape, dtype, small_launch):
    shape, _, _ = _modules()
    x = _rng("si").standard_normal((5, 3)).astype(dtype)
    v = _rng("sv", vshape).standard_normal(vshape).astype(dtype)
    idx = [np.asarray(a, np.int64) for a in arrays]
    want = x.copy()
    want[_np_index(spec, idx)] = v
    got = _host(shape.setitem(_dev(x), _dev(v), *[_dev(a) for a in idx], spec=spec))
    _same(got, want, f"setitem {spec}")


@needs_cuda
def test_setitem_casts_the_value_and_checks_its_shape():
    shape, _, _ = _modules()
    x = np.zeros((3, 2), np.float32)
    got = _host(shape.setitem(_dev(x), _dev(np.array([1, 2], np.int64)), spec=(("int", 1),)))
    _same(got, np.array([[0, 0], [1, 2], [0, 0]], np.float32), "int value into float32")
    with pytest.raises(ValueError, match="setitem: cannot (assign|broadcast)"):
        shape.setitem(_dev(x), _dev(np.ones(3, np.float32)), spec=(("int", 1),))


@needs_cuda
@pytest.mark.parametrize("op", ["index", "index_backward", "setitem"])
@pytest.mark.parametrize("bad,axis", [(5, 0), (-6, 0), (3, 1)])
def test_bad_index_arrays_raise_at_the_next_read(op, bad, axis, monkeypatch):
    """A bad index is found on the device (no host copy at the call): it is never read or written
    (the other positions are), and the next read raises, naming the op, index, axis and size."""
    shape, memory, runtime = _modules()
    copies = dict(memory.COPIES)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    idx = _dev(np.array([0, bad, 1]))
    spec = (("array", 0),) if axis == 0 else (S, ("array", 0))
    size = x.shape[axis]
    if op == "index":
        out = shape.index(_dev(x), idx, spec=spec)
    elif op == "setitem":
        out = shape.setitem(_dev(x), _dev(np.float32(-1)), idx, spec=spec)
    else:
        g = np.ones((3, 3) if axis == 0 else (5, 3), np.float32)
        out = shape.index_backward(_dev(g), idx, spec=spec, shape=x.shape)
    assert memory.COPIES["d2h"] == copies["d2h"], f"{op}: the call copied to the host"
    msg = rf"{op}: index {bad} is out of bounds for axis {axis} with size {size}"
    with pytest.raises(IndexError, match=msg):
        memory.to_host(out)
    got = memory.to_host(out)                    # the error is raised once
    good = [0, 1]
    sel = (good,) if axis == 0 else (slice(None), good)
    if op == "index":
        np.testing.assert_array_equal(got[(slice(None), [0, 2]) if axis == 1 else [0, 2]], x[sel])
    elif op == "setitem":
        want = x.copy()
        want[sel] = -1
        np.testing.assert_array_equal(got, want)
    else:
        want = np.zeros_like(x)
        want[sel] = 1
        np.testing.assert_array_equal(got, want)


@needs_cuda
def test_bad_index_in_combined_arrays_raises_at_the_next_read():
    shape, memory, _ = _modules()
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = shape.index(_dev(x), _dev(np.array([0, 4])), _dev(np.array([2, 7])), spec=(("array", 0), ("array", 1)))
    with pytest.raises(IndexError, match="index: index 7 is out of bounds for axis 1 with size 3"):
        memory.to_host(out)
    assert memory.to_host(out)[0] == x[0, 2]


@needs_cuda
def test_bad_basic_indices_raise():
    shape, _, _ = _modules()
    d = _dev(np.zeros((5, 3), np.float32))
    with pytest.raises(IndexError, match="index: index -4 is out of bounds for axis 1 with size 3"):
        shape.index(d, spec=(S, ("int", -4)))
    with pytest.raises(IndexError, match="too many indices"):
        shape.index(d, spec=(("int", 0), ("int", 0), ("int", 0)))
    with pytest.raises(IndexError, match="could not be broadcast"):
        shape.index(d, _dev(np.array([0, 1])), _dev(np.array([0, 1, 2])), spec=(("array", 0), ("array", 1)))
    with pytest.raises(TypeError, match="index array 0"):
        shape.index(d, _dev(np.array([0.0])), spec=(("array", 0),))


# ---- the host-side index plan against NumPy over many specs (no launch) -------------------------------
def _random_spec(rng, nd):
    items, arrays, used = [], [], 0
    ell = False
    for _ in range(rng.integers(1, nd + 3)):
        r = rng.random()
        if r < 0.12:
            items.append(N)
        elif r < 0.22 and not ell:
            items.append(E)
            ell = True
        elif used < nd:
            used += 1
            if r < 0.4:
                items.append(("int", int(rng.integers(-2, 2))))
            elif r < 0.7:
                def pick(options):
                    return options[int(rng.integers(len(options)))]
                items.append(("slice", pick([None, 0, 1, -1]), pick([None, 2, -1, 0]), pick([None, 1, 2, -1, -2])))
            else:
                shape = tuple(int(s) for s in rng.integers(1, 3, size=rng.integers(0, 3)))
                arrays.append(np.asarray(rng.integers(-2, 2, size=shape)))
                items.append(("array", len(arrays) - 1))
    return tuple(items), arrays


def test_index_plan_matches_numpy(monkeypatch):
    """The plan's (shape, base, strides, index offsets) reproduce x[index] for 400 random specs,
    evaluated in NumPy exactly as the kernels compute them."""
    shape_mod, memory, runtime = _modules()
    rng = np.random.default_rng(7)
    xshape = (3, 4, 2, 5)
    x = np.arange(np.prod(xshape)).reshape(xshape)
    monkeypatch.setattr(memory, "to_host", np.asarray)          # host arrays stand in for device ones
    monkeypatch.setattr(memory, "to_device", np.asarray)
    monkeypatch.setattr(runtime, "check_array", lambda *a, **k: None)
    monkeypatch.setattr(runtime, "flat", lambda a: np.asarray(a).reshape(-1))
    checked = 0
    for _ in range(400):
        spec, arrays = _random_spec(rng, len(xshape))
        try:
            want = x[_np_index(spec, arrays)]
        except IndexError:
            continue
        plan = shape_mod._plan("index", xshape, spec, arrays)
        assert plan.shape == want.shape, f"{spec}: plan shape {plan.shape}, NumPy {want.shape}"
        pos = np.indices(plan.shape).reshape(len(plan.shape), -1) if plan.shape else np.zeros((0, 1), int)
        off = plan.base + sum(p * s for p, s in zip(pos, plan.xstrides))
        flat_i = sum(p * s for p, s in zip(pos, plan.istrides))
        if plan.idx is not None:
            k = plan.idx[flat_i]
            off = off + np.where(k < 0, k + plan.size, k) * plan.stride
        for idx, istrides, size, stride, axis in plan.parts:      # combined on the device
            bpos = (np.indices(plan.bshape).reshape(len(plan.bshape), -1) if plan.bshape
                    else np.zeros((0, 1), int))
            k = idx[sum(p * s for p, s in zip(bpos, istrides))]
            off = off + np.atleast_1d(np.where(k < 0, k + size, k) * stride)[np.asarray(flat_i, int)]
        got = x.reshape(-1)[np.asarray(off, int)].reshape(plan.shape) if want.size else want
        np.testing.assert_array_equal(got, want, err_msg=str(spec))
        checked += 1
    assert checked > 150
