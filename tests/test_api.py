"""The tensor API surface, checked against NumPy: creation, properties, arithmetic, matmul,
comparisons, reductions, shape functions and indexing."""
import numpy as np
import pytest

import gtnumba as gt


def same(t, want, dtype=None, tol=1e-6):
    """t is a Tensor whose value equals `want` (shape exactly, values to tol, dtype if given)."""
    assert isinstance(t, gt.Tensor), f"expected a Tensor, got {type(t).__name__}"
    want = np.asarray(want)
    got = t.numpy()
    assert t.shape == want.shape, f"shape {t.shape} != {want.shape}"
    assert got.shape == t.shape
    assert got.dtype == t.dtype, f"value dtype {got.dtype} != tensor dtype {t.dtype}"
    if dtype is not None:
        assert t.dtype == dtype, f"dtype {t.dtype} != {dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# ---- creation --------------------------------------------------------------------------------
def test_tensor_from_lists_and_scalars():
    same(gt.tensor([1.5, 2.0]), [1.5, 2.0], gt.float32)
    same(gt.tensor([[1, 2], [3, 4]]), [[1, 2], [3, 4]], gt.int64)
    same(gt.tensor([True, False]), [True, False], gt.bool_)
    t = gt.tensor(3.5)
    assert t.shape == () and t.ndim == 0 and t.dtype == gt.float32
    assert t.item() == 3.5
    same(gt.tensor(7), np.array(7), gt.int64)


def test_tensor_dtype_argument(rng):
    a = rng.standard_normal((2, 3))
    same(gt.tensor(a, dtype=gt.float32), a.astype(np.float32), gt.float32)
    same(gt.tensor(a, dtype=gt.float64), a, gt.float64, tol=0)
    same(gt.tensor([1.7, -2.2], dtype=gt.int64), [1, -2], gt.int64)
    same(gt.tensor([1, 2], dtype=gt.float64), [1.0, 2.0], gt.float64)
    same(gt.tensor(a, dtype="float64"), a, gt.float64, tol=0)
    assert gt.float is gt.float32 and gt.double is gt.float64 and gt.long is gt.int64


def test_numpy_returns_a_copy():
    t = gt.tensor(np.arange(4.0))
    v = t.numpy()
    v[1] = 100
    assert t.numpy()[1] == 1


def test_tensor_copies_its_data():
    # like torch.tensor: the tensor owns a copy; writing to the source array later changes nothing
    a = np.arange(4.0)
    t = gt.tensor(a)
    y = t * 2                       # pending: computed later, from t's value
    a[0] = 100
    np.testing.assert_array_equal(t.numpy(), np.arange(4.0))
    np.testing.assert_array_equal(y.numpy(), 2 * np.arange(4.0))


def test_tensor_float64_from_python_floats_keeps_full_precision():
    values = [0.1, 1 / 3, 1e-10 + 1]
    t = gt.tensor(values, dtype=gt.float64)
    np.testing.assert_array_equal(t.numpy(), np.array(values))
    assert gt.tensor(0.1, dtype=gt.float64).item() == 0.1
    assert gt.tensor([[0.1]], dtype="float64").item() == 0.1
    assert gt.tensor(0.1, dtype=gt.float64, requires_grad=True).item() == 0.1


def test_tensor_from_numpy_scalar_keeps_its_dtype():
    # a NumPy float64 scalar carries its dtype, like a 0-d float64 array does
    assert gt.tensor(np.array(0.1)).dtype == gt.float64
    t = gt.tensor(np.float64(0.1))
    assert t.dtype == gt.float64 and t.item() == 0.1
    assert gt.tensor(np.float32(0.5)).dtype == gt.float32


def test_from_numpy(rng):
    a = rng.standard_normal((3, 2))
    same(gt.from_numpy(a), a, gt.float64, tol=0)
    same(gt.from_numpy(a.astype(np.float32)), a.astype(np.float32), gt.float32, tol=0)
    same(gt.from_numpy(np.arange(5)), np.arange(5), gt.int64)
    with pytest.raises(TypeError):
        gt.from_numpy([1.0, 2.0])


