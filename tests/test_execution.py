"""Execution: one plan per materialization, cached plans, freed buffers, flat memory."""
import gc
import weakref

import numpy as np

import gtnumba as gt
from gtnumba import sched
from gtnumba.graph import PENDING
from conftest import needs_cuda


def _step(w, x, lr=0.1):
    loss = ((x @ w).relu() ** 2).mean()
    loss.backward()
    with gt.no_grad():
        w -= lr * w.grad
        w.grad.zero_()
    return loss


def test_second_identical_step_builds_no_plan():
    gt.manual_seed(0)
    w = gt.randn(5, 3, requires_grad=True)
    x = gt.randn(4, 5)
    _step(w, x).item()                 # first step: w.grad is created (a different graph)
    _step(w, x).item()                 # second step: w.grad exists and is accumulated into
    built = sched.STATS["plans_built"]
    reused = sched.STATS["plans_reused"]
    for _ in range(3):
        _step(w, x).item()
    assert sched.STATS["plans_built"] == built
    assert sched.STATS["plans_reused"] == reused + 3


def test_materialization_takes_every_live_pending_tensor_in_one_plan():
    a = gt.randn(3, 3)
    b = a * 2
    c = a + 1
    runs = sched.STATS["runs"]
    b.numpy()
    assert sched.STATS["runs"] == runs + 1
    assert c._node.value is not None    # computed in the same plan as b
    c.numpy()
    assert sched.STATS["runs"] == runs + 1


def test_intermediates_are_not_kept_after_a_plan():
    x = gt.randn(8, 8)
    y = (x * 2).exp()
    inner = weakref.ref(y._node.inputs[0])
    y.numpy()
    gc.collect()
    assert inner() is None             # x*2 was freed: no tensor or backward needs it
    assert y._node.inputs == ()        # a computed node without grad keeps no inputs


def test_graph_and_memory_stay_flat_over_many_steps():
    gt.manual_seed(1)
    w = gt.randn(16, 16, requires_grad=True)
    x = gt.randn(8, 16)
    for _ in range(5):
        _step(w, x, 0.001).item()
    gc.collect()
    live = len(PENDING)
    import gtnumba.graph as graph
    before = _count_nodes(graph)
    for _ in range(200):
        _step(w, x, 0.001).item()
    gc.collect()
    assert len(PENDING) <= live
    assert _count_nodes(graph) <= before + 5


def _count_nodes(graph):
    return sum(1 for o in gc.get_objects() if type(o) is graph.Node)


def test_never_materialized_loop_flushes_on_its_own():
    import gtnumba.graph as graph
    w = gt.zeros(4)
    with gt.no_grad():
        for _ in range(graph.AUTO_FLUSH_NODES + 10):
            w += 1.0
    assert len(PENDING) < graph.AUTO_FLUSH_NODES
    np.testing.assert_allclose(w.numpy(), graph.AUTO_FLUSH_NODES + 10)


def test_no_gradient_work_for_inputs_that_do_not_require_grad():
    w = gt.randn(4, 4, requires_grad=True)
    x = gt.randn(4, 4)
    loss = (x @ w).sum()
    loss.backward()
    assert x.grad is None
    # only w's gradient path was recorded: no node computes a gradient for x
    assert w.grad is not None
    ops = _ops_of(w.grad._node)
    assert ops.count("matmul") == 1


def _ops_of(node):
    seen, stack, ops = set(), [node], []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        ops.append(n.op)
        stack.extend(n.inputs)
    return ops


@needs_cuda
def test_repeated_counter_step_on_cuda_reads_each_input_once():
    """`t = t + 1` on the CUDA backend: at its first step the counter and the constant 1 are the
    same cached device scalar, so a step bound then would read its first input twice from then on
    (2, 4, 8, ...).  It counts 2, 3, 4, ... like the CPU."""
    from gtnumba.kernels import backend
    saved = backend._current
    gt.set_device("cuda")
    try:
        t, got = gt.tensor(np.array(1, np.int64)), []
        for _ in range(5):
            t = t + 1
            got.append(int(t.item()))
    finally:
        backend._current = saved
    assert got == [2, 3, 4, 5, 6]


