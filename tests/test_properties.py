"""Property tests: random chains of ops on random small float64 tensors.

Hypothesis draws a start shape (1-4 dims of size 1-4) and a chain of 3-6 ops (unary math,
broadcasting binaries with fresh operand leaves, scalar arithmetic, reductions, reshape, permute,
transpose, matmul, expand, slicing, softmax).  Each op is built twice: on gtnumba tensors and on a
NumPy mirror.  The forward values must agree, and the gradients that backward() gives every leaf
must agree with central finite differences of the NumPy mirror.  Values come from a seeded NumPy
generator (not from Hypothesis) so that no op sits on a kink or overflows.
"""
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gtnumba as gt

MAX_NUMEL = 96
_erf = np.vectorize(math.erf, otypes=[np.float64])

# name -> (gtnumba function, NumPy mirror); every one is smooth and bounded on bounded inputs
UNARY = {
    "tanh": (lambda t: t.tanh(), np.tanh),
    "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a))),
    "exp_tanh": (lambda t: t.tanh().exp(), lambda a: np.exp(np.tanh(a))),
    "sqrt_sq1": (lambda t: (t * t + 1).sqrt(), lambda a: np.sqrt(a * a + 1)),
    "log_sq1": (lambda t: gt.log(t * t + 1), lambda a: np.log(a * a + 1)),
    "neg": (lambda t: -t, np.negative),
    "square": (lambda t: t * t, lambda a: a * a),
    "pow15": (lambda t: (t * t + 0.5) ** 1.5, lambda a: (a * a + 0.5) ** 1.5),
    "gelu": (lambda t: gt.gelu(t), lambda a: 0.5 * a * (1 + _erf(a / math.sqrt(2)))),
}

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / (b * b + 0.5), lambda a, b: a / (b * b + 0.5)),
    "maximum": (gt.maximum, np.maximum),
    "minimum": (gt.minimum, np.minimum),
}

SCALAR = {
    "mul_r": (lambda t: t * 0.7, lambda a: a * 0.7),
    "rsub": (lambda t: 2.0 - t, lambda a: 2.0 - a),
    "rmul": (lambda t: -1.5 * t, lambda a: -1.5 * a),
    "div": (lambda t: t / 4, lambda a: a / 4),
    "radd": (lambda t: 3 + t, lambda a: 3 + a),
    "rdiv": (lambda t: 2.0 / (t * t + 1), lambda a: 2.0 / (a * a + 1)),
}

REDUCE = {
    "sum": (lambda t, ax, k: t.sum(axis=ax, keepdims=k), lambda a, ax, k: a.sum(axis=ax, keepdims=k)),
    "mean": (lambda t, ax, k: t.mean(axis=ax, keepdims=k), lambda a, ax, k: a.mean(axis=ax, keepdims=k)),
    "max": (lambda t, ax, k: t.max(axis=ax, keepdims=k), lambda a, ax, k: a.max(axis=ax, keepdims=k)),
    "min": (lambda t, ax, k: t.min(dim=ax, keepdim=k), lambda a, ax, k: a.min(axis=ax, keepdims=k)),
    "var": (lambda t, ax, k: t.var(axis=ax, keepdims=k), lambda a, ax, k: a.var(axis=ax, keepdims=k)),
}


def _numel(shape):
    return math.prod(shape)


def _reduced(shape, axes, keep):
    if axes is None:
        axes = tuple(range(len(shape)))
    axes = {a % len(shape) for a in ((axes,) if isinstance(axes, int) else axes)}
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)


