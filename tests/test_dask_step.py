"""The two-level Dask step on real worker processes: sliced optimizer state gives the in-process
results, the byte counters stay within a ring all-reduce's bound, reads wait only for what they
read, and two training scripts share one cluster."""
import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from distributed import Event, LocalCluster, wait

import gtnumba as gt
import small_mlp
from gtnumba import nn
from gtnumba.sched.distribute import Collective, step_bytes_per_worker
from gtnumba.sched.mesh import current_mesh, set_mesh

HERE = os.path.dirname(os.path.abspath(__file__))

OPTIMIZERS = {
    "sgd-momentum": lambda p: gt.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: gt.optim.Adam(p, lr=0.05, weight_decay=0.01),
    "adamw": lambda p: gt.optim.AdamW(p, lr=0.05),
}


@pytest.fixture(scope="module")
def cluster():
    client = gt.init(workers=2, dashboard=":0")
    yield client
    gt.shutdown()


def _in_process(fn, *args):
    mesh = current_mesh()
    set_mesh(None)
    try:
        return fn(*args)
    finally:
        set_mesh(mesh)


_model, _step = small_mlp.model, small_mlp.step


def _steps(model, opt, rng, steps, batch):
    return [_step(model, opt, rng, batch).item() for _ in range(steps)]


def _train(make_opt, steps=3, batch=5):
    model = _model()
    opt = make_opt(model.parameters())
    losses = _steps(model, opt, np.random.default_rng(2), steps, batch)
    state = [np.asarray(t.numpy()) for st in opt.state.values() for t in st.values() if hasattr(t, "numpy")]
    return losses, [p.numpy() for p in model.parameters()], state