@pytest.mark.parametrize("fn", ["randn", "rand"])
def test_random_creation(fn):
    f = getattr(gt, fn)
    t = f(3, 4)
    assert t.shape == (3, 4) and t.dtype == gt.float32
    assert f((2, 5)).shape == (2, 5)
    assert f(2, 2, dtype=gt.float64).dtype == gt.float64
    v = f(1000, dtype=gt.float64).numpy()
    if fn == "rand":
        assert v.min() >= 0 and v.max() < 1 and 0.4 < v.mean() < 0.6
    else:
        assert abs(v.mean()) < 0.15 and 0.85 < v.std() < 1.15
    assert f(2, requires_grad=True).requires_grad


def test_manual_seed_repeats_values():
    gt.manual_seed(123)
    a, b = gt.randn(4, 3).numpy(), gt.rand(5).numpy()
    gt.manual_seed(123)
    a2, b2 = gt.randn(4, 3).numpy(), gt.rand(5).numpy()
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    gt.manual_seed(124)
    assert not np.array_equal(gt.randn(4, 3).numpy(), a)


def test_zeros_ones_full():
    same(gt.zeros(2, 3), np.zeros((2, 3)), gt.float32)
    same(gt.zeros((2, 3)), np.zeros((2, 3)), gt.float32)
    same(gt.ones(4), np.ones(4), gt.float32)
    same(gt.ones(2, 2, dtype=gt.int64), np.ones((2, 2), np.int64), gt.int64)
    same(gt.zeros(3, dtype=gt.float64), np.zeros(3), gt.float64)
    same(gt.full((2, 2), 7.5), np.full((2, 2), 7.5), gt.float32)
    same(gt.full((3,), 2, dtype=gt.int64), np.full(3, 2), gt.int64)
    same(gt.zeros(()), np.zeros(()), gt.float32)
    assert gt.ones(2, requires_grad=True).requires_grad


def test_zeros_like_ones_like(rng):
    x = gt.tensor(rng.standard_normal((2, 3)), dtype=gt.float64)
    same(gt.zeros_like(x), np.zeros((2, 3)), gt.float64)
    same(gt.ones_like(x), np.ones((2, 3)), gt.float64)
    i = gt.tensor([[1, 2, 3]])
    same(gt.zeros_like(i), np.zeros((1, 3), np.int64), gt.int64)
    same(gt.ones_like(i, dtype=gt.float32), np.ones((1, 3)), gt.float32)


def test_arange():
    same(gt.arange(5), np.arange(5), gt.int64)
    same(gt.arange(2, 9, 3), np.arange(2, 9, 3), gt.int64)
    same(gt.arange(5, 0, -2), np.arange(5, 0, -2), gt.int64)
    same(gt.arange(0, 1, 0.25), np.arange(0, 1, 0.25), gt.float32)
    same(gt.arange(4, dtype=gt.float64), np.arange(4.0), gt.float64)
    with pytest.raises(ValueError):
        gt.arange(0, 3, 0)


# ---- properties ------------------------------------------------------------------------------
def test_basic_properties(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = gt.tensor(a)
    assert isinstance(t.shape, tuple) and t.shape == (2, 3, 4)
    assert all(type(d) is int for d in t.shape)
    assert t.ndim == 3 and t.dim() == 3
    assert t.dtype == gt.float32 == np.float32
    assert t.numel() == 24 and isinstance(t.numel(), int)
    assert len(t) == 2
    assert not t.requires_grad and t.grad is None and t.is_leaf
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal(t.data.numpy(), a)
    np.testing.assert_array_equal(np.asarray(t), a)
    assert isinstance(t.numpy(), np.ndarray)


def test_shape_of_results_is_tuple_of_ints(rng):
    t = gt.tensor(rng.standard_normal((2, 3)))
    for r in [t + 1, t.sum(0), t.reshape(-1), t.T, t[0], t @ t.T, t.max(axis=1, keepdims=True)]:
        assert isinstance(r.shape, tuple) and all(type(d) is int for d in r.shape)


def test_item_float_len():
    t = gt.tensor([[2.5]])
    assert t.item() == 2.5 and isinstance(t.item(), float)
    assert float(t) == 2.5
    i = gt.tensor([3])
    assert i.item() == 3 and isinstance(i.item(), int)
    assert int(i) == 3
    assert gt.tensor(True).item() is True
    with pytest.raises(ValueError):
        gt.tensor([1.0, 2.0]).item()
    assert len(gt.zeros(5, 2)) == 5
    with pytest.raises(TypeError):
        len(gt.tensor(1.0))


def test_requires_grad_data_detach(rng):
    a = rng.standard_normal(3)
    x = gt.tensor(a, dtype=gt.float64, requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.grad is None
    d = x.detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), a)
    assert not x.data.requires_grad
    np.testing.assert_array_equal(x.data.numpy(), a)
    y = x * 2
    assert y.requires_grad and not y.is_leaf
    assert not y.detach().requires_grad


