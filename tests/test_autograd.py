"""Autograd: the known traps, checked against gradients written out by hand in NumPy."""
import contextlib
import warnings

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import GTCompatWarning

F64 = gt.float64


def leaf(a):
    return gt.tensor(np.asarray(a, dtype=np.float64), dtype=F64, requires_grad=True)


def const(a):
    return gt.tensor(np.asarray(a, dtype=np.float64), dtype=F64)


def close(t, want, tol=1e-10):
    assert t is not None, "no gradient"
    got = t.numpy() if isinstance(t, gt.Tensor) else np.asarray(t)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- the traps the previous system fell into -------------------------------------------------
def test_sqrt_of_mean_keepdims(rng):
    a = rng.random((3, 4)) + 0.5
    x = leaf(a)
    m = x.mean(axis=1, keepdims=True)
    assert m.shape == (3, 1)
    y = m.sqrt()
    w = rng.standard_normal((3, 1))
    (y * const(w)).sum().backward()
    mean = a.mean(axis=1, keepdims=True)
    close(x.grad, np.broadcast_to(w * 0.5 / np.sqrt(mean) / 4, (3, 4)))


def test_sqrt_of_mean_keepdims_then_broadcast(rng):
    # layer-norm style: (x - mean) / sqrt(var + eps), with keepdims statistics
    a = rng.standard_normal((2, 5))
    x = leaf(a)
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    s = (d * d).mean(axis=-1, keepdims=True).sqrt()
    (d / s).sum().backward()
    # sum over a row of the normalized values is 0 for any x, so the gradient is 0
    close(x.grad, np.zeros((2, 5)), tol=1e-9)


def test_reshape_minus_one_gradient_shape(rng):
    a = rng.standard_normal((2, 3, 4))
    x = leaf(a)
    y = x.reshape(-1)
    assert y.shape == (24,)
    w = rng.standard_normal(24)
    (y * const(w)).sum().backward()
    assert x.grad.shape == (2, 3, 4)
    assert -1 not in x.grad.shape
    close(x.grad, w.reshape(2, 3, 4))


def test_reshape_minus_one_in_the_middle(rng):
    a = rng.standard_normal((2, 3, 4))
    x = leaf(a)
    y = x.reshape(2, -1, 2)
    assert y.shape == (2, 6, 2)
    (y * y).sum().backward()
    close(x.grad, 2 * a)


def test_view_and_flatten_gradients(rng):
    a = rng.standard_normal((2, 3, 4))
    x = leaf(a)
    (x.view(6, -1).sum(axis=0) * const(np.arange(4.0))).sum().backward()
    close(x.grad, np.broadcast_to(np.arange(4.0), (2, 3, 4)))
    x.grad = None
    w = rng.standard_normal((2, 12))
    (x.flatten(1) * const(w)).sum().backward()
    close(x.grad, w.reshape(2, 3, 4))


def test_max_keepdims_gradient(rng):
    a = rng.standard_normal((3, 5))
    x = leaf(a)
    m = x.max(axis=1, keepdims=True)
    assert m.shape == (3, 1)
    w = rng.standard_normal((3, 1))
    (m * const(w)).sum().backward()
    want = np.zeros((3, 5))
    want[np.arange(3), a.argmax(axis=1)] = w[:, 0]
    close(x.grad, want)


def test_max_and_min_without_keepdims_and_global(rng):
    a = rng.standard_normal((4, 3))
    x = leaf(a)
    (x.min(axis=0) * const([1.0, 2.0, 3.0])).sum().backward()
    want = np.zeros((4, 3))
    want[a.argmin(axis=0), np.arange(3)] = [1.0, 2.0, 3.0]
    close(x.grad, want)
    x.grad = None
    x.max().backward()
    want = np.zeros(12)
    want[a.argmax()] = 1.0
    close(x.grad, want.reshape(4, 3))


