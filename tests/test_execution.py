"""Execution: one plan per materialization, cached plans, freed buffers, flat memory."""
import gc
import weakref

import numpy as np

import gtnumba as gt
from gtnumba import sched
from gtnumba.graph import PENDING


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


def test_repeated_counter_step_on_cuda_reads_each_input_once():
    """`t = t + 1` on the CUDA backend: at its first step the counter and the constant 1 are the
    same cached device scalar, so a step bound then would read its first input twice from then on
    (2, 4, 8, ...).  It counts 2, 3, 4, ... like the CPU."""
    from numba import cuda
    if not cuda.is_available():
        import pytest
        pytest.skip("needs Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or a GPU")
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