def test_astype(rng):
    a = rng.standard_normal((2, 3)) * 3
    t = gt.tensor(a, dtype=gt.float64)
    same(t.astype(gt.float32), a.astype(np.float32), gt.float32)
    same(t.astype(gt.int64), a.astype(np.int64), gt.int64)
    same(t.astype(gt.int32), a.astype(np.int32), gt.int32)
    same(t.astype(gt.bool_), a.astype(bool), gt.bool_)
    same(t.astype("float32"), a.astype(np.float32), gt.float32)
    same(t.astype(np.float64), a, gt.float64, tol=0)
    same(gt.tensor([1, 0, 2]).astype(gt.float32), [1.0, 0.0, 2.0], gt.float32)
    same(t.long(), a.astype(np.int64), gt.int64)
    same(t.float(), a.astype(np.float32), gt.float32)
    same(t.double(), a, gt.float64)


def test_repr_shows_values():
    r = repr(gt.tensor([1.5, -2.25]))
    assert "1.5" in r and "-2.25" in r and r.startswith("tensor(")
    r = repr(gt.tensor([[1, 2], [3, 4]]))
    assert all(str(v) in r for v in (1, 2, 3, 4)) and "int64" in r
    r = repr(gt.tensor([0.5], dtype=gt.float64, requires_grad=True))
    assert "0.5" in r and "float64" in r and "requires_grad=True" in r
    assert "3.25" in str(gt.tensor([1.0, 2.25]) + 1)


# ---- arithmetic --------------------------------------------------------------------------------
BINOPS = [
    ("+", lambda a, b: a + b),
    ("-", lambda a, b: a - b),
    ("*", lambda a, b: a * b),
    ("/", lambda a, b: a / b),
    ("**", lambda a, b: a ** b),
]


@pytest.mark.parametrize("name,op", BINOPS, ids=[n for n, _ in BINOPS])
@pytest.mark.parametrize("sa,sb", [((3, 4), (3, 4)), ((3, 1), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)),
                                   ((5,), ())])
def test_binary_broadcasting(rng, name, op, sa, sb):
    a = np.asarray(rng.random(sa) + 0.5)            # 0-d stays a 0-d ndarray
    b = np.asarray(rng.standard_normal(sb) if name != "/" else rng.random(sb) + 0.5)
    x, y = gt.tensor(a), gt.tensor(b)
    assert x.dtype == y.dtype == gt.float64
    same(op(x, y), op(a, b), gt.float64, tol=1e-12)
    same(op(x, b), op(a, b), gt.float64, tol=1e-12)       # ndarray on the right
    same(op(a, y), op(a, b), gt.float64, tol=1e-12)       # ndarray on the left


@pytest.mark.parametrize("name,op", BINOPS, ids=[n for n, _ in BINOPS])
def test_scalar_on_either_side(rng, name, op):
    a = rng.random((2, 3)) + 0.5
    x = gt.tensor(a, dtype=gt.float32)
    for s in (2, 2.5, -1.25 if name != "**" else 1.25):
        same(op(x, s), op(a.astype(np.float32), np.float32(s)), gt.float32, tol=1e-5)
        same(op(s, x), op(np.float32(s), a.astype(np.float32)), gt.float32, tol=1e-5)
    x64 = gt.tensor(a, dtype=gt.float64)
    same(op(x64, 3), op(a, 3), gt.float64, tol=1e-12)
    same(op(0.5, x64), op(0.5, a), gt.float64, tol=1e-12)