def test_max_ties_share_the_gradient():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    x.max(axis=1).sum().backward()
    close(x.grad, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


# ---- tensors used more than once -------------------------------------------------------------
def test_tensor_used_twice_mul(rng):
    a = rng.standard_normal((3, 2))
    x = leaf(a)
    (x * x).sum().backward()
    close(x.grad, 2 * a)


def test_tensor_used_twice_add(rng):
    a = rng.standard_normal((3, 2))
    x = leaf(a)
    w = rng.standard_normal((3, 2))
    ((x + x) * const(w)).sum().backward()
    close(x.grad, 2 * w)


def test_tensor_used_in_many_places(rng):
    a = rng.standard_normal(4)
    x = leaf(a)
    y = x * 3 + x.exp() - x / 2 + x.sum()
    y.sum().backward()
    close(x.grad, 3 + np.exp(a) - 0.5 + 4)


def test_reused_subgraph(rng):
    a = rng.standard_normal((3, 4))
    x = leaf(a)
    h = (x * 2).tanh()
    y = h * h + h.sum()
    w = rng.standard_normal((3, 4))
    (y * const(w)).sum().backward()
    hn = np.tanh(2 * a)
    dh = 2 * hn * w + w.sum()
    close(x.grad, dh * (1 - hn ** 2) * 2)


def test_diamond_through_two_paths(rng):
    a = rng.standard_normal((2, 3))
    x = leaf(a)
    h = x.exp()
    y = (h.sum(axis=0) * h.sum(axis=1, keepdims=True)).sum()   # (3,) * (2,1) -> (2,3)
    y.backward()
    e = np.exp(a)
    cs, rs = e.sum(0), e.sum(1, keepdims=True)
    # y = sum_ij cs_j * rs_i = (sum cs) * (sum rs) -> dy/de = sum(rs) + sum(cs) for every element
    close(x.grad, e * (rs.sum() + cs.sum()))


# ---- indexing and joining ----------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    (slice(None, None, 2),),
    (slice(None, None, -1), 1),
    (slice(-1, 0, -2), slice(1, None)),
    (Ellipsis, -1),
    (None, slice(1, 3), Ellipsis, None),
    (1, None, slice(None, None, -2)),
    (Ellipsis, slice(0, 4, 3)),
    (-2,),
    (slice(10, None),),               # empty selection
], ids=repr)
def test_slicing_gradients(rng, key):
    a = rng.standard_normal((4, 3, 5))
    x = leaf(a)
    y = x[key]
    want_fwd = a[key]
    close(y, want_fwd)
    w = rng.standard_normal(want_fwd.shape)
    (y * const(w)).sum().backward()
    want = np.zeros_like(a)
    want[key] = w
    close(x.grad, want)


@pytest.mark.parametrize("make_index", [
    lambda i: i,                   # NumPy array
    lambda i: i.tolist(),          # list
    lambda i: gt.tensor(i),        # int64 tensor
    lambda i: gt.tensor(i) + 0,    # pending int tensor (values unknown at the call)
], ids=["ndarray", "list", "tensor", "pending-tensor"])
def test_gather_with_repeated_indices_scatter_adds(rng, make_index):
    a = rng.standard_normal((5, 3))
    idx = np.array([4, 0, 4, 4, -1, 2])
    x = leaf(a)
    y = x[make_index(idx)]
    close(y, a[idx])
    w = rng.standard_normal((6, 3))
    (y * const(w)).sum().backward()
    want = np.zeros_like(a)
    np.add.at(want, idx, w)
    close(x.grad, want)


def test_gather_2d_index_on_second_axis(rng):
    a = rng.standard_normal((3, 4))
    idx = np.array([[1, 1], [3, 1]])
    x = leaf(a)
    y = x[:, idx]
    assert y.shape == (3, 2, 2)
    w = rng.standard_normal((3, 2, 2))
    (y * const(w)).sum().backward()
    want = np.zeros_like(a)
    np.add.at(want, (slice(None), idx), w)
    close(x.grad, want)


def test_bool_mask_gradient(rng):
    a = rng.standard_normal((3, 4))
    mask = a > 0.2
    x = leaf(a)
    y = x[mask]
    close(y, a[mask])
    (y * y).sum().backward()
    close(x.grad, np.where(mask, 2 * a, 0.0))


def test_cat_gradient(rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 1)), rng.standard_normal((2, 4))
    x, y = leaf(a), leaf(b)
    z = const(c)                      # one input needs no gradient
    out = gt.cat([x, z, y], axis=1)
    assert out.shape == (2, 8)
    w = rng.standard_normal((2, 8))
    (out * const(w)).sum().backward()
    close(x.grad, w[:, :3])
    close(y.grad, w[:, 7:])
    assert z.grad is None


def test_cat_same_tensor_twice(rng):
    a = rng.standard_normal((2, 3))
    x = leaf(a)
    w = rng.standard_normal((4, 3))
    (gt.cat([x, x], axis=0) * const(w)).sum().backward()
    close(x.grad, w[:2] + w[2:])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack_gradient(rng, axis):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    x, y = leaf(a), leaf(b)
    out = gt.stack([x, y], axis=axis)
    want_fwd = np.stack([a, b], axis=axis)
    close(out, want_fwd)
    w = rng.standard_normal(want_fwd.shape)
    (out * const(w)).sum().backward()
    close(x.grad, np.take(w, 0, axis=axis))
    close(y.grad, np.take(w, 1, axis=axis))


