"""Table-driven tests over every row of the op table (gtnumba.ops.OPS).

For each row: it is complete (sample, reference, cpu kernel, grad rule or differentiable=False);
its CPU kernel on float32 inputs matches the float64 NumPy reference; the same op recorded through
the public graph (`apply`) matches; and, for differentiable rows, the gradient that backward()
records matches central finite differences of the reference, in float64.

The `select` row is the one exception: it is internal plumbing that picks output `index` of a
multi-output node (apply() wraps every output of a multi-output op in a `select`).  It has no
sample of its own (its input is a tuple of values, not an array), so it is left out of the
sample-driven tests and checked explicitly in `test_select_row_is_plumbing` and through every
multi-output row below.
"""
import zlib

import numpy as np
import pytest

import gtnumba as gt
from gtnumba.ops import OPS, Spec
from gtnumba._tensor import apply

# Rows that have no sample on purpose (see the module docstring).
NO_SAMPLE = {"select"}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _samples(name):
    row = OPS[name]
    if row.sample is None:
        return []
    return row.sample(_rng(name))


def _cases(differentiable_only=False):
    cases = []
    for name in sorted(OPS):
        if name in NO_SAMPLE or OPS[name].sample is None:
            continue
        if differentiable_only and not OPS[name].differentiable:
            continue
        for i, _ in enumerate(_samples(name)):
            cases.append(pytest.param(name, i, id=f"{name}-{i}"))
    return cases


def _sample(name, i):
    inputs, attrs = _samples(name)[i]
    return tuple(np.asarray(a) for a in inputs), dict(attrs)


def _is_float(a):
    return np.asarray(a).dtype.kind == "f"


def _as_f32(a):
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "f" else a


def _as_f64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _specs(row, attrs, arrays):
    out = row.infer(attrs, *[Spec(tuple(a.shape), np.dtype(a.dtype)) for a in arrays])
    return _tuple(out)


def assert_matches(got, want, what, rtol=1e-5, atol=1e-4):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    if want.dtype.kind in "biu":
        assert got.dtype.kind == want.dtype.kind, f"{what}: dtype {got.dtype}, reference {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


# ---- completeness ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPS))
def test_row_is_complete(name):
    row = OPS[name]
    assert row.name == name
    assert callable(row.infer), f"{name}: no shape/dtype rule"
    assert callable(row.reference), f"{name}: no NumPy reference"
    assert callable(row.kernels.get("cpu")), f"{name}: no 'cpu' kernel"
    assert row.grad is not None or not row.differentiable, \
        f"{name}: differentiable row without a gradient rule (set differentiable=False if intended)"
    if row.differentiable:
        assert callable(row.grad), f"{name}: gradient rule is not callable"
    if name in NO_SAMPLE:
        return
    assert callable(row.sample), f"{name}: no sample(rng) for the table-driven tests"
    cases = row.sample(_rng(name))
    assert isinstance(cases, list) and cases, f"{name}: sample() returned no cases"
    for inputs, attrs in cases:
        assert isinstance(inputs, tuple) and isinstance(attrs, dict), f"{name}: malformed sample case"


def test_only_select_lacks_a_sample():
    assert {n for n, r in OPS.items() if r.sample is None} <= NO_SAMPLE


def test_select_row_is_plumbing():
    # `select` has no sample: it picks one value out of a multi-output node's tuple of values.
    row = OPS["select"]
    assert not row.differentiable and row.grad is None
    values = (np.arange(3.0), np.ones((2, 2), np.float32))
    for i, v in enumerate(values):
        assert row.reference(values, index=i) is v
        assert row.kernels["cpu"](values, index=i) is v
    specs = (Spec((3,), np.dtype(np.float64)), Spec((2, 2), np.dtype(np.float32)))
    assert row.infer({"index": 1}, specs) == specs[1]


def test_multi_output_ops_go_through_select():
    (x, labels), _ = _sample("cross_entropy", 0)
    outs = apply("cross_entropy", gt.tensor(x, dtype=gt.float64), gt.tensor(labels))
    assert isinstance(outs, tuple) and len(outs) == 2
    for t, want in zip(outs, OPS["cross_entropy"].reference(x, labels)):
        assert isinstance(t, gt.Tensor)
        assert t._node.op == "select"
        assert_matches(t.numpy(), want, "cross_entropy via select", rtol=1e-12, atol=1e-12)


# ---- forward: kernel (float32) and graph vs reference (float64) --------------------------------
@pytest.mark.parametrize("name,i", _cases())
def test_cpu_kernel_matches_reference(name, i):
    row = OPS[name]
    inputs, attrs = _sample(name, i)
    want = _tuple(row.reference(*[_as_f64(a) for a in inputs], **attrs))
    args32 = [_as_f32(a) for a in inputs]
    snapshot = [a.copy() for a in args32]
    got = _tuple(row.kernels["cpu"](*args32, **attrs))
    specs = _specs(row, attrs, args32)
    assert len(got) == len(want) == len(specs), f"{name}: number of outputs"
    for k, (g, w, s) in enumerate(zip(got, want, specs)):
        assert isinstance(g, np.ndarray), f"{name}[{k}]: kernel returned {type(g).__name__}, not ndarray"
        assert g.shape == s.shape, f"{name}[{k}]: kernel shape {g.shape}, infer says {s.shape}"
        assert g.dtype == s.dtype, f"{name}[{k}]: kernel dtype {g.dtype}, infer says {s.dtype}"
        assert_matches(g, w, f"{name}[{k}] cpu kernel (float32) vs reference (float64)")
    for a, b in zip(args32, snapshot):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: kernel wrote into its input")