def test_unary_minus_abs_and_math(rng):
    a = rng.standard_normal((3, 2))
    x = gt.tensor(a, dtype=gt.float64)
    same(-x, -a, gt.float64)
    same(abs(x), np.abs(a), gt.float64)
    same(x.abs(), np.abs(a))
    same(x.exp(), np.exp(a))
    same(gt.exp(x), np.exp(a))
    same((x * x + 1).sqrt(), np.sqrt(a * a + 1))
    same(gt.log(x * x + 1), np.log(a * a + 1))
    same(x.tanh(), np.tanh(a))
    same(x.sigmoid(), 1 / (1 + np.exp(-a)))
    same(x.relu(), np.maximum(a, 0))
    same(x.clamp(-0.5, 0.5), np.clip(a, -0.5, 0.5))
    same(x.clamp(min=0.1), np.maximum(a, 0.1))
    same(gt.maximum(x, 0.2), np.maximum(a, 0.2))
    same(gt.minimum(x, x * 2), np.minimum(a, a * 2))
    same(gt.where(x > 0, x, -x), np.abs(a))


def test_integer_arithmetic():
    i = gt.tensor([1, 2, 3])
    same(i + 1, [2, 3, 4], gt.int64)
    same(i * i, [1, 4, 9], gt.int64)
    same(2 - i, [1, 0, -1], gt.int64)
    same(i / 2, [0.5, 1.0, 1.5], gt.float32)


def test_int_tensor_with_python_float_is_float32():
    # PyTorch's rule (and dtypes.scalar_dtype's): a Python float next to an integer tensor
    # takes the default float dtype, so the result is float32, not float64
    i = gt.tensor([1, 2, 3])
    same(i + 1.5, [2.5, 3.5, 4.5], gt.float32)
    same(1.5 * i, [1.5, 3.0, 4.5], gt.float32)


def test_float_tensor_dtype_is_kept_next_to_scalars():
    x = gt.tensor([1.0, 2.0])
    assert (x + 1).dtype == gt.float32
    assert (x * 2.5).dtype == gt.float32
    assert (x ** 2).dtype == gt.float32
    assert (True + x).dtype == gt.float32


DTYPE_PAIRS = [("bool", "bool"), ("int64", "int64"), ("int32", "int32"), ("int32", "int64"),
               ("int64", "bool"), ("int64", "float32"), ("bool", "float32"), ("float32", "float64"),
               ("int32", 2), ("int64", 3), ("bool", 2), ("int64", 2.5), ("bool", 1.5), ("float32", 2)]


@pytest.mark.parametrize("name,op", BINOPS, ids=[n for n, _ in BINOPS])
@pytest.mark.parametrize("da,db", DTYPE_PAIRS, ids=str)
def test_binary_value_has_the_declared_dtype(name, op, da, db):
    """Whatever result dtype a binary op declares, its value has that dtype and equals the
    op computed in that dtype (or the op is refused at the call, naming the dtypes)."""
    a_np = np.array([1, 2, 3]).astype(da) if da != "bool" else np.array([True, True, False])
    x = gt.tensor(a_np)
    if isinstance(db, str):
        b_np = np.array([3, 1, 2]).astype(db) if db != "bool" else np.array([True, True, True])
        y, b_val = gt.tensor(b_np), b_np
    else:
        y = b_val = db
    try:
        r = op(x, y)
    except (TypeError, ValueError):
        return                          # refused at the call: fine
    declared = r.dtype
    v = r.numpy()
    assert v.dtype == declared, f"{da} {name} {db}: declared {declared}, value is {v.dtype}"
    with np.errstate(divide="ignore", invalid="ignore"):
        want = op(a_np.astype(declared), np.asarray(b_val).astype(declared))
    np.testing.assert_allclose(v, want, rtol=1e-6)


def test_clamp_of_int_tensor_keeps_declared_dtype():
    r = gt.tensor([-3, 0, 5]).clamp(-1, 2)
    v = r.numpy()
    assert v.dtype == r.dtype
    np.testing.assert_array_equal(v, [-1, 0, 2])