def test_split_gradient(rng):
    a = rng.standard_normal((5, 2))
    x = leaf(a)
    p, q, r = x.split([2, 1, 2])
    (p.sum() * 2 + (r * r).sum()).backward()        # q unused
    want = np.zeros_like(a)
    want[:2] = 2
    want[3:] = 2 * a[3:]
    close(x.grad, want)
    x.grad = None
    parts = gt.split(x, 2, axis=0)
    assert [t.shape for t in parts] == [(2, 2), (2, 2), (1, 2)]
    (parts[2] * 5).sum().backward()
    want = np.zeros_like(a)
    want[4] = 5
    close(x.grad, want)


def test_expand_gradient(rng):
    a = rng.standard_normal((3, 1))
    x = leaf(a)
    y = x.expand(2, 3, 4)
    w = rng.standard_normal((2, 3, 4))
    (y * const(w)).sum().backward()
    close(x.grad, w.sum(axis=(0, 2))[:, None])
    x.grad = None
    x.expand(-1, 5).sum().backward()
    close(x.grad, np.full((3, 1), 5.0))


def test_permute_transpose_T_gradients(rng):
    a = rng.standard_normal((2, 3, 4))
    x = leaf(a)
    w = rng.standard_normal((4, 2, 3))
    (x.permute(2, 0, 1) * const(w)).sum().backward()
    close(x.grad, w.transpose(1, 2, 0))
    x.grad = None
    w = rng.standard_normal((4, 3, 2))
    (x.transpose(0, 2) * const(w)).sum().backward()
    close(x.grad, w.transpose(2, 1, 0))
    x.grad = None
    w = rng.standard_normal((2, 4, 3))
    (x.T * const(w)).sum().backward()
    close(x.grad, w.transpose(0, 2, 1))


def test_matmul_gradients_batched_broadcast(rng):
    a, b = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((5, 4, 2))
    x, y = leaf(a), leaf(b)
    out = x @ y
    assert out.shape == (2, 5, 3, 2)
    w = rng.standard_normal((2, 5, 3, 2))
    (out * const(w)).sum().backward()
    # out[b,c,i,k] = sum_j a[b,0,i,j] * b[c,j,k]
    close(x.grad, np.einsum("bcik,cjk->bij", w, b)[:, None])
    close(y.grad, np.einsum("bij,bcik->cjk", a[:, 0], w))


def test_matmul_vector_gradients(rng):
    v, m = rng.standard_normal(4), rng.standard_normal((4, 3))
    x, y = leaf(v), leaf(m)
    w = rng.standard_normal(3)
    ((x @ y) * const(w)).sum().backward()
    close(x.grad, m @ w)
    close(y.grad, np.outer(v, w))
    x.grad = None
    (x @ x).backward()
    close(x.grad, 2 * v)


@pytest.mark.parametrize("sa,sb", [((3, 1), (4,)), ((1, 4), (3, 1)), ((), (2, 3)), ((2, 1, 3), (4, 1)),
                                   ((1,), (5,))])
def test_broadcasting_gives_each_operand_its_own_shape(rng, sa, sb):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    x, y = leaf(a), leaf(b)
    out = x * y
    shape = np.broadcast_shapes(sa, sb)
    assert out.shape == shape
    w = rng.standard_normal(shape)
    (out * const(w)).sum().backward()
    assert x.grad.shape == sa and y.grad.shape == sb

    def unbroadcast(g, s):
        g = g.sum(axis=tuple(range(g.ndim - len(s)))) if g.ndim > len(s) else g
        return g.sum(axis=tuple(i for i, d in enumerate(s) if d == 1), keepdims=True)

    close(x.grad, unbroadcast(w * b, sa))
    close(y.grad, unbroadcast(w * a, sb))


def test_broadcast_subtract_and_divide(rng):
    a, b = rng.standard_normal((3, 1)), rng.random(4) + 1
    x, y = leaf(a), leaf(b)
    ((x - y) / y).sum().backward()
    close(x.grad, np.full((3, 1), (1 / b).sum()))
    close(y.grad, (-1 / b - (a - b) / b ** 2).sum(axis=0))


def test_float32_leaf_gets_float32_grad(rng):
    x = gt.tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    (x * x.astype(gt.float64)).sum().backward()
    assert x.grad.dtype == gt.float32 and x.grad.shape == (2, 3)
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-6)


