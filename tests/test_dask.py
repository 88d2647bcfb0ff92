"""The same training code on a real Dask cluster: local worker processes, the dashboard over
HTTP, tasks per step, and an external scheduler joined through GT_SCHEDULER."""
import collections
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import numpy as np
import pytest
from distributed import get_task_stream

import gtnumba as gt
from gtnumba import nn
from gtnumba.sched.mesh import current_mesh

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def cluster():
    client = gt.init(workers=2, dashboard=":0")
    yield client
    gt.shutdown()


def _mlp(layers, seed=0):
    gt.manual_seed(seed)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(8, 8), nn.Tanh()]
    return nn.Sequential(*mods, nn.Linear(8, 3))


def _train(model, steps, seed=1):
    rng = np.random.default_rng(seed)
    opt = gt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        x = gt.from_numpy(rng.standard_normal((5, 8)))          # batch 5: uneven on 2 workers
        y = gt.tensor(rng.integers(0, 3, 5))
        loss = nn.cross_entropy(model(x.float()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_on_two_worker_processes_matches_in_process(cluster):
    mesh = gt.sched.mesh.current_mesh()
    gt.sched.mesh.set_mesh(None)
    try:
        ref_model = _mlp(2)
        ref = _train(ref_model, 5)
    finally:
        gt.sched.mesh.set_mesh(mesh)
    model = _mlp(2)
    got = _train(model, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert gt.client() is cluster


def _tasks_per_step(layers):
    """The task keys of each step run while the stream watched.  Steps are told apart by their
    token, not by time: a step is submitted before it is recorded (sched.speculate), and the one
    submitted last waits on its workers for a step that does not come."""
    model = _mlp(layers)
    _train(model, 3)                 # warm: plans built, parameters placed
    with get_task_stream() as ts:
        _train(model, 3, seed=5)
        [p.numpy() for p in model.parameters()]          # the last update is done
    by_step = {}
    for t in ts.data:
        by_step.setdefault(t["key"][1], []).append(t["key"])
    return [keys for keys in by_step.values() if sum(k[2] == 0 for k in keys) == 2]


@pytest.mark.parametrize("fused", [True, False])
def test_tasks_per_step_do_not_grow_with_layers(cluster, fused, monkeypatch):
    """One task per worker per step (default), or one per worker per level (forward_backward,
    then reduce_update): never more than 2W + 1, the same for 2 and 6 layers."""
    from gtnumba.sched import dask_runner
    monkeypatch.setattr(dask_runner, "FUSED", fused)
    small, large = _tasks_per_step(2), _tasks_per_step(6)
    workers = 2
    want = workers if fused else 2 * workers
    assert len(small) >= 2 and len(large) >= 2, (small, large)
    assert {len(keys) for keys in small} == {len(keys) for keys in large} == {want}, (small, large)
    assert want <= 2 * workers + 1
    prefixes = {k[0] for keys in large for k in keys}
    want = {"forward_backward_reduce_update"} if fused else {"forward_backward", "reduce_update"}
    assert prefixes == want, prefixes


def test_a_training_loop_lets_go_of_its_step_tasks_in_batches(cluster, monkeypatch):
    """A step's task futures are released RELEASE_STEPS steps at a time, together (one message to the
    scheduler, one from it to each worker, one back), not each at its own step; the scheduler still
    forgets old steps' tasks.  Each step its own tasks here (chains of one step: a chain's tasks serve many)."""
    from gtnumba.sched import dask_runner
    from gtnumba.sched.dask_runner import RELEASE_AFTER, RELEASE_STEPS
    monkeypatch.setattr(dask_runner, "CHAIN_STEPS", 1)
    model = _mlp(1)
    _train(model, 3)
    runner, released_at = current_mesh().runner, []
    real = cluster._dec_ref

    def dec_ref(key):
        released_at.append(runner.stats["steps"])
        real(key)
    monkeypatch.setattr(cluster, "_dec_ref", dec_ref)
    steps = 4 * RELEASE_STEPS
    _train(model, steps)
    held = cluster.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    assert len(released_at) >= 2 * (steps - RELEASE_STEPS - RELEASE_AFTER), released_at
    assert len(set(released_at)) <= steps // RELEASE_STEPS + 2, sorted(collections.Counter(released_at).items())
    assert held <= 2 * (RELEASE_STEPS + RELEASE_AFTER + 3), held


def test_dashboard_answers_and_names_blocks(cluster):
    _train(_mlp(1), 2)
    url = cluster.dashboard_link
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
    prefixes = cluster.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "forward_backward_reduce_update" in prefixes


def test_asking_for_more_gpus_than_visible_is_a_clear_error():
    with pytest.raises(ValueError, match="asked for 8 GPUs but 0 are visible"):
        gt.init(gpus=8)
    assert gt.client() is None


def test_unknown_scheduler_address_is_a_clear_error():
    with pytest.raises(ConnectionError, match="cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'"):
        gt.init(scheduler="tcp://127.0.0.1:9")
    assert gt.client() is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_external_scheduler_and_workers_through_gt_scheduler(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--no-nanny"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        script = tmp_path / "train.py"
        script.write_text(textwrap.dedent(f"""
            import time
            from distributed import Client
            c = Client("{address}", timeout="30s")
            c.wait_for_workers(2, timeout=60)
            c.close()
            import gtnumba as gt
            from test_dask import _mlp, _train
            print("reference", _train(_mlp(1), 4))
            gt.init()
            print("workers", gt.sched.mesh.current_mesh().workers)
            print("losses", _train(_mlp(1), 4))
            gt.shutdown()
        """))
        out = subprocess.run([sys.executable, str(script)], env=dict(env, GT_SCHEDULER=address),
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "workers 2" in out.stdout
        values = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
        np.testing.assert_allclose(eval(values["losses"]), eval(values["reference"]), rtol=1e-5)
    finally:
        for p in reversed(procs):          # workers first, then the scheduler
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