def test_mixed_tensor_dtypes_promote():
    f32 = gt.tensor([1.0, 2.0])
    f64 = gt.tensor([1.0, 2.0], dtype=gt.float64)
    assert (f32 + f64).dtype == gt.float64
    assert (f64 * f32).dtype == gt.float64
    b = gt.tensor([True, False])
    assert (b + b).dtype == gt.int64


# ---- matmul ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sa,sb", [
    ((4,), (4,)),
    ((3, 4), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
    ((1, 3, 4), (2, 4, 1)),
], ids=str)
def test_matmul_shapes_and_values(rng, sa, sb):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    x, y = gt.tensor(a, dtype=gt.float64), gt.tensor(b, dtype=gt.float64)
    want = a @ b
    same(x @ y, want, gt.float64, tol=1e-12)
    same(gt.matmul(x, y), want, tol=1e-12)
    same(x @ b, want, tol=1e-12)
    same(a @ y, want, tol=1e-12)


def test_matmul_float32_and_errors(rng):
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    same(gt.tensor(a) @ gt.tensor(b), a @ b, gt.float32, tol=1e-5)
    with pytest.raises(ValueError):
        gt.tensor(a) @ gt.tensor(a)
    with pytest.raises(ValueError):
        gt.zeros(2, 3, 4) @ gt.zeros(3, 4, 5)   # batch dims 2 and 3 do not broadcast
    with pytest.raises(ValueError):
        gt.tensor(1.0) @ gt.zeros(3)