# ---- grad bookkeeping --------------------------------------------------------------------------
def test_grad_is_none_before_backward():
    x = leaf([1.0, 2.0])
    assert x.grad is None
    y = x * 2
    assert y.grad is None
    assert x.is_leaf and not y.is_leaf
    assert x.requires_grad and y.requires_grad


def test_non_leaf_grad_is_set_as_in_gt():
    x = leaf([1.0, 2.0])
    y = x * 2                       # a non-leaf the user holds gets .grad too (GT); the root does not
    loss = (y * 3).sum()
    loss.backward()
    close(y.grad, [3.0, 3.0])
    assert loss.grad is None
    close(x.grad, [6.0, 6.0])


def test_gradients_accumulate_until_zeroed(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    (x * x).sum().backward()
    (x * 3).sum().backward()
    close(x.grad, 2 * a + 3)
    x.grad.zero_()
    close(x.grad, np.zeros(3))
    (x * 3).sum().backward()
    close(x.grad, np.full(3, 3.0))
    x.grad = None
    x.sum().backward()
    close(x.grad, np.ones(3))


def test_integer_tensors_never_require_grad():
    i = gt.tensor([1, 2, 3])
    assert i.dtype == gt.int64 and not i.requires_grad
    with pytest.raises(TypeError):
        i.requires_grad = True
    with pytest.raises(TypeError):
        gt.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError):
        gt.arange(4, requires_grad=True)
    x = leaf([1.0, 2.0, 3.0])
    assert not (x * i).argmax().requires_grad
    assert not (x > 1).requires_grad
    assert not (i * 2).requires_grad
    assert not x.astype(gt.int64).requires_grad


def test_int_to_float_cast_and_back():
    x = leaf([1.5, -2.5])
    y = (x.astype(gt.int64) * x).sum()     # the int path carries no gradient
    y.backward()
    close(x.grad, [1.0, -2.0])


def test_no_grad_context_manager():
    x = leaf([1.0, 2.0])
    assert gt.is_grad_enabled()
    with gt.no_grad():
        assert not gt.is_grad_enabled()
        y = x * 2
        assert not y.requires_grad
        with pytest.warns(GTCompatWarning, match="does nothing"):
            y.sum().backward()          # GT: a no-op, with a warning
        assert x.grad is None
    assert gt.is_grad_enabled()
    assert (x * 2).requires_grad


def test_no_grad_restores_on_exception():
    with pytest.raises(ZeroDivisionError):
        with gt.no_grad():
            1 / 0
    assert gt.is_grad_enabled()


def test_no_grad_decorator():
    x = leaf([1.0, 2.0])

    @gt.no_grad()
    def f(t):
        assert not gt.is_grad_enabled()
        return t * 2

    y = f(x)
    assert not y.requires_grad
    assert gt.is_grad_enabled()
    close(y, [2.0, 4.0])


def test_enable_grad_inside_no_grad():
    x = leaf([1.0])
    with gt.no_grad():
        with gt.enable_grad():
            y = x * 2
        assert not gt.is_grad_enabled()
    assert y.requires_grad


def test_detach(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    close(d, a)
    assert not (d * 2).requires_grad
    h = x * 2
    hd = h.detach()                 # detach of a pending, non-leaf result
    assert not hd.requires_grad
    (x * hd).sum().backward()       # hd is a constant: d/dx (x * 2x_const) = 2a
    close(x.grad, 2 * a)
    close(hd, 2 * a)


def test_requires_grad_on_computed_tensor_makes_a_new_leaf(rng):
    w = gt.tensor(rng.standard_normal(3), dtype=F64) * 2
    w.requires_grad = True
    assert w.is_leaf and w.requires_grad
    (w * 3).sum().backward()
    close(w.grad, np.full(3, 3.0))


def test_backward_on_non_scalar_needs_gradient(rng):
    a = rng.standard_normal((2, 3))
    x = leaf(a)
    y = x * x
    with pytest.raises(RuntimeError):
        y.backward()
    g = rng.standard_normal((2, 3))
    y.backward(gradient=const(g))
    close(x.grad, 2 * a * g)
    with pytest.raises((ValueError, RuntimeError)):
        (x * 2).backward(gradient=const(np.ones(3)))


def test_backward_on_one_element_non_0d():
    x = leaf([[2.0]])
    (x * x).backward()
    close(x.grad, [[4.0]])


def test_second_backward_through_freed_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError):
        y.backward()