def _factor(draw, n):
    """A random shape (1-3 dims) with n elements."""
    dims = []
    rest = n
    for _ in range(draw(st.integers(0, 2))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = draw(st.sampled_from(divisors))
        dims.append(d)
        rest //= d
    dims.append(rest)
    return tuple(draw(st.permutations(dims)))


@st.composite
def chains(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    leaves = [shape]            # leaf 0 is the input; fresh operands are appended
    steps = []                  # (label, gt_fn(h, leaves), np_fn(h, leaves))
    cur = shape
    for _ in range(draw(st.integers(3, 6))):
        kinds = ["unary", "binary", "scalar", "reshape", "expand"]
        if cur:
            kinds += ["reduce", "matmul", "slice", "softmax", "unsqueeze"]
        if len(cur) >= 2:
            kinds += ["permute", "transpose"]
        if 1 in cur:
            kinds += ["squeeze"]
        kind = draw(st.sampled_from(kinds))
        nd = len(cur)

        if kind == "unary":
            name = draw(st.sampled_from(sorted(UNARY)))
            g, n = UNARY[name]
            steps.append((name, lambda h, L, g=g: g(h), lambda h, L, n=n: n(h)))
        elif kind == "scalar":
            name = draw(st.sampled_from(sorted(SCALAR)))
            g, n = SCALAR[name]
            steps.append((f"scalar-{name}", lambda h, L, g=g: g(h), lambda h, L, n=n: n(h)))
        elif kind == "binary":
            name = draw(st.sampled_from(sorted(BINARY)))
            g, n = BINARY[name]
            # operand: the current shape with some dims set to 1, some leading dims dropped,
            # or an extra leading dim (which broadcasts the chain value up)
            ones = [draw(st.booleans()) for _ in cur]
            oshape = tuple(1 if o else d for o, d in zip(ones, cur))
            oshape = oshape[draw(st.integers(0, nd)):]
            if draw(st.booleans()) and _numel(cur) * 3 <= MAX_NUMEL and nd < 4:
                oshape = (draw(st.integers(1, 3)),) + (oshape if len(oshape) == nd else cur)
            j = len(leaves)
            leaves.append(oshape)
            swap = draw(st.booleans())
            if swap:
                steps.append((f"{name}(b{oshape},h)", lambda h, L, g=g, j=j: g(L[j], h),
                              lambda h, L, n=n, j=j: n(L[j], h)))
            else:
                steps.append((f"{name}(h,b{oshape})", lambda h, L, g=g, j=j: g(h, L[j]),
                              lambda h, L, n=n, j=j: n(h, L[j])))
            cur = tuple(np.broadcast_shapes(cur, oshape))
        elif kind == "reduce":
            name = draw(st.sampled_from(sorted(REDUCE)))
            g, n = REDUCE[name]
            how = draw(st.sampled_from(["int", "tuple", "none"]))
            if how == "int":
                axes = draw(st.integers(-nd, nd - 1))
            elif how == "tuple":
                axes = tuple(draw(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True)))
                axes = tuple(a - nd if draw(st.booleans()) else a for a in axes)
            else:
                axes = None
            keep = draw(st.booleans())
            steps.append((f"{name}(axis={axes}, keepdims={keep})",
                          lambda h, L, g=g, a=axes, k=keep: g(h, a, k),
                          lambda h, L, n=n, a=axes, k=keep: n(h, a, k)))
            cur = _reduced(cur, axes, keep)
        elif kind == "reshape":
            new = _factor(draw, _numel(cur))
            arg = new
            if draw(st.booleans()):
                i = draw(st.integers(0, len(new) - 1))
                arg = new[:i] + (-1,) + new[i + 1:]
            steps.append((f"reshape{arg}", lambda h, L, s=arg: h.reshape(s), lambda h, L, s=arg: h.reshape(s)))
            cur = new
        elif kind == "permute":
            perm = tuple(draw(st.permutations(range(nd))))
            steps.append((f"permute{perm}", lambda h, L, p=perm: h.permute(*p),
                          lambda h, L, p=perm: h.transpose(p)))
            cur = tuple(cur[p] for p in perm)
        elif kind == "transpose":
            if draw(st.booleans()):
                steps.append((".T", lambda h, L: h.T, lambda h, L: np.swapaxes(h, -1, -2)))
                cur = cur[:-2] + (cur[-1], cur[-2])
            else:
                a, b = draw(st.integers(-nd, nd - 1)), draw(st.integers(-nd, nd - 1))
                steps.append((f"transpose({a},{b})", lambda h, L, a=a, b=b: h.transpose(a, b),
                              lambda h, L, a=a, b=b: np.swapaxes(h, a, b)))
                c = list(cur)
                c[a], c[b] = c[b], c[a]
                cur = tuple(c)
        elif kind == "matmul":
            k = draw(st.integers(1, 4))
            left = nd >= 2 and draw(st.booleans())

            def batch():    # a batch dim for the operand that broadcasts against cur's
                return draw(st.sampled_from([1, cur[-3]] if nd >= 3 else [1, 2]))
            if left:                    # operand @ h: (.., m, cur[-2]) @ (.., cur[-2], cur[-1])
                oshape = (k, cur[-2])
                if draw(st.booleans()) and nd < 4:
                    oshape = (batch(),) + oshape
                cur = tuple(np.broadcast_shapes(cur[:-2], oshape[:-2])) + (k, cur[-1])
            else:                       # h @ operand
                oshape = (cur[-1],) if draw(st.booleans()) else (cur[-1], k)
                if len(oshape) == 2 and draw(st.booleans()) and nd < 4:
                    oshape = (batch(),) + oshape
                if len(oshape) == 1:
                    cur = cur[:-1]
                elif nd == 1:
                    cur = oshape[:-2] + (k,)
                else:
                    cur = tuple(np.broadcast_shapes(cur[:-2], oshape[:-2])) + (cur[-2], k)
            j = len(leaves)
            leaves.append(oshape)
            if left:
                steps.append((f"b{oshape}@h", lambda h, L, j=j: L[j] @ h, lambda h, L, j=j: L[j] @ h))
            else:
                steps.append((f"h@b{oshape}", lambda h, L, j=j: h @ L[j], lambda h, L, j=j: h @ L[j]))
        elif kind == "expand":
            n = draw(st.integers(1, 3))
            if _numel(cur) * n > MAX_NUMEL or nd >= 4:
                n = 1
            target = (n,) + cur
            steps.append((f"expand{target}", lambda h, L, s=target: h.expand(*s),
                          lambda h, L, s=target: np.broadcast_to(h, s)))
            cur = target
        elif kind == "slice":
            axis = draw(st.integers(0, nd - 1))
            step = draw(st.sampled_from([1, 2, -1, -2]))
            start = draw(st.sampled_from([None, 0, -1, 1]))
            key = (Ellipsis,) + (slice(start, None, step),) + (slice(None),) * (nd - 1 - axis) \
                if draw(st.booleans()) else (slice(None),) * axis + (slice(start, None, step),)
            probe = np.empty(cur)[key]
            if probe.size == 0:
                key = (slice(None),) * axis + (slice(None, None, -1),)
                probe = np.empty(cur)[key]
            steps.append((f"[{key}]", lambda h, L, k=key: h[k], lambda h, L, k=key: h[k]))
            cur = probe.shape
        elif kind == "softmax":
            axis = draw(st.integers(-nd, nd - 1))

            def np_softmax(h, L, a=axis):
                e = np.exp(h - h.max(axis=a, keepdims=True))
                return e / e.sum(axis=a, keepdims=True)
            steps.append((f"softmax({axis})", lambda h, L, a=axis: gt.softmax(h, axis=a), np_softmax))
        elif kind == "unsqueeze":
            axis = draw(st.integers(-nd - 1, nd))
            steps.append((f"unsqueeze({axis})", lambda h, L, a=axis: h.unsqueeze(a),
                          lambda h, L, a=axis: np.expand_dims(h, a)))
            cur = np.expand_dims(np.empty(cur), axis).shape
        elif kind == "squeeze":
            ones = [i for i, d in enumerate(cur) if d == 1]
            axis = draw(st.sampled_from([None] + ones))
            steps.append((f"squeeze({axis})", lambda h, L, a=axis: h.squeeze(a),
                          lambda h, L, a=axis: np.squeeze(h, a)))
            cur = np.squeeze(np.empty(cur), axis).shape
    return leaves, steps, cur


def _run(steps, h, leaves):
    for _, fn, _ in steps:
        h = fn(h, leaves)
    return h


def _run_np(steps, leaves):
    h = leaves[0]
    for _, _, fn in steps:
        h = fn(h, leaves)
    return np.asarray(h, dtype=np.float64)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains(), seed=st.integers(0, 2 ** 32 - 1))
