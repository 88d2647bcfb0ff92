"""A worker process killed during training: the step is planned again on the survivors and the
run ends with the parameters of a run without the fault (parameters and optimizer state come back
from replicas on the surviving workers, data from the host copies it was placed from)."""
import os
import warnings

import numpy as np
import pytest

import gtnumba as gt
from gtnumba import nn
from gtnumba.sched.mesh import current_mesh, set_mesh


def _model():
    gt.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _steps(model, opt, rng, n):
    for _ in range(n):
        x = gt.from_numpy(rng.standard_normal((7, 6)).astype(np.float32))
        y = gt.tensor(rng.integers(0, 3, 7))
        loss = nn.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()


def _run(kill_after=None):
    model = _model()
    opt = gt.optim.Adam(model.parameters(), lr=0.05)
    rng = np.random.default_rng(1)
    if kill_after is None:
        _steps(model, opt, rng, 6)
    else:
        _steps(model, opt, rng, kill_after)
        runner = current_mesh().runner
        chained = runner._chain is not None and runner._chain.confirmed
        victim = runner.addresses[1]
        try:
            gt.client().run(os._exit, 1, workers=[victim])
        except Exception:
            pass                          # the connection to the killed worker drops
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _steps(model, opt, rng, 6 - kill_after)
        assert any("lost worker" in str(w.message) for w in caught)
        assert current_mesh().workers == 2
        assert chained or kill_after < 5, "the worker was to die while a chain of steps ran"
    return dict(model.state_dict())


@pytest.mark.parametrize("kill_after", [3, 5])
def test_killed_worker_training_carries_on_with_the_same_result(kill_after):
    """Killed after 3 steps (the first predicted step is submitted, not run) or after 5 (a chain of steps
    runs on the workers)."""
    set_mesh(None)
    want = _run()
    gt.init(workers=3, dashboard=":0")
    try:
        got = _run(kill_after=kill_after)
    finally:
        gt.shutdown()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