def _inline_cases():
    import zlib
    from gtnumba.ops import OPS
    cases = []
    for name in sorted(OPS):
        row = OPS[name]
        if getattr(row.kernels.get("cpu"), "inline", None) is None:
            continue
        for inputs, attrs in row.sample(np.random.default_rng(zlib.crc32(name.encode()))):
            cases.append((name, tuple(np.asarray(a) for a in inputs), dict(attrs)))
    one = np.random.default_rng(0).standard_normal
    cases += [("add", (np.array(1.5), np.array(2.0)), {}), ("sum", (one((2, 3)),), dict(axes=(0, 1), keepdims=False)),
              ("fill", (), dict(shape=(2, 2), value=0.0, dtype=np.dtype("float32"))),
              ("fill", (), dict(shape=(2,), value=-0.0, dtype=np.dtype("float64"))),
              ("matmul", (one((2, 3, 4)), one((4, 5))), {}), ("matmul", (one((4, 40, 3)), one((3, 2))), {}),
              ("fill", (), dict(shape=(2, 3), value=1.5, dtype=np.dtype("float32"))),
              ("fill", (), dict(shape=(), value=-2, dtype=np.dtype("int64"))),
              ("expand", (one((2, 1, 8)).astype(np.float32),), dict(shape=(2, 3, 8))),
              ("expand", (np.array(-1.5),), dict(shape=(4,))),
              ("relu", (np.array(-0.5),), {}), ("cast", (np.array(2.7),), dict(dtype=np.dtype("float32")))]
    return cases


def test_inline_forms_of_generated_plans_compute_what_the_kernels_do():
    """Generated plan code calls NumPy directly (kernels/cpu.py's inline forms): bit for bit the
    kernel's result, an ndarray (never a NumPy scalar), for every row sample that has one."""
    from gtnumba.ops import OPS, Spec
    cases = _inline_cases()
    assert {c[0] for c in cases} >= {"add", "mul", "sum", "reshape", "permute", "matmul", "fill", "div", "pow"}
    inlined = 0
    for name, arrays, attrs in cases:
        row = OPS[name]
        kernel = row.kernels["cpu"]
        ins = [Spec(a.shape, np.dtype(a.dtype)) for a in arrays]
        outs = row.infer(attrs, *ins)
        outs = outs if isinstance(outs, tuple) else (outs,)
        got = kernel.inline([f"a{i}" for i in range(len(arrays))], attrs, ins, outs)
        if got is None:
            continue
        expr, names = got
        value = eval(expr, dict(names, **{f"a{i}": a for i, a in enumerate(arrays)}))
        want = kernel(*arrays, **attrs)
        assert type(value) is np.ndarray, f"{name}: {expr} gave {type(value).__name__}"
        assert value.dtype == want.dtype and value.shape == want.shape == outs[0].shape, f"{name}: {expr}"
        np.testing.assert_array_equal(value, want, err_msg=f"{name}: {expr}")
        assert np.array_equal(np.signbit(value), np.signbit(want)), f"{name}: {expr}"
        inlined += 1
    assert inlined >= len(cases) - 4


def test_generated_plan_step_matches_the_interpreted_one():
    """The same step run interpreted (first run) and as generated code (later runs) gives the
    same values, bit for bit (GT-style model: its plan is all inline forms)."""
    from gt_style_model import gt_forward, init_params, B, S, E, C
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, S, E)).astype(np.float32)
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]
    p = {k: v.astype(np.float32) for k, v in init_params(1).items()}
    got = []
    for _ in range(4):
        P = {k: gt.tensor(v, requires_grad=True) for k, v in p.items()}
        loss = gt_forward(P, gt.tensor(x), gt.tensor(y))
        loss.backward()
        got.append([loss.numpy()] + [P[k].grad.numpy() for k in sorted(P)])
    for later in got[1:]:
        for a, b in zip(got[0], later):
            np.testing.assert_array_equal(a, b)


