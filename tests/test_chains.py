"""Predicted steps run in chains (speculate.Chain): one task per worker serves up to CHAIN_STEPS steps, each
started by its go-ahead.  On real Dask workers: chains train as in-process whether or not the loop reads
between steps; a chain ends where the loop leaves it, and the next starts; steps leave the client's replay log
once every worker reported them finished, and the values the loop drops are freed while a chain runs."""
import time

import numpy as np
import pytest

import gtnumba as gt
import small_mlp
from gtnumba.sched import dask_runner, dask_worker
from gtnumba.sched.mesh import current_mesh


@pytest.fixture(scope="module")
def cluster():
    client = gt.init(workers=2, dashboard=":0")
    yield client
    gt.shutdown()


@pytest.fixture
def chains_of_4(monkeypatch):
    monkeypatch.setattr(dask_runner, "CHAIN_STEPS", 4)


def _train(steps, read_every=1, between=None):
    """SGD with momentum for `steps` steps, reading the loss every `read_every` steps (0: never); the
    losses read and the parameters."""
    net = small_mlp.model()
    opt = gt.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(3)
    losses = []
    for i in range(steps):
        loss = small_mlp.step(net, opt, rng)
        if read_every and i % read_every == 0:
            losses.append(loss.item())
        if between is not None:
            between(i, net)
    return losses, [p.numpy() for p in net.parameters()]