def test_random_chain_forward_and_gradients(chain, seed):
    leaf_shapes, steps, out_shape = chain
    labels = " -> ".join(s[0] for s in steps)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in leaf_shapes]
    leaves = [gt.tensor(a, dtype=gt.float64, requires_grad=True) for a in arrays]

    out = _run(steps, leaves[0], leaves)
    want = _run_np(steps, arrays)
    assert out.shape == want.shape == tuple(out_shape), labels
    assert out.dtype == gt.float64, labels
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=1e-10, err_msg=labels)

    w = rng.standard_normal(want.shape)
    (out * gt.tensor(w, dtype=gt.float64)).sum().backward()

    eps = 1e-6
    for j, a in enumerate(arrays):
        grad = leaves[j].grad
        assert grad is not None, f"leaf {j} got no gradient: {labels}"
        assert grad.shape == a.shape, f"leaf {j}: grad shape {grad.shape} != {a.shape}: {labels}"
        num = np.zeros(a.shape)
        base = [x.copy() for x in arrays]
        flat, nflat = base[j].reshape(-1), num.reshape(-1)
        for n in range(flat.size):
            old = flat[n]
            flat[n] = old + eps
            hi = float(np.sum(w * _run_np(steps, base)))
            flat[n] = old - eps
            lo = float(np.sum(w * _run_np(steps, base)))
            flat[n] = old
            nflat[n] = (hi - lo) / (2 * eps)
        scale = max(1.0, float(np.abs(num).max()))
        np.testing.assert_allclose(grad.numpy(), num, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"gradient of leaf {j} {a.shape}: {labels}")