def test_a_step_repeating_an_earlier_one_is_computed_once():
    """A CPU plan computes a repeated step (same op, attributes and inputs) once and shares its
    value; both results stay right, interpreted and as generated code."""
    from gtnumba.sched.plan import build_plan, describe, pending_order
    xv = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    for _ in range(3):
        x = gt.tensor(xv)
        m = x.sum(-1, keepdims=True)
        a, b = x - m, x - m
        c = a * 2.0 + b
        key, _ = describe(pending_order([a._node, b._node, c._node]))
        kernels = [st.kernel.__name__ for st in build_plan(key, "cpu").steps]
        want = xv - xv.sum(-1, keepdims=True)
        np.testing.assert_array_equal(a.numpy(), want)
        np.testing.assert_array_equal(b.numpy(), want)
        np.testing.assert_array_equal(c.numpy(), want * 2 + want)
    assert kernels.count("subtract") == 1 and kernels.count("alias") == 1, kernels


def test_a_scaled_update_runs_as_one_pass_with_the_bits_of_two():
    """`p - c * g` and `p + c * g` (either order) on planned-size arrays become one fused step in a
    CPU plan, with NumPy's bits (c * g rounded, then the sum); a product something else reads
    stays a step of its own."""
    from gtnumba.sched.plan import build_plan, describe, pending_order
    rng = np.random.default_rng(7)
    pv, gv = (rng.standard_normal((64, 48)).astype(np.float32) for _ in range(2))
    c = [np.float32(v) for v in (0.37, -1.3, 2.1, 0.7)]
    for _ in range(3):                                  # interpreted, then generated code
        p, g = gt.tensor(pv), gt.tensor(gv)
        s = [gt.tensor(np.array(v)) for v in c]
        minus, plus, swapped = p - s[0] * g, p + g * s[1], s[2] * g + p
        prod = g * s[3]
        shared = p - prod
        held = prod * 1.0
        key, _ = describe(pending_order([n._node for n in (minus, plus, swapped, shared, held)]))
        names = [st.kernel.__name__ for st in build_plan(key, "cpu").steps]
        np.testing.assert_array_equal(minus.numpy(), pv - c[0] * gv)
        np.testing.assert_array_equal(plus.numpy(), pv + gv * c[1])
        np.testing.assert_array_equal(swapped.numpy(), c[2] * gv + pv)
        np.testing.assert_array_equal(shared.numpy(), pv - gv * c[3])
        np.testing.assert_array_equal(held.numpy(), gv * c[3])
    assert names.count("scaled_add") == 3 and names.count("subtract") == 1, names


def test_an_update_by_a_product_nothing_else_reads_is_one_gemm_with_the_product_never_stored():
    """`p - c * (x @ y)` and `p + c * (x @ y)` on matrices become one GEMM accumulating into the output,
    for row- and column-ordered and strided operands in float32 and float64; the parameter a live
    tensor still holds keeps its values, and a product something else reads stays a matmul."""
    from gtnumba.sched.plan import build_plan, describe, pending_order
    rng = np.random.default_rng(9)
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        pv = rng.standard_normal((96, 40)).astype(dtype)
        base = rng.standard_normal((12, 200)).astype(dtype)
        yv = rng.standard_normal((12, 40)).astype(dtype)
        for xv in (np.ascontiguousarray(base[:, :96].T), base[:, :96].T, base[:, ::2].T[:96]):
            for _ in range(2):                          # interpreted, then generated code
                p, x, c = gt.tensor(pv), gt.tensor(xv), gt.tensor(np.array(0.3, dtype))
                y = [gt.tensor(yv) for _ in range(3)]          # three products, not one shared
                minus, plus = p - c * (x @ y[0]), p + (y[1].T @ x.T).T * c
                prod = x @ y[2]
                shared, held = p - c * prod, prod * 1.0
                key, _ = describe(pending_order([n._node for n in (minus, plus, shared, held)]))
                names = [st.kernel.__name__ for st in build_plan(key, "cpu").steps]
                want = xv.astype(np.float64) @ yv
                for got, sign in ((minus, -1), (plus, 1), (shared, -1)):
                    np.testing.assert_allclose(got.numpy(), pv + sign * 0.3 * want, rtol=tol, atol=tol)
                np.testing.assert_allclose(held.numpy(), want, rtol=tol, atol=tol)
                np.testing.assert_array_equal(p.numpy(), pv)
            assert names.count("gemm_update") == 1 and names.count("scaled_add") == 2, names