def _trains_like_in_process():
    make = OPTIMIZERS["sgd-momentum"]
    want, got = _in_process(_train, make), _train(make)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1] + got[2], want[1] + want[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sliced_optimizers_match_in_process_on_uneven_batches(cluster):
    for name, make in OPTIMIZERS.items():
        want = _in_process(_train, make)
        got = _train(make)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, err_msg=name)
        for a, b in zip(got[1] + got[2], want[1] + want[2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        assert len(got[2]) == len(want[2]) > 0


def test_trainable_positional_table_slice(cluster):
    def run():
        rng = np.random.default_rng(3)
        pos = gt.tensor(rng.standard_normal((8, 4)), dtype=gt.float32, requires_grad=True)
        opt = gt.optim.SGD([pos], lr=0.1, momentum=0.5)
        for _ in range(3):
            x = gt.tensor(rng.standard_normal((5, 3, 4)), dtype=gt.float32)
            loss = ((x + pos[:3]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item(), pos.numpy()
    want, got = _in_process(run), run()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_bytes_per_worker_within_a_ring_all_reduce(cluster):
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    rng = np.random.default_rng(5)
    _steps(model, opt, rng, 2, 5)          # the first step places the parameters
    runner = current_mesh().runner
    [p.numpy() for p in model.parameters()]           # reading the parameters waits for the update
    before = runner.byte_counters()
    steps = 3
    _steps(model, opt, rng, steps, 5)
    grad_bytes = sum(p.numpy().nbytes for p in model.parameters())
    after = runner.byte_counters()
    W = runner.workers
    formula = step_bytes_per_worker(runner.last_plan)
    for w, address in enumerate(runner.addresses):
        moved = (after[address]["bytes_in"] - before[address]["bytes_in"]) / steps
        assert moved == formula[w]
        # the ring bound, up to rounding when W does not divide the element count
        assert 0 < moved <= 2 * (W - 1) / W * grad_bytes + 4 * max(W - 2, 0), (address, moved, grad_bytes)
        assert (after[address]["tasks"] - before[address]["tasks"]) / steps == 2


def test_two_workers_gather_the_new_parameters_from_their_backups_without_a_pull(cluster, monkeypatch):
    """Each worker's new parameter slices are backed up on the other one, so the next step's first
    level finds its peer's slice in its own store: only the reduce-scatter pulls.  (Each step its own
    tasks, so that a step's end can be waited for.)"""
    from gtnumba.sched import dask_runner
    monkeypatch.setattr(dask_runner, "CHAIN_STEPS", 1)
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    rng = np.random.default_rng(5)
    runner = current_mesh().runner

    def step():
        _step(model, opt, rng, 5).item()
        wait([f for futures, _ in runner.log for f in futures])      # a task ends once its backups are sent

    for _ in range(2):
        step()
    plan = runner.last_plan
    assert {c.kind for c in plan.steps if isinstance(c, Collective) and c.level == 0} == {"gather"}
    before = runner.byte_counters()
    for _ in range(3):
        step()
    after = runner.byte_counters()
    for address in runner.addresses:
        assert after[address]["pull_rpcs"] - before[address]["pull_rpcs"] == 3


def _new_buffers():
    from gtnumba.sched.executor import NEW_BUFFERS
    return dict(NEW_BUFFERS)


def _forget_largest_buffer():
    from gtnumba.sched.executor import NEW_BUFFERS
    NEW_BUFFERS["largest"] = 0


def test_workers_run_their_levels_as_planned_code_that_reuses_its_buffers(cluster):
    """Each level runs on its worker through the in-process executor: from the second step its
    plan is generated code, and a steady-state step takes its parameter-sized buffers from a pool
    (the parameters the client freed come back as the next update's outputs)."""
    from gtnumba.sched import dask_worker as dw
    rng = np.random.default_rng(4)
    w = gt.tensor(rng.standard_normal((512, 64)) / 20, dtype=gt.float32, requires_grad=True)
    opt = gt.optim.SGD([w], lr=0.1, momentum=0.9)

    def step():
        x = gt.tensor(rng.standard_normal((64, 512)), dtype=gt.float32)
        loss = ((x @ w).tanh() ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        # a replaced parameter is freed on the workers once the client collects it: collected now,
        # the count below does not depend on when Python's cycle collector last ran
        gc.collect()
        return loss.item()
    for _ in range(16):                            # pipelined steps (chains): a few buffers are in flight
        step()
    w.numpy()                                      # the update has run
    cluster.run(_forget_largest_buffer)
    for _ in range(4):
        step()
    w.numpy()
    slice_bytes = 512 * 64 * 4 // 2                # each worker's part of the weight (or of its slices)
    largest = {a: c["largest"] for a, c in cluster.run(_new_buffers).items()}
    assert all(n < slice_bytes for n in largest.values()), largest

    def compiled():
        programs = [p for st in dw._STORES.values() for p in [*(p for _, p in st.programs.values()),
                                                             *st.variants.values()]]
        return [seg.block.plan.compiled is not None for program in programs for L in program
                for seg in L.segments if seg.block is not None]
    made = cluster.run(compiled)
    assert all(made.values()) and all(any(v) for v in made.values()), made


def _hold(name, when, event_name):
    """On a worker: calls of dask_worker.<name> for which when(*args) holds wait for a Dask Event
    first (and are counted: _held)."""
    from gtnumba.sched import dask_worker as dw
    run = getattr(dw, name)

    def held(*args):
        if when(*args):
            dw.HELD = getattr(dw, "HELD", 0) + 1
            Event(event_name).wait(60)
            dw.HELD_DONE = getattr(dw, "HELD_DONE", 0) + 1
        return run(*args)
    held.__wrapped_run__ = run
    setattr(dw, name, held)


def _release(name):
    from gtnumba.sched import dask_worker as dw
    setattr(dw, name, getattr(getattr(dw, name), "__wrapped_run__", getattr(dw, name)))


def _held():
    from gtnumba.sched import dask_worker as dw
    return getattr(dw, "HELD", 0)


def _held_done():
    """Held calls that went on (the event was set, or their wait ran out)."""
    from gtnumba.sched import dask_worker as dw
    return getattr(dw, "HELD_DONE", 0)


def _is_update_level(rid, uid, level, *rest):
    """run_level of level 1: reduce-and-update."""
    return level == 1


def _is_after_early_values(holder, *rest):
    """run_steps of what follows the values the client reads early in a level (the rest of the
    level: the backward pass, the update)."""
    from gtnumba.sched import dask_worker as dw
    return any(holder is L.segments[1] for st in dw._STORES.values() for program in st.variants.values()
               for L in program if len(L.segments) > 1)


def test_loss_is_read_while_the_update_still_runs(cluster):
    make = OPTIMIZERS["sgd-momentum"]
    want = _in_process(_train, make, 1)
    event = Event("gtnumba-test-hold")
    cluster.run(_hold, "run_level", _is_update_level, "gtnumba-test-hold")
    try:
        model = _model()
        opt = make(model.parameters())
        loss = _step(model, opt, np.random.default_rng(2))
        assert loss.item() == pytest.approx(want[0][0], rel=1e-5)     # the update is still held
        weight = model[0].weight._node.value
        assert all(p.future.status == "pending" for p in weight.parts)
        event.set()
        np.testing.assert_allclose(model[0].weight.numpy(), want[1][0], rtol=1e-5, atol=1e-6)
    finally:
        event.set()
        cluster.run(_release, "run_level")


def test_kernel_error_in_a_pipelined_step_surfaces_at_the_next_read(cluster):
    """opt.step() does not wait, so a kernel's error comes out at the next read, naming the op
    and the shapes, as in-process; the values that depended on the failed step keep its error,
    and later steps and reads work again (no gt.shutdown() needed)."""
    rng = np.random.default_rng(4)
    table = gt.tensor(rng.standard_normal((4, 3)), dtype=gt.float32, requires_grad=True)
    opt = gt.optim.SGD([table], lr=0.1)

    def step(idx):
        rows = table[gt.tensor(np.array(idx)) * 2]           # values known only when it runs
        loss = (rows ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    assert np.isfinite(step([0, 1]).item())
    loss = step([1, 5])                                       # row 10 of 4: no error yet
    with pytest.raises(IndexError, match=r"index.*out of bounds.*shape"):
        loss.item()
    with pytest.raises(IndexError, match="out of bounds"):
        table.numpy()
    with pytest.raises(IndexError, match="out of bounds"):
        step([0, 1]).item()                                   # it reads the failed update
    _trains_like_in_process()


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import gtnumba as gt
    from gtnumba import nn

    def train(seed):
        gt.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = gt.optim.Adam(model.parameters(), lr=0.05)
        rng = np.random.default_rng(seed)
        for _ in range(8):
            x = gt.tensor(rng.standard_normal((7, 6)), dtype=gt.float32)
            y = gt.tensor(rng.integers(0, 3, 7))
            loss = nn.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
        return [p.numpy() for p in model.parameters()]

    if __name__ == "__main__":
        seed = int(sys.argv[1])
        want = train(seed)
        gt.init(scheduler=sys.argv[2])
        got = train(seed)
        gt.shutdown()
        print("maxdiff", max(float(np.max(np.abs(a - b))) for a, b in zip(got, want)))
""")


def test_two_training_scripts_share_one_cluster(tmp_path):
    script = tmp_path / "two_clients.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=40) as lc:
        procs = [subprocess.Popen([sys.executable, str(script), str(seed), lc.scheduler_address], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
        outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        diff = float(out.split("maxdiff")[1])
        assert diff < 1e-5, out


def test_packed_pieces_keep_their_shapes_and_dtypes_over_the_wire():
    """A pull reply's pieces travel as one buffer (dask_worker.pack): 0-d values, non-contiguous
    slices and mixed dtypes come back as they were, through distributed's own message protocol."""
    from distributed.protocol import dumps, loads
    from gtnumba.sched.dask_worker import pack, unpack
    arrays = [np.float32(2.5), np.array(3.0), np.arange(6.0).reshape(2, 3).T, np.array([1, 2], np.int64),
              np.zeros((0, 4), np.float32)]
    got = unpack(loads(dumps(pack(arrays))))
    assert [(a.shape, a.dtype) for a in got] == [(np.shape(a), np.asarray(a).dtype) for a in arrays]
    for a, b in zip(got, arrays):
        np.testing.assert_array_equal(a, b)
        assert a.flags.writeable
    assert unpack(loads(dumps(pack([])))) == []
    for one in (np.arange(6.0).reshape(2, 3).T, np.float32(1.5), np.arange(4)):          # one piece: no copy if it can
        (got,) = unpack(loads(dumps(pack([one]))))
        assert got.shape == np.shape(one) and got.dtype == np.asarray(one).dtype
        np.testing.assert_array_equal(got, one)


def test_a_value_stored_as_its_wait_starts_wakes_the_waiter(monkeypatch):
    """Store.wait_for registers its wake-up before it looks for the value: a put that lands
    between the lookup and the wait (here: inside the failure check) is not missed."""
    import asyncio
    from gtnumba.sched import dask_worker as dw
    monkeypatch.setattr(dw, "PULL_TIMEOUT", 2.0)
    st = dw.Store()
    failure = st.failure

    def put_then_check(key):
        if key not in st.values:
            st.put(key, 7)
        return failure(key)
    st.failure = put_then_check
    assert asyncio.run(st.wait_for("s-1:3")) == 7
    assert not st.events


def test_a_wait_in_a_dropped_store_fails_at_once(monkeypatch):
    """A task waiting in a client's store (for a dead peer's slice) when the client drops it (its
    mesh carried on without that peer) fails then, not at the pull timeout."""
    import asyncio
    from gtnumba.sched import dask_worker as dw
    monkeypatch.setattr(dw, "PULL_TIMEOUT", 30.0)
    monkeypatch.setattr(dw, "_STORES", {})

    async def main():
        waiting = asyncio.ensure_future(dw.store("r1").wait_for("s-3:5"))
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        dw.drop_store("r1")
        with pytest.raises(RuntimeError, match="dropped"):
            await waiting
        return time.perf_counter() - t0
    assert asyncio.run(main()) < 1.0
    assert "r1" not in dw._STORES


def test_values_stored_together_wake_their_reader_together(monkeypatch):
    """A level's early values (the loss, the accuracy, the logits) are stored at once: the read
    woken by the loss finds the others there too and takes them along, even when the loop runs
    that read as soon as it is woken (waking is a syscall: the storing thread loses the GIL)."""
    import asyncio
    import threading
    from gtnumba.sched import dask_worker as dw
    st, seen, checked = dw.Store(), {}, threading.Event()

    async def main():
        loop = asyncio.get_running_loop()

        def on_loop(fn):                # the woken read runs before the storing thread goes on
            loop.call_soon_threadsafe(fn)
            checked.wait(5)
        monkeypatch.setattr(dw, "_on_loop", on_loop)

        async def read():
            await st.wait_for("s-1:1")
            seen["others"] = "s-1:2" in st.values
            checked.set()
        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        thread = threading.Thread(target=st.put_many, args=([("s-1:1", 1, None), ("s-1:2", 2, None)],))
        thread.start()
        await reader
        thread.join()
    asyncio.run(main())
    assert seen["others"]


def _step_on_worker(token, dask_worker):
    """Whether a task of step `token` is on this worker, ready or running (the scheduler sent
    it, or the task of the chain that runs it: step `c.i` of chain `c`), and whether step `token` stored
    anything here yet."""
    from gtnumba.sched import dask_worker as dw
    task = token.partition(".")[0]
    sent = any(isinstance(k, tuple) and k[1] == task and ts.state in ("ready", "executing", "long-running")
               for k, ts in dask_worker.state.tasks.items())
    return sent, any(k.startswith(token + ":") for st in dw._STORES.values() for k in st.values)


def test_a_read_value_is_stored_before_the_rest_of_its_level_and_the_next_step_is_sent(cluster):
    """The loss the client reads is stored as soon as it is made, not after the update that
    follows it in the same level: the read returns while the update is held.  The next step's
    tasks reach the workers meanwhile (no Dask dependency between steps: no scheduler hop) and
    run after it."""
    make = OPTIMIZERS["adam"]
    want = _in_process(_train, make, 6)
    event = Event("gtnumba-test-early")
    model = _model()
    opt = make(model.parameters())
    rng = np.random.default_rng(2)
    for i in range(4):        # steady state, and the client has read the loss of its plan
        assert _step(model, opt, rng).item() == pytest.approx(want[0][i], rel=1e-5)
    done = cluster.run(_held_done)
    cluster.run(_hold, "run_steps", _is_after_early_values, "gtnumba-test-early")
    try:
        assert _step(model, opt, rng).item() == pytest.approx(want[0][4], rel=1e-5)   # its update waits
        assert all(n >= 1 for n in cluster.run(_held).values())
        assert cluster.run(_held_done) == done        # the read did not wait for a held call to time out
        last = _step(model, opt, rng)
        token = last._node.value.parts[0].key.split(":")[0]
        for _ in range(100):            # no Dask dependency on the held step: the next one is sent now
            seen = cluster.run(_step_on_worker, token)
            if all(sent for sent, _ in seen.values()):
                break
            time.sleep(0.05)
        assert all(sent and not stored for sent, stored in seen.values()), seen
        event.set()
        assert last.item() == pytest.approx(want[0][5], rel=1e-5)
        for got, ref in zip([p.numpy() for p in model.parameters()], want[1]):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    finally:
        event.set()
        cluster.run(_release, "run_steps")