# ---- comparisons -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [
    lambda a, b: a == b, lambda a, b: a != b, lambda a, b: a < b,
    lambda a, b: a <= b, lambda a, b: a > b, lambda a, b: a >= b,
], ids=["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons_return_bool_without_grad(op):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    b = np.array([2.0, 2.0, 2.0])
    x = gt.tensor(a, dtype=gt.float64, requires_grad=True)
    for other, other_np in [(gt.tensor(b, dtype=gt.float64), b), (2.0, 2.0), (2, 2), (b, b)]:
        r = op(x, other)
        same(r, op(a, other_np), gt.bool_)
        assert not r.requires_grad
    r = op(2.0, x)
    same(r, op(2.0, a), gt.bool_)
    i = gt.tensor([1, 2, 3])
    same(op(i, 2), op(np.array([1, 2, 3]), 2), gt.bool_)


# ---- reductions ----------------------------------------------------------------------------------
AXES = [None, 0, 1, 2, -1, -2, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(rng, name, axis, keepdims):
    a = rng.standard_normal((3, 4, 5))
    x = gt.tensor(a, dtype=gt.float64)
    want = getattr(np, name)(a, axis=axis, keepdims=keepdims)
    same(getattr(x, name)(axis=axis, keepdims=keepdims), want, gt.float64, tol=1e-12)
    same(getattr(x, name)(dim=axis, keepdim=keepdims), want, gt.float64, tol=1e-12)
    same(getattr(gt, name)(x, axis, keepdims=keepdims), want, gt.float64, tol=1e-12)


def test_reduction_defaults_and_dtypes(rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    x = gt.tensor(a)
    r = x.sum()
    assert r.shape == () and r.dtype == gt.float32
    np.testing.assert_allclose(r.item(), a.sum(), rtol=1e-5)
    assert x.mean(1).dtype == gt.float32
    i = gt.tensor(np.arange(12).reshape(3, 4))
    same(i.sum(axis=0), np.arange(12).reshape(3, 4).sum(0), gt.int64)
    same(i.max(axis=1), [3, 7, 11], gt.int64)
    m = i.mean()
    assert m.dtype.kind == "f" and np.isclose(m.item(), 5.5)
    same(gt.tensor([True, True, False]).sum(), np.array(2), gt.int64)


def test_var_ddof_and_std(rng):
    a = rng.standard_normal((4, 6))
    x = gt.tensor(a, dtype=gt.float64)
    same(x.var(axis=1, ddof=1), a.var(axis=1, ddof=1), tol=1e-12)
    same(x.var(unbiased=True), np.array(a.var(ddof=1)), tol=1e-12)
    same(x.std(axis=0), a.std(axis=0), tol=1e-12)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -3])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(rng, name, axis, keepdims):
    a = rng.standard_normal((3, 4, 5))
    x = gt.tensor(a)
    want = getattr(np, name)(a, axis=axis, keepdims=keepdims)
    r = getattr(x, name)(axis=axis, keepdims=keepdims)
    same(r, want, gt.int64)
    assert not r.requires_grad
    same(getattr(x, name)(dim=axis, keepdim=keepdims), want, gt.int64)


def test_reduction_errors():
    x = gt.zeros(2, 3)
    with pytest.raises(IndexError):
        x.sum(axis=2)
    with pytest.raises(IndexError):
        x.max(axis=-3)
    with pytest.raises(ValueError):
        x.sum(axis=(0, 0))
    with pytest.raises(IndexError):
        x.argmax(axis=5)


# ---- shape functions -----------------------------------------------------------------------------
@pytest.fixture
def a234(rng):
    return rng.standard_normal((2, 3, 4))


@pytest.mark.parametrize("shape", [(24,), (-1,), (4, -1), (2, -1, 3), (6, 4), ((3, 8),), ([2, 12],), (1, 24, 1)],
                         ids=str)
def test_reshape_and_view(a234, shape):
    x = gt.tensor(a234)
    args = shape if not isinstance(shape[0], (tuple, list)) else shape
    want = a234.reshape(*shape) if not isinstance(shape[0], (tuple, list)) else a234.reshape(shape[0])
    same(x.reshape(*args), want)
    same(x.view(*args), want)
    assert -1 not in x.reshape(*args).shape


def test_reshape_errors():
    x = gt.zeros(2, 3)
    with pytest.raises(ValueError):
        x.reshape(4, 2)
    with pytest.raises(ValueError):
        x.reshape(-1, -1)
    with pytest.raises(ValueError):
        x.reshape(4, -1)


def test_flatten(a234):
    x = gt.tensor(a234)
    same(x.flatten(), a234.reshape(-1))
    same(x.flatten(1), a234.reshape(2, 12))
    same(x.flatten(0, 1), a234.reshape(6, 4))
    same(gt.flatten(x), a234.reshape(-1))
    same(gt.tensor(2.0).flatten(), np.array([2.0]))


@pytest.mark.parametrize("axis", [0, 1, 3, -1, -4])
def test_unsqueeze(a234, axis):
    same(gt.tensor(a234).unsqueeze(axis), np.expand_dims(a234, axis))


def test_squeeze(rng):
    a = rng.standard_normal((1, 3, 1, 2))
    x = gt.tensor(a)
    same(x.squeeze(), np.squeeze(a))
    same(x.squeeze(0), np.squeeze(a, 0))
    same(x.squeeze(2), np.squeeze(a, 2))
    same(x.squeeze(-2), np.squeeze(a, -2))
    same(x.squeeze(dim=0), np.squeeze(a, 0))
    same(x.squeeze(1), a)            # PyTorch: squeezing a non-1 dim is a no-op
    same(gt.tensor([[5.0]]).squeeze(), np.array(5.0))


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0), (-1, 0, 1)], ids=str)
def test_permute(a234, perm):
    x = gt.tensor(a234)
    want = a234.transpose([p % 3 for p in perm])
    same(x.permute(*perm), want)
    same(x.permute(perm), want)
    same(gt.permute(x, perm), want)


def test_permute_errors():
    with pytest.raises(ValueError):
        gt.zeros(2, 3).permute(0, 0)
    with pytest.raises(ValueError):
        gt.zeros(2, 3).permute(0)


@pytest.mark.parametrize("a,b", [(0, 1), (0, 2), (1, -1), (-1, -3), (1, 1)])
def test_transpose(a234, a, b):
    same(gt.tensor(a234).transpose(a, b), np.swapaxes(a234, a, b))


def test_T_swaps_last_two_axes(rng, a234):
    same(gt.tensor(a234).T, np.swapaxes(a234, -1, -2))
    m = rng.standard_normal((3, 5))
    same(gt.tensor(m).T, m.T)
    v = rng.standard_normal(4)
    same(gt.tensor(v).T, v)