def test_a_weight_trained_by_gemm_updates_is_overwritten_in_place():
    """The GT-style step's `w -= lr * w.grad` with w.grad = x.T @ dy: the GEMM writes into w's own
    buffer once the step repeats, and the weight trains as in NumPy."""
    rng = np.random.default_rng(10)
    wv = rng.standard_normal((4096, 16)).astype(np.float32)
    xv = (rng.standard_normal((8, 4096)) / 64).astype(np.float32)
    w, want, buffers = gt.tensor(wv, requires_grad=True), wv.astype(np.float64), []
    for _ in range(8):
        loss = ((gt.tensor(xv) @ w) ** 2).sum()
        loss.backward()
        with gt.no_grad():
            w -= 0.01 * w.grad
            w.grad.zero_()
        loss.item()
        buffers.append(w._node.value.ctypes.data)
        want = want - 0.01 * (xv.T @ (2 * (xv @ want)))
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-4)
    assert len(set(buffers[3:])) == 1, "a repeated step wrote the weight into another buffer"


def test_the_gt_update_overwrites_the_parameter_in_one_pass():
    """The GT-style `w -= lr * w.grad` of a steady-state step: fused, in place, trains as eager."""
    rng = np.random.default_rng(8)
    wv, xv = rng.standard_normal((256, 32)).astype(np.float32), rng.standard_normal((4, 256)).astype(np.float32)
    w, want = gt.tensor(wv, requires_grad=True), wv.copy()
    for _ in range(4):
        loss = (gt.tensor(xv) @ w).sum()
        loss.backward()
        with gt.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()
        loss.item()
        want = want - np.float32(0.1) * (xv.T @ np.ones((4, 32), np.float32))
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-6, atol=1e-6)


def test_few_rows_times_a_transposed_weight_is_computed_flipped_with_the_same_result():
    """nn.Linear's x @ W.T with few rows runs as (W @ x.T).T (faster in OpenBLAS); through the
    kernel, into a planned buffer, with batched rows and through a generated plan, it gives
    x @ W.T, C-ordered."""
    from gtnumba.kernels import cpu
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((128, 300)).astype(np.float32)            # (out, in): used as weight.T
    for rows in [(16, 300), (2, 4, 300)]:
        x = rng.standard_normal(rows).astype(np.float32)
        want = x.astype(np.float64) @ weight.T.astype(np.float64)
        assert cpu._flips(x.shape, weight.T.shape)
        got = cpu.matmul(x, weight.T)
        out = cpu.matmul(x, weight.T, out=np.empty(want.shape, np.float32))
        for a in (got, out):
            assert a.flags.c_contiguous and a.shape == want.shape
            np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-4)
    layer = gt.nn.Linear(300, 128)
    x = rng.standard_normal((16, 300)).astype(np.float32)
    want = x @ layer.weight.numpy().T + layer.bias.numpy()
    for _ in range(3):                                  # the third run is generated code
        np.testing.assert_allclose(layer(gt.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)
