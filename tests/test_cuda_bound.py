"""Plan steps bound once on the CUDA backend (gtnumba/kernels/cuda/bound.py), the host <-> device
copies of a steady-state training step, and the whole-plan CUDA graph (real GPU only).

- a replayed step runs none of the kernels' host code (checks, layouts, launch configuration)
  and gives the results of the unbound path;
- a steady-state simulated-CUDA training step that reads only its loss makes one device -> host
  copy and copies to the device only its new data (plus Adam's step count, a new 0-d tensor
  that optim makes each step);
- a captured CUDA graph replays a cached training step exactly as the bound steps do.
"""
import numpy as np
import pytest

import gtnumba as gt
from gtnumba import optim
from gtnumba._tensor import apply
from gtnumba.kernels import backend
from gtnumba.kernels.cuda import elementwise, memory
from conftest import needs_cuda

pytestmark = [needs_cuda, pytest.mark.usefixtures("fast_simulator")]
B, E, C = 3, 4, 5


def _drop_cuda_plans():
    """No cached CUDA plan: neither in the plan cache nor held by the traces of replayed steps."""
    from gtnumba.sched import replay
    from gtnumba.sched.plan_cache import _CACHE
    for key in [k for k in _CACHE if k[0] == "cuda"]:
        del _CACHE[key]
    for trace in replay._TRACES.values():
        for variant in trace.variants.values():
            variant.plans.pop("cuda", None)


@pytest.fixture
def on_cuda():
    """The CUDA backend, with no cached CUDA plan before or after."""
    saved = backend._current
    gt.set_device("cuda")
    _drop_cuda_plans()
    yield
    _drop_cuda_plans()
    backend._current = saved


def _params(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((E, C)), rng.standard_normal(C)]


def _train(make_opt, steps, seed=0):
    """Steps of a linear softmax classifier (the raw cross_entropy row: nn.functional reads labels
    on the host for its own check); returns losses, params and the copies of each step."""
    w, b = (gt.tensor(p, dtype=gt.float64, requires_grad=True) for p in _params(seed))
    opt = make_opt([w, b])
    rng = np.random.default_rng(seed + 1)
    losses, copies = [], []
    for _ in range(steps):
        x, labels = rng.standard_normal((B, E)), rng.integers(0, C, B)
        before = dict(memory.COPIES)
        opt.zero_grad()
        logits = gt.tensor(x, dtype=gt.float64) @ w + b
        loss = apply("cross_entropy", logits, gt.tensor(labels))[0].mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        copies.append({k: memory.COPIES[k] - before[k] for k in ("h2d", "d2h")})
    return losses, [w.numpy(), b.numpy()], copies


SGD = lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)          # noqa: E731
ADAM = lambda ps: optim.Adam(ps, lr=0.05)                       # noqa: E731


@pytest.mark.parametrize("make_opt,extra_h2d", [(SGD, 0), (ADAM, 1)], ids=["sgd", "adam"])
def test_steady_state_step_copies(on_cuda, make_opt, extra_h2d):
    _, _, copies = _train(make_opt, 3)
    for c in copies[1:]:
        assert c["d2h"] == 1, f"only the loss comes back: {c}"
        # the new data (x, labels); Adam's step count too, unless an earlier step count of the same
        # value was copied before (0-d constants are copied once per process)
        assert 2 <= c["h2d"] <= 2 + extra_h2d, f"only the new data (x, labels) goes over: {c}"


