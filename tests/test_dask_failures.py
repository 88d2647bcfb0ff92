"""A step's task that fails before it runs its levels, on real Dask workers: the read waiting for
it raises at once with the cause (not after the pull timeout), and later steps work again."""
import numpy as np
import pytest

import gtnumba as gt
import small_mlp
from gtnumba.sched import dask_runner
from gtnumba.sched.mesh import current_mesh
from test_dask_step import _model, _step, _trains_like_in_process


def _short_pull_timeout():
    """On a worker: a read waiting for a value gives up after 30 s (instead of 120 s), so a failure
    that is not reported shows up here as a TimeoutError, not as the cause the tests expect."""
    from gtnumba.sched import dask_worker
    dask_worker.PULL_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster():
    client = gt.init(workers=2, dashboard=":0")
    client.run(_short_pull_timeout)
    yield client
    gt.shutdown()


def _explode():
    raise RuntimeError("gtnumba-test: this step cannot be unpickled")


class _Unpicklable:
    """Stands in for the task function: pickles on the client, fails where it is unpickled."""

    def __call__(self, *args):
        raise AssertionError("never unpickled, never called")

    def __reduce__(self):
        return (_explode, ())


def test_a_step_that_cannot_be_unpickled_fails_its_read_at_once(cluster, monkeypatch):
    model = _model()
    opt = gt.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(3)
    assert np.isfinite(_step(model, opt, rng).item())
    monkeypatch.setattr(dask_runner, "run_levels", _Unpicklable())
    loss = _step(model, opt, rng)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="deserializ"):
        loss.item()
    _trains_like_in_process()


def _fail_before_the_store(name, message):
    """On a worker: the next step's task fails in `name` (run_levels: the Dask task itself, so
    Dask sees it fail; run_level: inside it) before it reaches this client's store."""
    from gtnumba.sched import dask_worker
    real = getattr(dask_worker, name)

    def broken(*args):
        if name == "run_level" and args[2] != 0:
            return real(*args)
        setattr(dask_worker, name, real)
        raise RuntimeError(message)
    broken.__wrapped_real__ = real
    setattr(dask_worker, name, broken)


def _restore(name):
    from gtnumba.sched import dask_worker
    setattr(dask_worker, name, getattr(getattr(dask_worker, name), "__wrapped_real__", getattr(dask_worker, name)))


@pytest.mark.parametrize("where", ["run_levels", "run_level"])
@pytest.mark.parametrize("worker", [0, 1])
def test_a_worker_side_failure_before_the_store_fails_reads_at_once(cluster, worker, where):
    """The task on one worker fails before its step reaches the store; the loss read (a part on
    each worker) and the peer's collectives (waiting for that worker's gradients) fail at once."""
    model = _model()
    opt = gt.optim.Adam(model.parameters(), lr=0.05)
    rng = np.random.default_rng(4)
    assert np.isfinite(_step(model, opt, rng).item())
    model[0].weight.numpy()                            # the update finished: the next task breaks
    address = current_mesh().runner.addresses[worker]
    cluster.run(_fail_before_the_store, where, f"gtnumba-test: worker {worker} broke", workers=[address])
    try:
        loss = _step(model, opt, rng)
        with pytest.raises(RuntimeError, match=f"worker {worker} broke"):
            loss.item()
        with pytest.raises(RuntimeError, match=f"worker {worker} broke"):
            model[0].weight.numpy()                   # its update needed that worker's gradients
    finally:
        cluster.run(_restore, where)
    _trains_like_in_process()


def _refuse_batches(dask_worker):
    """On a worker: the next batch sent to its store is refused."""
    from gtnumba.sched import dask_worker as dw
    real = dw._store_batch

    def refuse(*args):
        dw._store_batch = real
        raise MemoryError("gtnumba-test: no room for this batch")
    dw._store_batch = refuse


def test_a_batch_that_cannot_be_delivered_fails_the_next_read_at_once(cluster):
    """A batch goes straight to its worker's store, with no reply; when it cannot be stored, the
    step waiting for it fails there, and the read waiting for the step raises naming the worker
    and the cause, not after the timeout."""
    import time
    model, opt = small_mlp.big_batch_model()
    rng = np.random.default_rng(6)

    def step():
        return small_mlp.big_batch_step(model, opt, rng)
    assert np.isfinite(step().item())
    runner = current_mesh().runner
    address = runner.addresses[0]
    cluster.run(_refuse_batches, workers=[address])
    loss = step()
    t0 = time.perf_counter()
    cause = f"a batch for worker {address} could not be stored.*no room for this batch"
    with pytest.raises(RuntimeError, match=cause):
        loss.item()
    assert time.perf_counter() - t0 < 20
    # the update of the failed step failed too: reading the parameters raises that cause
    with pytest.raises(RuntimeError, match=cause):
        model.weight.numpy()
    assert time.perf_counter() - t0 < 20


def test_a_batch_arriving_after_its_task_started_wakes_it(cluster, monkeypatch):
    """The task may start before its batch reaches the store (sent on another connection): it waits,
    and the batch's arrival wakes it (a put from the worker's loop, not from a task's thread)."""
    import asyncio
    model, opt = small_mlp.big_batch_model(1)
    rng = np.random.default_rng(7)
    runner = current_mesh().runner
    real = type(runner)._put

    async def late(self, *args):
        await asyncio.sleep(0.5)                      # well after the step's tasks started
        return await real(self, *args)
    monkeypatch.setattr(type(runner), "_put", late)
    losses = [small_mlp.big_batch_step(model, opt, rng).item() for _ in range(3)]
    assert np.all(np.isfinite(losses))


def test_a_step_that_cannot_be_unpickled_fails_the_next_steps_read_at_once(cluster, monkeypatch):
    """No read between the broken step and the next: the next step, whose task reached its worker
    first and waits there for the broken one, fails at once with its cause (it reads the update
    that never ran), not after the pull timeout; later steps work again."""
    model = _model()
    opt = gt.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(5)
    assert np.isfinite(_step(model, opt, rng).item())
    monkeypatch.setattr(dask_runner, "run_levels", _Unpicklable())
    _step(model, opt, rng)
    monkeypatch.undo()
    loss = _step(model, opt, rng)
    with pytest.raises(RuntimeError, match="deserializ"):
        loss.item()
    _trains_like_in_process()