def _same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read_every", [1, 3, 0])
def test_chains_train_as_in_process_however_often_the_loop_reads(cluster, chains_of_4, read_every):
    """Reading every step, every third step or never: the steps after the first two run in chains of 4
    (a chain is 2 tasks here), with the in-process losses and parameters."""
    want = small_mlp.in_process(lambda: _train(14, read_every))
    before = small_mlp.runner_stats()
    got = _train(14, read_every)
    after = small_mlp.runner_stats()
    _same(got, want)
    taken = after["predictions_taken"] - before["predictions_taken"]
    assert taken >= 10, taken
    assert after["tasks"] - before["tasks"] <= 2 * ((14 - taken) + -(-taken // 4)), after["tasks"] - before["tasks"]


def test_a_chain_left_mid_way_ends_on_its_workers_and_the_next_starts(cluster, chains_of_4):
    """An evaluation pass (another plan) in the middle of a chain calls off the chain's next step: its tasks
    end, having stored nothing of it; training then starts a new chain, with the in-process results."""
    def evaluate(i, net):
        if i == 5:
            with gt.no_grad():
                small_mlp.model()(gt.tensor(np.ones((2, 6)), dtype=gt.float32)).numpy()
    want = small_mlp.in_process(lambda: _train(12, between=evaluate))
    before = small_mlp.runner_stats()
    got = _train(12, between=evaluate)
    _same(got, want)
    assert small_mlp.runner_stats()["predictions_missed"] > before["predictions_missed"]
    off = [t for ts in cluster.run(lambda: [t for st in dask_worker._STORES.values()
                                            for t in st.called_off]).values() for t in ts]
    assert any("." in t for t in off), off          # a chain's step (`c.i`) was called off
    left = cluster.run(lambda: [k for st in dask_worker._STORES.values() for k in st.values
                                if k.split(":")[0] in set(off)])
    assert not any(left.values()), left


def test_steps_leave_the_replay_log_while_their_chain_runs(cluster):
    """A chain's task ends only after many steps; its steps leave the log as soon as both workers reported
    them finished (each read brings back what its worker finished last)."""
    runner = current_mesh().runner
    lengths = []
    _train(3 * dask_runner.CHAIN_STEPS, between=lambda i, net: lengths.append(len(runner.log)))
    assert max(lengths[4:]) <= dask_runner.ASK_AFTER + 2, lengths
    assert min(runner._finished) >= 0


def test_a_parameter_the_loop_replaces_is_freed_on_the_workers_while_its_chain_runs(cluster, monkeypatch):
    """The replaced parameter's key goes with a later go-ahead and is freed when that step ends, not when
    the chain's task ends (a chain of 16 steps here: one chain from step 3 to the end)."""
    monkeypatch.setattr(dask_runner, "CHAIN_STEPS", 16)
    seen = {}

    def stored(key):
        return any(cluster.run(lambda: any(key in st.values for st in dask_worker._STORES.values())).values())

    def watch(i, net):
        if i == 4:
            seen["key"], seen["tasks"] = net[0].weight._node.value.parts[0].key, small_mlp.runner_stats()["tasks"]
            assert _within(10, lambda: stored(seen["key"]))     # the loss read does not wait for the update
        if i == 15:
            seen["freed"] = not stored(seen["key"])
            seen["same chain"] = small_mlp.runner_stats()["tasks"] == seen["tasks"]
    _train(17, between=watch)
    assert seen["same chain"] and seen["freed"], seen


def test_a_worker_no_read_reaches_reports_its_progress_through_its_peer(cluster):
    """A tensor-parallel embedding (what the planner picks for 1600 input pixels a token): the loss and
    logits are read from one worker; the other is heard of through the replies to its peer's pulls, so
    it is seldom asked on the side, and the log stays short."""
    from models.pixel_transformer import PixelTransformer
    from gtnumba import nn
    gt.manual_seed(0)
    model = PixelTransformer(img_size=40, seq_len=4)
    opt = gt.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    runner, lengths = current_mesh().runner, []
    for i in range(20):
        if i == 4:
            before = small_mlp.runner_stats()
        x = gt.from_numpy(rng.standard_normal((4, 4, 1600)).astype(np.float32))
        logits = model(x)
        loss = nn.cross_entropy(logits, gt.tensor(rng.integers(0, 10, 4)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        logits.numpy()
        lengths.append(len(runner.log))
    after = small_mlp.runner_stats()
    assert after["read_rpcs"] - before["read_rpcs"] == after["reads"] - before["reads"]     # one worker a read
    assert after["predictions_taken"] - before["predictions_taken"] == 16
    # asked when a read found all it wanted here already (no reply, no news): ~one in 16 steps; 8 otherwise
    assert after["progress_asks"] - before["progress_asks"] <= 3, after["progress_asks"] - before["progress_asks"]
    assert max(lengths[4:]) <= dask_runner.ASK_AFTER + 2, lengths


def _worker_setting(name, value):
    def put():
        old = getattr(dask_worker, name)
        setattr(dask_worker, name, value)
        return old
    return put


def test_a_pause_between_steps_longer_than_the_pull_timeout_does_not_fail_the_waiting_step(cluster):
    """The chain's next step waits for its go-ahead while the client does something else for a while (an
    evaluation, a checkpoint): that wait has no timeout, only checks that the client still keeps the task
    (here the pull timeout is 1 s, and the pause 2.5 s)."""
    import time
    old = cluster.run(_worker_setting("PULL_TIMEOUT", 1.0))
    cluster.run(_worker_setting("WANTED_EVERY", 0.3))
    try:
        def pause(i, net):
            if i == 5:
                time.sleep(2.5)
        want = small_mlp.in_process(lambda: _train(9))
        before = small_mlp.runner_stats()
        _same(_train(9, between=pause), want)
        assert small_mlp.runner_stats()["predictions_taken"] - before["predictions_taken"] >= 6
    finally:
        cluster.run(_worker_setting("PULL_TIMEOUT", next(iter(old.values()))))
        cluster.run(_worker_setting("WANTED_EVERY", 5.0))


LEAVING_CLIENT = """
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
import gtnumba as gt
import small_mlp
from gtnumba.sched.dask_runner import DaskRunner
if not {dropped}:          # as with a scheduler that cannot load gtnumba's plugin
    DaskRunner._drop_store_on_leave = lambda self: None
net = small_mlp.model()
opt = gt.optim.SGD(net.parameters(), lr=0.1)
rng = np.random.default_rng(0)
for _ in range(6):
    small_mlp.step(net, opt, rng).item()
os._exit(0)               # gone, its chain waiting on the workers for the next step
"""


def _within(seconds, done):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    return done()


@pytest.mark.parametrize("dropped", [True, False])
def test_a_chain_whose_client_is_gone_ends_on_its_workers(cluster, tmp_path, dropped):
    """A client that dies without a word leaves its chain waiting for a go-ahead.  The scheduler tells the
    workers to drop its store (dask_scheduler.DropStoreOnLeave), which ends the chain's tasks at once; without
    that plugin, the scheduler releases the client's tasks, and they notice within WANTED_EVERY and end."""
    import os
    import subprocess
    import sys
    cluster.run(_worker_setting("WANTED_EVERY", 1.0))
    try:
        script = tmp_path / "leaving.py"
        script.write_text(LEAVING_CLIENT.format(tests=os.path.dirname(__file__), dropped=dropped))
        env = dict(os.environ, GT_SCHEDULER=cluster.scheduler.address)
        subprocess.run([sys.executable, str(script)], env=env, timeout=120, check=True, capture_output=True)

        def others_running(mine, dask_worker):
            return [k for k, ts in dask_worker.state.tasks.items() if isinstance(k, tuple) and len(k) == 4
                    and not k[1].startswith(mine) and ts.state in ("executing", "long-running", "cancelled")]

        def others_stores():
            return [r for rs in cluster.run(lambda: list(dask_worker._STORES)).values() for r in rs if r != mine]
        mine = current_mesh().runner.rid
        if not dropped:
            assert any(cluster.run(others_running, mine[:8]).values())       # the leaving client's chain waits
        assert _within(10, lambda: not any(cluster.run(others_running, mine[:8]).values()))
        if dropped:
            assert _within(10, lambda: not others_stores()), others_stores()
    finally:
        cluster.run(_worker_setting("WANTED_EVERY", 5.0))