@pytest.mark.parametrize("name,i", _cases())
def test_graph_matches_reference(name, i):
    row = OPS[name]
    inputs, attrs = _sample(name, i)
    want = _tuple(row.reference(*[_as_f64(a) for a in inputs], **attrs))
    args32 = [_as_f32(a) for a in inputs]
    tensors = [gt.tensor(a) for a in args32]
    for t, a in zip(tensors, args32):
        assert t.shape == a.shape and t.dtype == a.dtype
    out = apply(name, *tensors, **attrs)
    multi = isinstance(out, tuple)
    specs = _specs(row, attrs, args32)
    assert multi == (len(specs) > 1), f"{name}: apply returned {type(out).__name__} for {len(specs)} outputs"
    outs = _tuple(out)
    assert len(outs) == len(want)
    for k, (t, w, s) in enumerate(zip(outs, want, specs)):
        assert t.shape == s.shape and t.dtype == s.dtype
        v = t.numpy()
        assert v.shape == t.shape, f"{name}[{k}]: value shape {v.shape}, tensor says {t.shape}"
        assert v.dtype == t.dtype, f"{name}[{k}]: value dtype {v.dtype}, tensor says {t.dtype}"
        assert_matches(v, w, f"{name}[{k}] through the graph (float32) vs reference (float64)")


# ---- gradients: backward() vs central finite differences of the reference ------------------------
def _grad_cases():
    cases = []
    for p in _cases(differentiable_only=True):
        name, i = p.values
        inputs, attrs = _sample(name, i)
        n_out = len(_specs(OPS[name], attrs, inputs))
        for k in range(n_out):
            cases.append(pytest.param(name, i, k, id=f"{name}-{i}-out{k}"))
    return cases


def _numeric_grad(f, inputs, j, eps=1e-6):
    base = [np.array(a, copy=True) for a in inputs]
    x = base[j]
    grad = np.zeros(x.shape, np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for n in range(flat.size):
        old = flat[n]
        flat[n] = old + eps
        hi = f(base)
        flat[n] = old - eps
        lo = f(base)
        flat[n] = old
        gflat[n] = (hi - lo) / (2 * eps)
    return grad


@pytest.mark.parametrize("name,i,k", _grad_cases())
def test_gradient_matches_finite_differences(name, i, k):
    row = OPS[name]
    inputs, attrs = _sample(name, i)
    inputs = tuple(_as_f64(a) for a in inputs)
    leaves = [gt.tensor(a, dtype=gt.float64, requires_grad=True) if _is_float(a) else gt.tensor(a)
              for a in inputs]
    out = _tuple(apply(name, *leaves, **attrs))[k]
    ref_out = _tuple(row.reference(*inputs, **attrs))[k]
    assert out.dtype == np.float64
    assert_matches(out.numpy(), ref_out, f"{name}[{k}] float64 forward", rtol=1e-10, atol=1e-10)
    n_grad = getattr(row, "grad_outputs", None)
    if n_grad is not None and k >= n_grad:
        assert not out.requires_grad, f"{name}: output {k} is declared non-differentiable but requires grad"
        return
    if k > 0 and not out.requires_grad:
        # A secondary output of a multi-output row may be declared non-differentiable (as
        # PyTorch does for layer norm's mean/rstd); then it must not require grad.  What it may
        # not do is require grad and then silently contribute no (or a wrong) gradient.
        return
    assert out.requires_grad, f"{name}: output {k} of a differentiable row does not require grad"
    w = _rng(name, i, k, "weights").standard_normal(out.shape)
    loss = (out * gt.tensor(w, dtype=gt.float64)).sum()
    loss.backward()

    def f(arrays):
        return float(np.sum(w * _tuple(row.reference(*arrays, **attrs))[k]))

    checked = 0
    for j, (a, leaf) in enumerate(zip(inputs, leaves)):
        if not _is_float(a):
            assert leaf.grad is None
            continue
        want = _numeric_grad(f, inputs, j)
        assert leaf.grad is not None, f"{name}: output {k} gave input {j} no gradient"
        assert leaf.grad.shape == a.shape, f"{name}: grad of input {j} has shape {leaf.grad.shape}, not {a.shape}"
        assert leaf.grad.dtype == np.float64
        assert_matches(leaf.grad.numpy(), want, f"{name}: d(out{k})/d(input {j})", rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked, f"{name}: sample {i} has no float input to check"