def test_retain_graph_allows_second_backward(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    close(x.grad, 2 * (np.exp(a) * (1 + a)))


def test_backward_after_values_were_read(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    h = x.exp()
    close(h, np.exp(a))              # materializes the forward first
    y = (h * x).sum()
    assert np.isclose(y.item(), (np.exp(a) * a).sum())
    y.backward()
    close(x.grad, np.exp(a) * (1 + a))


def test_training_loop_updates_keep_leaf(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    cur = a.copy()
    for _ in range(3):
        loss = (x * x).sum()
        loss.backward()
        close(x.grad, 2 * cur)
        with gt.no_grad():
            x -= 0.1 * x.grad
        cur = cur - 0.1 * 2 * cur
        x.grad = None
        assert x.is_leaf and x.requires_grad
        close(x, cur)


def test_grad_survives_inplace_update_and_keeps_accumulating():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    with gt.no_grad():
        x += 10
    close(x.grad, [3.0, 3.0])
    (x * x).sum().backward()
    close(x.grad, [3.0 + 22.0, 3.0 + 24.0])


def test_requires_grad_flag_on_leaves():
    x = gt.tensor([1.0, 2.0])
    assert not x.requires_grad
    assert x.requires_grad_() is x
    assert x.requires_grad and x.is_leaf
    (x * x).sum().backward()
    close(x.grad, [2.0, 4.0])
    x.requires_grad = False
    assert not x.requires_grad and not (x * 2).requires_grad
    y = leaf([1.0]) * 2
    with pytest.raises(RuntimeError):
        y.requires_grad = False          # only leaves can drop requires_grad


# ---- in-place ops on leaves ----------------------------------------------------------------------
@pytest.mark.parametrize("op,fn", [
    ("+=", lambda t: t.__iadd__(1.5)),
    ("-=", lambda t: t.__isub__(0.5)),
    ("*=", lambda t: t.__imul__(3.0)),
    ("/=", lambda t: t.__itruediv__(2.0)),
    ("zero_", lambda t: t.zero_()),
    ("copy_", lambda t: t.copy_(gt.tensor([7.0, 8.0, 9.0], dtype=F64))),
    ("copy_-broadcast", lambda t: t.copy_(gt.tensor([7.0], dtype=F64))),
    ("setitem", lambda t: t.__setitem__(slice(0, 2), 4.0)),
    ("setitem-index", lambda t: t.__setitem__([2, 0], gt.tensor([5.0, 6.0], dtype=F64))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_inplace_on_leaf(op, fn):
    a = np.array([1.0, 2.0, 3.0])
    expected = {
        "+=": a + 1.5, "-=": a - 0.5, "*=": a * 3.0, "/=": a / 2.0, "zero_": np.zeros(3),
        "copy_": np.array([7.0, 8.0, 9.0]), "copy_-broadcast": np.full(3, 7.0),
        "setitem": np.array([4.0, 4.0, 3.0]), "setitem-index": np.array([6.0, 2.0, 5.0]),
    }[op]
    for outside_no_grad in (False, True):
        x = leaf(a)
        with warnings.catch_warnings():  # outside no_grad: GT's rule, updated and not recorded (warns)
            warnings.simplefilter("ignore", GTCompatWarning)
            with gt.no_grad() if not outside_no_grad else contextlib.nullcontext():
                r = fn(x)
        if op in ("+=", "-=", "*=", "/="):
            x = r                           # what `x += ...` rebinds x to
        assert x.is_leaf and x.requires_grad
        close(x, expected)
        (x * x).sum().backward()
        close(x.grad, 2 * expected)


def test_inplace_on_leaf_python_syntax():
    x = leaf([1.0, 2.0])
    with gt.no_grad():
        x += 1
        x *= 2
        x -= 1
        x /= 2
        x[0] = 10.0
    assert x.is_leaf and x.requires_grad
    close(x, [10.0, 2.5])
    (x * 3).sum().backward()
    close(x.grad, [3.0, 3.0])


def test_inplace_on_non_leaf_is_recorded(rng):
    a = rng.standard_normal(4)
    x = leaf(a)
    h = x * 2
    h += x                      # h = 3x
    h *= h                      # h = 9x^2
    h[1:3] = 0.0
    h.sum().backward()
    want = 18 * a
    want[1:3] = 0.0
    close(x.grad, want)


def test_setitem_gradient_to_value(rng):
    a, v = rng.standard_normal((4, 3)), rng.standard_normal(3)
    x, val = leaf(a), leaf(v)
    h = x * 1
    h[1:3] = val                 # value broadcast to (2, 3)
    w = rng.standard_normal((4, 3))
    (h * const(w)).sum().backward()
    want_x = w.copy()
    want_x[1:3] = 0
    close(x.grad, want_x)
    close(val.grad, w[1:3].sum(axis=0))