@pytest.mark.parametrize("src,target", [((3, 1), (3, 4)), ((3, 1), (2, 3, 4)), ((4,), (3, 4)),
                                        ((1,), (5,)), ((), (2, 2)), ((3, 1), (-1, 4)),
                                        ((3, 1), (2, -1, 4))], ids=str)
def test_expand(rng, src, target):
    a = rng.standard_normal(src)
    want_shape = tuple(s if t == -1 else t for s, t in zip((1,) * (len(target) - len(src)) + src, target))
    same(gt.tensor(a).expand(*target), np.broadcast_to(a, want_shape))
    same(gt.tensor(a).expand(target), np.broadcast_to(a, want_shape))


def test_expand_errors():
    with pytest.raises(ValueError):
        gt.zeros(3, 2).expand(3, 4)
    with pytest.raises(ValueError):
        gt.zeros(3, 2).expand(2)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_cat(rng, axis):
    shapes = {0: [(2, 3), (1, 3), (4, 3)], 1: [(2, 3), (2, 1), (2, 2)]}[axis % 2]
    arrays = [rng.standard_normal(s) for s in shapes]
    want = np.concatenate(arrays, axis=axis)
    same(gt.cat([gt.tensor(a) for a in arrays], axis=axis), want)
    same(gt.cat([gt.tensor(a) for a in arrays], dim=axis), want)
    same(gt.concatenate([gt.tensor(a) for a in arrays], axis=axis), want)
    same(gt.cat([gt.tensor(arrays[0])], axis=axis), arrays[0])


def test_cat_errors():
    with pytest.raises(ValueError):
        gt.cat([gt.zeros(2, 3), gt.zeros(3, 2)], axis=0)
    with pytest.raises(ValueError):
        gt.cat([gt.zeros(2, 3), gt.zeros(2)], axis=0)
    with pytest.raises(IndexError):
        gt.cat([gt.zeros(2, 3), gt.zeros(2, 3)], axis=2)
    with pytest.raises(ValueError):
        gt.cat([])


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_stack(rng, axis):
    arrays = [rng.standard_normal((2, 3)) for _ in range(3)]
    want = np.stack(arrays, axis=axis)
    same(gt.stack([gt.tensor(a) for a in arrays], axis=axis), want)
    same(gt.stack([gt.tensor(a) for a in arrays], dim=axis), want)


def test_stack_errors():
    with pytest.raises(ValueError):
        gt.stack([gt.zeros(2, 3), gt.zeros(3, 2)])
    with pytest.raises(IndexError):
        gt.stack([gt.zeros(2, 3), gt.zeros(2, 3)], axis=3)


@pytest.mark.parametrize("arg,axis", [(2, 0), (3, 0), (1, 1), (5, 0), ([1, 4], 0), ([2, 0, 1], 1), (2, -1)])
def test_split(rng, arg, axis):
    a = rng.standard_normal((5, 3))
    n = a.shape[axis]
    if isinstance(arg, int):
        bounds = list(range(arg, n, arg))
    else:
        bounds = list(np.cumsum(arg)[:-1])
    want = np.split(a, bounds, axis=axis)
    # gt.split returns a tuple (PyTorch); the method returns a list (GT's Tensor.split)
    for parts, kind in ((gt.tensor(a).split(arg, axis=axis), list), (gt.split(gt.tensor(a), arg, axis), tuple),
                        (gt.tensor(a).split(arg, dim=axis), list)):
        assert isinstance(parts, kind) and len(parts) == len(want)
        for p, w in zip(parts, want):
            same(p, w)


def test_split_errors():
    with pytest.raises(ValueError):
        gt.zeros(5).split([2, 2])
    with pytest.raises(ValueError):
        gt.zeros(5).split(0)


# ---- indexing ----------------------------------------------------------------------------------
@pytest.fixture
def a345(rng):
    return rng.standard_normal((3, 4, 5))