def test_replayed_steps_skip_the_host_code_and_match(on_cuda, monkeypatch):
    calls = []
    real = elementwise.run
    monkeypatch.setattr(elementwise, "run", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    losses, params, _ = _train(SGD, 3)
    assert calls, "the first steps ran the elementwise host code"
    calls.clear()
    _train(SGD, 1, seed=5)            # a fresh model of the same structure: the cached plans replay
    assert not calls, f"replayed steps ran host code for {sorted(set(calls))}"
    monkeypatch.setenv("GTNUMBA_CUDA_BIND", "0")
    _drop_cuda_plans()
    unbound_losses, unbound_params, _ = _train(SGD, 3)
    assert losses == unbound_losses
    for a, b in zip(params, unbound_params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_cuda_graph_replays_the_cached_step(on_cuda, monkeypatch):
    """On a real GPU, from the third run a cached plan runs as one CUDA graph; its results are
    those of the bound steps (GTNUMBA_CUDA_GRAPHS=0)."""
    from gtnumba.kernels.cuda import graphs, runtime
    from gtnumba.sched.plan_cache import _CACHE
    with_graphs = _train(SGD, 5)
    plans = [p for k, p in _CACHE.items() if k[0] == "cuda"]
    if runtime.SIMULATOR:              # the dry run: the simulator never captures
        assert not graphs.enabled() and all(backend.graph_runner(p) is None for p in plans)
    else:
        captured = [p for p in plans if p.__dict__.get("_cuda_graph")]
        assert captured and all(p._cuda_graph.ok and p._cuda_graph.exec is not None for p in captured)
    monkeypatch.setenv("GTNUMBA_CUDA_GRAPHS", "0")
    _drop_cuda_plans()
    without = _train(SGD, 5)
    np.testing.assert_allclose(with_graphs[0], without[0], rtol=1e-12)
    for a, b in zip(with_graphs[1], without[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


PACKED_SCRIPT = """
import functools, types
import numpy as np
from numba import typeof
from numba.cuda.dispatcher import _Kernel
from gtnumba.kernels.cuda import bound, memory, runtime
assert not runtime.SIMULATOR

class Raw:
    def __init__(self, p):
        self.device_pointer_value = p

class Context:
    top = 1 << 32
    def memalloc(self, size):
        Context.top += size
        return Raw(Context.top)

memory._allocator[:] = [memory._CachingAllocator(context=Context())]
n = 6
def arrays():
    return [memory.empty((2, 3), np.dtype(np.float32)) for _ in range(3)]

def numba_args(values):
    kern = types.SimpleNamespace(argument_types=[typeof(v) for v in values], extensions=[])
    kern._prepare_args = functools.partial(_Kernel._prepare_args, kern)
    out = []
    for t, v in zip(kern.argument_types, values):
        kern._prepare_args(t, v, None, [], out)
    return kern, out

def call_args(out, a, b):
    return [runtime.flat(out), n, (n,), runtime.flat(a), (1,), b.reshape(3, 2), np.float32(0.5), True]

out, a, b = arrays()
kern, _ = numba_args(call_args(out, a, b))
refs = [(bound._TMP, 0, (n,)), None, None, (bound._IN, 0, (n,)), None, (bound._IN, 1, (3, 2)), None, None]
seen = []
packed = bound.pack(kern, call_args(out, a, b), refs, lambda s, c, h, *args: seen.append(list(args)), None, None, None)
out2, a2, b2 = arrays()
packed([a2, b2], [out2])
_, want = numba_args(call_args(out2, a2, b2))
norm = lambda xs: [getattr(x, "value", x) for x in xs]
assert norm(seen[0]) == norm(want), (norm(seen[0]), norm(want))
assert len({runtime.device_pointer(x) for x in (out, a, b, out2, a2, b2)}) == 6
print("packed launch args match Numba's")
"""


def test_packed_launch_arguments_match_numbas_marshalling():
    """On a real GPU a bound launch writes new device pointers into an argument list that Numba's
    own marshalling built once; with the simulator off and fake device pointers (no GPU needed),
    the arguments it hands to the driver equal what Numba's marshalling gives for the new arrays."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", PACKED_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120)
    assert res.returncode == 0 and "match" in res.stdout, res.stdout + res.stderr


class _FakeGraphDriver:
    """Stands in for cuda.bindings' driver in the simulator: 'capture' runs the steps (the
    simulator cannot defer them; data checks they raise on the uninitialized static inputs are
    dropped), and a 'graph launch' runs the plan's bound steps on the static inputs and writes
    the results into the static outputs, as a replayed graph would."""

    class CUstreamCaptureMode:
        CU_STREAM_CAPTURE_MODE_RELAXED = 1

    def __init__(self, fail=False):
        self.fail, self.graphs, self.launches = fail, {}, 0

    def cuStreamBeginCapture(self, stream, mode):
        if self.fail:
            raise RuntimeError("capture refused")
        return (0,)

    def cuStreamEndCapture(self, stream):
        from gtnumba.kernels.cuda import checks
        checks.clear()
        return (0, object())

    def cuGraphInstantiate(self, graph, flags):
        token = object()
        self.graphs[token] = graph
        return (0, token)

    def cuGraphLaunch(self, token, stream):
        import gc
        from gtnumba.kernels.cuda.graphs import GraphPlan
        self.launches += 1
        # every graph, also of plans that replayed steps still hold after the plan cache was cleared
        graphs = [g for g in gc.get_objects() if type(g) is GraphPlan and g.exec is token]
        assert len(graphs) == 1, f"{len(graphs)} graphs for one launch token"
        fresh = graphs[0]._run_steps(graphs[0].static_in)
        for slot, value in graphs[0].static_out.items():
            value.copy_to_device(fresh[slot])
        return (0,)


@pytest.mark.parametrize("fail", [False, True], ids=["captured", "capture-fails"])
def test_graph_runner_plumbing_with_a_stand_in_driver(on_cuda, monkeypatch, fail):
    """The whole-plan graph path in the simulator with a stand-in driver: from the third run of a
    plan its leaves are copied into static inputs, the 'graph' runs, kept values are copied out
    into new arrays; results equal the bound steps' (GTNUMBA_CUDA_GRAPHS=0).  A failed capture
    falls back to the bound steps for good."""
    from gtnumba.kernels.cuda import graphs
    reference = _train(SGD, 5)
    _drop_cuda_plans()
    fake = _FakeGraphDriver(fail)
    monkeypatch.setattr(graphs, "enabled", lambda: True)
    monkeypatch.setattr(graphs, "_driver", lambda: fake)
    monkeypatch.setattr(graphs, "_handle", lambda: 0)
    got = _train(SGD, 5)
    assert got[0] == reference[0]
    for a, b in zip(got[1], reference[1]):
        np.testing.assert_array_equal(a, b)
    from gtnumba.sched.plan_cache import _CACHE
    made = [p._cuda_graph for p in _CACHE.values() if p.__dict__.get("_cuda_graph")]
    assert made, "no plan reached the graph runner"
    if fail:
        assert all(not g.ok for g in made) and fake.launches == 0
        return
    assert all(g.ok for g in made) and fake.launches >= 1
    from gtnumba.kernels.cuda import runtime
    for g in made:        # the graph owns every buffer its launches touch, kept outputs included
        owned = {runtime.device_pointer(b) for b in g.keep.buffers + g.static_in}
        assert all(runtime.device_pointer(v) in owned for v in g.static_out.values())
        assert len(g.keep.buffers) >= sum(len(s.bound.alloc_specs) for s in g.steps)


def test_bad_label_in_a_step_raises_at_the_read_naming_op_and_value(on_cuda):
    """A label out of range inside a plan is found on the device: the step runs to its end without
    a host round trip, and reading its loss raises, naming the op and the label; the next step with
    good labels (replaying the same bound plan) reads fine."""
    w = gt.tensor(_params(0)[0], dtype=gt.float64, requires_grad=True)
    x = gt.tensor(np.ones((B, E)), dtype=gt.float64)

    def loss_of(labels):
        return apply("cross_entropy", x @ w, gt.tensor(np.array(labels)))[0].mean()
    good = loss_of([0, 1, 2]).item()
    d2h = memory.COPIES["d2h"]
    bad = loss_of([0, C + 2, 1])
    with pytest.raises(ValueError, match=f"cross_entropy: label {C + 2} is out of range for {C} classes"):
        bad.item()
    assert memory.COPIES["d2h"] == d2h + 1, "the step itself copied nothing back"
    assert loss_of([0, 1, 2]).item() == good


def test_low_occupancy_warning_is_off():
    import os
    from numba import config
    from gtnumba.kernels.cuda import runtime  # noqa: F401  (sets it)
    if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
        assert config.CUDA_LOW_OCCUPANCY_WARNINGS == 0


def test_a_step_that_cannot_be_replayed_keeps_running_its_host_code():
    """A launch argument the recorder cannot tie to the step's inputs, allocations or the shared
    constants (here a view at an offset into the input) makes the step unbindable: every call
    then runs the kernel function itself, with the right results."""
    from gtnumba.kernels.cuda import bound, runtime, shape

    def tail_copy(x):                   # out = x[1:], through an offset view (no kernel does this)
        n = x.shape[0] - 1
        out = memory.empty((n,), x.dtype)
        runtime.launch(shape._copy, n, out, 0, (1,), x[1:], 0, (1,), n, (n,))
        return out
    runner = bound.StepRunner(tail_copy)
    for start in (0.0, 10.0):
        x = np.arange(start, start + 5)
        np.testing.assert_array_equal(memory.to_host(runner(memory.to_device(x))), x[1:])
        assert runner.bound is None and "neither a step input" in runner.reason


def test_step_runner_binds_one_call_site(on_cuda, monkeypatch):
    from gtnumba.ops import OPS
    calls = []
    real = elementwise.run
    monkeypatch.setattr(elementwise, "run", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    runner = backend.step_runner(OPS["mul"].kernels["cuda"])
    for k in range(3):
        a = memory.to_device(np.arange(4.0) + k)
        np.testing.assert_array_equal(memory.to_host(runner(a, a)), (np.arange(4.0) + k) ** 2)
    assert calls == ["mul"], "the host code ran on the first call only"
    gt.set_device("cpu")
    assert backend.step_runner(OPS["mul"].kernels["cpu"]) is OPS["mul"].kernels["cpu"]