INDEX_KEYS = [
    0, -1, 2, (1, 2), (-1, -2, -3), (0, 1, 4),
    slice(None), slice(1, None), slice(None, None, 2), slice(None, None, -1), slice(-2, None),
    (slice(None), slice(1, 3)), (slice(None, None, -2), 1), (Ellipsis, 0), (Ellipsis, slice(None, None, 3)),
    (1, Ellipsis, 2), (None,), (None, 1), (slice(None), None, 2), (Ellipsis, None), (0, None, None, 1),
    (slice(5, 1, -1), slice(None), slice(4, 0, -2)), (slice(10, 20),), (slice(-100, 100),),
]


@pytest.mark.parametrize("key", INDEX_KEYS, ids=repr)
def test_basic_indexing(a345, key):
    x = gt.tensor(a345)
    same(x[key], a345[key])


ARRAY_KEYS = [
    [0, 2, 2],
    [[0, 1], [2, 2]],
    (slice(None), [3, 0, 3]),
    ([0, 2], [1, 3]),
    ([0, 2], slice(None), [4, 0]),          # non-adjacent arrays: NumPy moves their dims first
    (Ellipsis, [-1, 0]),
    (1, [0, 3], slice(None, None, 2)),
    ([-1, -3],),
]


@pytest.mark.parametrize("key", ARRAY_KEYS, ids=repr)
@pytest.mark.parametrize("kind", ["list", "ndarray", "tensor"])
def test_integer_array_indexing(a345, key, kind):
    def conv(k):
        if isinstance(k, list):
            return {"list": k, "ndarray": np.array(k), "tensor": gt.tensor(k)}[kind]
        return k
    gkey = tuple(conv(k) for k in key) if isinstance(key, tuple) else conv(key)
    nkey = tuple(np.array(k) if isinstance(k, list) else k for k in key) if isinstance(key, tuple) \
        else np.array(key)
    same(gt.tensor(a345)[gkey], a345[nkey])


def test_0d_int_tensor_index(a345):
    same(gt.tensor(a345)[gt.tensor(2)], a345[2])


def test_int32_index_tensor(a345):
    same(gt.tensor(a345)[gt.tensor([2, 0], dtype=gt.int32)], a345[[2, 0]])


@pytest.mark.parametrize("kind", ["ndarray", "tensor", "comparison"])
def test_bool_mask_indexing(a345, kind):
    mask = a345 > 0
    x = gt.tensor(a345)
    m = {"ndarray": mask, "tensor": gt.tensor(mask), "comparison": x > 0}[kind]
    same(x[m], a345[mask])
    row = a345[:, 0, 0] > 0
    mr = {"ndarray": row, "tensor": gt.tensor(row), "comparison": x[:, 0, 0] > 0}[kind]
    same(x[mr], a345[row])
    same(x[:, :, np.array([True, False, True, False, True])], a345[:, :, [True, False, True, False, True]])
    same(x[mr, 1:], a345[row, 1:])
    m2 = a345[:, :, 0] > 0
    m2t = {"ndarray": m2, "tensor": gt.tensor(m2), "comparison": x[:, :, 0] > 0}[kind]
    same(x[m2t], a345[m2])
    same(x[m2t, ::2], a345[m2, ::2])


def test_iteration_over_first_axis(a345):
    rows = list(gt.tensor(a345))
    assert len(rows) == 3
    for r, w in zip(rows, a345):
        same(r, w)


def test_indexing_errors(a345):
    x = gt.tensor(a345)
    with pytest.raises(IndexError):
        x[3]
    with pytest.raises(IndexError):
        x[0, 0, 0, 0]
    with pytest.raises(IndexError):
        x[[0, 5]]
    with pytest.raises(IndexError):
        x[..., ...]
    with pytest.raises(IndexError):
        x[:, 1.5]


def test_setitem_under_no_grad_and_on_plain_tensors(a345):
    x = gt.tensor(a345)
    want = a345.copy()
    x[0] = 1.0
    want[0] = 1.0
    x[:, 1:3, ::2] = gt.tensor(np.full((3, 2, 3), 2.0))
    want[:, 1:3, ::2] = 2.0
    x[[2, 1], 0] = gt.tensor([[5.0], [6.0]])
    want[[2, 1], 0] = np.array([[5.0], [6.0]])
    x[x > 1.5] = 0.0
    want[want > 1.5] = 0.0
    same(x, want)
