"""GT programs on gtnumba with only `gt` renamed: GT's module paths, GT's semantics where GT code
depends on them, and GT's public API (connect, gpu_workers, debug, signal + YAML config) on
gtnumba's engine.  The programs under test use GT's public names only; NumPy and the in-process run
are the references.  The checks read layouts off the values, and the 2- and 3-worker meshes are
in-process (Mesh + InProcessRunner, as tests/test_sharding.py); Dask tests use real workers."""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gtnumba as gt
from gtnumba.client import nn
from gtnumba.client.tensor import Tensor, from_numpy, ones, randn, zeros

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def f64(a, requires_grad=False):
    return gt.tensor(np.asarray(a, np.float64), dtype=gt.float64, requires_grad=requires_grad)


def gt_warnings(caught):
    return [str(w.message) for w in caught if w.category is gt.GTCompatWarning]


# ---- 1. module paths ------------------------------------------------------------------------------
def test_gt_module_paths_carry_gts_names():
    import gtnumba.client.autograd as autograd
    import gtnumba.client.tensor as tensor_module
    from gtnumba.nn import SGD
    assert tensor_module.randn is randn and isinstance(randn(2, 3), Tensor) and randn(2, 3).shape == (2, 3)
    assert from_numpy(np.ones((2, 2), np.float32)).dtype == gt.float32
    assert zeros(2, 3).numpy().sum() == 0 and ones(4).numpy().sum() == 4
    tensor_module.set_grad_enabled(False)
    assert not tensor_module.is_grad_enabled() and not (randn(2, requires_grad=True) * 2).requires_grad
    tensor_module.set_grad_enabled(True)
    with autograd.get_graph().no_grad():
        assert not autograd.get_graph().enabled
    assert autograd.get_graph().enabled
    for name in ("load_config", "get_config", "register_config", "SignalConfig", "ShardConfig", "connect",
                 "gpu_workers"):
        assert callable(getattr(gt, name)), name
    assert callable(gt.signal.context) and callable(gt.signal.tensor) and callable(gt.debug.get_tape)
    assert gt.config.get_config() is gt.get_config() and callable(SGD)
    assert gt.client() is None                 # in-process: no Dask client; gt.client.nn is GT's nn


# ---- 2. GT's semantics ----------------------------------------------------------------------------
def test_client_nn_linear_is_gts_and_nn_linear_is_pytorchs():
    np.random.seed(3)
    want_w = np.random.randn(4, 3).astype(np.float32) * 0.01
    np.random.seed(3)
    gt_lin = nn.Linear(4, 3)                   # GT: weight (in, out) = randn * 0.01 from NumPy, zero bias
    np.testing.assert_array_equal(gt_lin.weight.numpy(), want_w)
    np.testing.assert_array_equal(gt_lin.bias.numpy(), np.zeros(3, np.float32))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(gt_lin(gt.tensor(x)).numpy(), x @ want_w, rtol=1e-6)
    torch_lin = gt.nn.Linear(4, 3)             # PyTorch: weight (out, in), x @ W.T + b
    w, b = torch_lin.weight.numpy(), torch_lin.bias.numpy()
    assert w.shape == (3, 4)
    np.testing.assert_allclose(torch_lin(gt.tensor(x)).numpy(), x @ w.T + b, rtol=1e-5)
    with pytest.raises(ValueError, match=r"Linear.*\(5, 3\).*expected 4"):
        gt_lin(gt.tensor(x[:, :3]))


def test_parameters_is_a_list_and_gt_losses():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x):
            return nn.sigmoid(self.fc2(nn.relu(self.fc1(x))))

    net = Net()
    params = net.parameters()
    assert isinstance(params, list) and len(params) == 4 and all(p.requires_grad for p in params)
    assert net._modules == {"fc1": net.fc1, "fc2": net.fc2}
    p, t = np.array([0.7, 0.2, 0.9]), np.array([1.0, 0.0, 1.0])
    want = -(t * np.log(p + 1e-7) + (1 - t) * np.log(1 - p + 1e-7)).mean()
    np.testing.assert_allclose(nn.binary_cross_entropy(f64(p), f64(t)).item(), want, rtol=1e-12)
    z = np.array([0.3, -1.2, 2.0])
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(nn.cross_entropy_loss(f64(z), f64(t)).item(),
                               -(t * np.log(s + 1e-7) + (1 - t) * np.log(1 - s + 1e-7)).mean(), rtol=1e-12)
    np.testing.assert_allclose(nn.mse_loss(f64(p), f64(t)).item(), ((p - t) ** 2).mean(), rtol=1e-12)


def test_split_and_chunk_with_gt_keywords_return_lists():
    a = np.arange(30.0).reshape(5, 6)
    x = f64(a)
    parts = x.split(split_size=2, dim=0)
    assert isinstance(parts, list) and [q.shape for q in parts] == [(2, 6), (2, 6), (1, 6)]
    for q, w in zip(parts, np.split(a, [2, 4], axis=0)):
        np.testing.assert_array_equal(q.numpy(), w)
    chunks = x.chunk(4, dim=1)                 # ceil(6 / 4) = 2 columns each
    assert isinstance(chunks, list) and len(chunks) == 3
    np.testing.assert_array_equal(chunks[2].numpy(), a[:, 4:])
    with pytest.raises(IndexError, match="split"):
        x.split(split_size=2, dim=2)
    with pytest.raises(ValueError, match="chunk"):
        x.chunk(0, dim=0)


def test_data_is_an_array_for_numpy_and_grad_alias():
    a = np.random.default_rng(1).standard_normal((3, 4))
    t = f64(a, requires_grad=True)
    assert np.mean(t.data) == pytest.approx(a.mean(), rel=1e-12)
    np.testing.assert_array_equal(np.asarray(t.data), a)
    np.testing.assert_allclose(np.std(t.data, axis=0), a.std(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(t.data.numpy(), a)
    assert not t.data.requires_grad and t.data.shape == (3, 4)
    (t * t).sum().backward()
    assert t._grad is t.grad
    np.testing.assert_allclose(t._grad.data.numpy(), 2 * a)
    t._grad = None
    assert t.grad is None
    old_id = t.id
    with gt.no_grad():
        t -= 1.0
    assert t.id != old_id                      # GT: an in-place update gives the tensor a new id


def test_grad_of_held_non_leaf_tensors():
    """Which tensors get .grad after loss.backward(): every tensor that requires grad and that loss
    was computed from -- leaves (accumulated over backward calls) and, as in GT, non-leaf results
    the program still holds.  The loss itself, and tensors that do not require grad (data), do not."""
    rng = np.random.default_rng(2)
    xa = rng.standard_normal((2, 3, 4))
    x = f64(xa, requires_grad=True)
    divisor = gt.ones(2, 3, 1, dtype=gt.float64, requires_grad=True) * 2.0    # a non-leaf input
    data = f64(rng.standard_normal((2, 3, 4)))
    result = x / divisor * data
    loss = result.sum()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.asarray(data.numpy()) / 2.0)
    np.testing.assert_allclose(divisor.grad.numpy(), (-xa * data.numpy() / 4.0).sum(-1, keepdims=True))
    np.testing.assert_allclose(result.grad.numpy(), np.ones((2, 3, 4)))
    assert divisor.grad.shape == (2, 3, 1)     # keeps its singleton dim
    assert loss.grad is None and data.grad is None


def test_inplace_update_of_a_leaf_outside_no_grad_warns_once_and_records_nothing():
    w = f64([1.0, 2.0], requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss = (w * w).sum()
            loss.backward()
            w -= 0.25 * w.grad                 # GT's SGD step, not under no_grad: one warning only
            w.grad = None
    msgs = gt_warnings(caught)
    assert len(msgs) == 1 and "gt.no_grad()" in msgs[0], msgs
    np.testing.assert_allclose(w.numpy(), np.array([1.0, 2.0]) * 0.5 ** 3)
    assert w.is_leaf and w.requires_grad and gt.debug.get_tape() == []


def test_backward_on_a_loss_without_grad_is_a_no_op_and_bad_calls_still_raise():
    x = f64([1.0, 2.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            (x * 2).sum().backward()
    assert len(gt_warnings(caught)) == 1 and x.grad is None
    w = f64([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"backward.*\(2,\)"):
        (w * 2).backward()                      # not a scalar: still an error
    with pytest.raises(ValueError, match=r"\(3,\)"):
        with gt.no_grad():
            w += gt.ones(3, dtype=gt.float64)


def test_gradients_accumulate_unlike_gt_and_zeroing_gives_gts_result():
    a = np.array([1.0, -2.0])
    w = f64(a, requires_grad=True)
    (w * w).sum().backward()
    (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 4 * a)      # GT would overwrite: 2a
    w.grad.zero_()
    (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * a)
    opt = gt.nn.SGD([w], lr=0.5)                             # GT's gt.nn.SGD
    opt.step()
    opt.zero_grad()                                          # zeroes (GT), does not drop
    np.testing.assert_allclose(w.numpy(), a - 0.5 * 2 * a)
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros(2))


def test_get_tape_is_the_recorded_graph_and_printable():
    a = gt.randn(3, 3, dtype=gt.float64, requires_grad=True)
    b = gt.randn(3, 3, dtype=gt.float64, requires_grad=True)
    c = a + b
    d = c * 2.0
    tape = gt.debug.get_tape()
    ops = [e["grad_fn"] for e in tape]
    assert ops == ["add", "mul"], tape
    assert tape[1]["input_ids"][0] == tape[0]["output_id"] == c.id and tape[1]["output_id"] == d.id
    assert "add" in str(tape) and "(3, 3)" in str(tape)
    d.sum().backward()
    assert gt.debug.get_tape() == []            # consumed by backward, as GT clears its tape


# ---- 3. signals and YAML configuration on 2 and 3 workers -------------------------------------------
CONFIG = """
batch:
  shard: {axis: 0}
colpar:
  shard: {axis: 1}
  backward: colpar_bwd
colpar_bwd:
  shard: {axis: 0}
rep:
  shard: {replicated: true}
"""


@pytest.fixture
def mesh():
    from gtnumba.sched.mesh import Mesh, set_mesh
    from gtnumba.sched.spmd import InProcessRunner

    def use(workers):
        set_mesh(Mesh(workers, InProcessRunner(workers)) if workers else None)
    yield use
    set_mesh(None)
    gt.get_config().clear()


def _layout(t):
    value = t._node.value
    return getattr(value, "layout", None)


def _signal_training(mesh, workers, config_path, steps=3):
    """A GT program with signals: batch data, a column-parallel layer, a replicated bias."""
    mesh(workers)
    gt.get_config().clear()
    gt.load_config(config_path)
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    W1 = f64(rng.standard_normal((4, 6)) * 0.5, requires_grad=True)
    W2 = f64(rng.standard_normal((6, 2)) * 0.5, requires_grad=True)
    b = gt.signal.tensor(f64(np.zeros(2), requires_grad=True), "rep")
    losses, layouts = [], []
    for _ in range(steps):
        with gt.signal.context("batch"):
            x, y = gt.from_numpy(X), gt.from_numpy(Y)
        with gt.signal.context("colpar"):
            h = (x @ W1).tanh()
        loss = ((h @ W2 + b - y) ** 2).mean()
        loss.backward()
        losses.append(float(loss.data.numpy()))
        layouts.append((_layout(x), _layout(W1), _layout(W1.grad), _layout(b)))
        with gt.no_grad():
            for p in (W1, W2, b):
                p -= 0.1 * p.grad
                p.grad.zero_()
    return losses, [p.numpy() for p in (W1, W2, b)], layouts


def test_signals_lay_out_forward_and_backward_and_match_in_process(mesh, tmp_path):
    path = tmp_path / "sharding.yaml"
    path.write_text(CONFIG)
    want_losses, want_params, _ = _signal_training(mesh, 0, str(path))
    for workers in (2, 3):
        losses, params, layouts = _signal_training(mesh, workers, str(path))
        np.testing.assert_allclose(losses, want_losses, rtol=1e-12)
        for got, want in zip(params, want_params):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        x_layout, w_layout, g_layout, b_layout = layouts[0]
        assert isinstance(x_layout, gt.Shard) and x_layout.dim == 0 and sum(x_layout.sizes) == 7
        assert isinstance(w_layout, gt.Shard) and w_layout.dim == 1          # colpar: Shard(1)
        assert isinstance(g_layout, gt.Shard) and g_layout.dim == 0          # its backward: colpar_bwd
        assert isinstance(b_layout, gt.Replicate)
    stats = gt.debug.get_worker_stats()["in-process"]
    assert stats["kernels"] > 0 and stats["tasks"] > 0 and stats["memory"]["rss"] > 0


def test_register_config_and_signal_errors_fail_at_the_call(mesh, tmp_path):
    mesh(3)
    gt.register_config("cols", gt.SignalConfig(shard=gt.ShardConfig(axis=1), backward_signal="rows"))
    gt.register_config("rows", gt.SignalConfig(shard=gt.ShardConfig(axis=0)))
    w = gt.signal.tensor(f64(np.ones((3, 6)), requires_grad=True), "cols")
    (w * w).sum().backward()
    w.grad.numpy()
    assert _layout(w).dim == 1 and _layout(w.grad).dim == 0
    with pytest.raises(IndexError, match=r"'cols'.*axis 1.*\(4,\)"):
        gt.signal.tensor(f64(np.ones(4)), "cols")
    gt.register_config("few", gt.SignalConfig(shard=gt.ShardConfig(axis=0, workers=[0, 1])))
    gt.register_config("missing", gt.SignalConfig(shard=gt.ShardConfig(axis=0, workers=[0, 7])))
    with pytest.warns(gt.GTCompatWarning, match=r"'few'.*all 3 workers"):
        with gt.signal.context("few"):
            pass
    with pytest.raises(ValueError, match=r"'missing'.*\[7\].*3 workers"):
        with gt.signal.context("missing"):
            pass
    with pytest.raises(TypeError, match="SignalConfig"):
        gt.register_config("bad", {"shard": {"axis": 0}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer1:\n  shard: {axis: 0}\n  backwards: layer1_bwd\n")
    with pytest.raises(ValueError, match=r"'layer1'.*backwards"):
        gt.load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        gt.load_config(str(tmp_path / "nowhere.yaml"))
    with pytest.raises(RuntimeError, match="no signal scope"):
        gt.signal.exit("cols")
    with gt.signal.context("unconfigured"):          # a signal without configuration changes nothing
        z = gt.zeros(3)
    assert gt.signal.current_signal() is None and z.numpy().sum() == 0


# ---- 3. connect, gpu_workers and worker stats on real Dask ------------------------------------------
def test_gpu_workers_and_connect_run_on_dask_workers():
    from distributed import LocalCluster
    from gtnumba.cluster import WORKER_FLAG
    rng = np.random.default_rng(7)
    X, W = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))

    def step():
        w = f64(W, requires_grad=True)
        loss = ((gt.from_numpy(X) @ w).tanh() ** 2).mean()
        loss.backward()
        return loss.item(), w.grad.numpy()

    want = step()
    try:
        gt.gpu_workers(2)                      # no GPU here: two CPU worker processes
        assert gt.client() is not None
        with pytest.raises(RuntimeError, match="gpu_workers"):
            gt.gpu_workers(2)
        got = step()
        stats = gt.debug.get_worker_stats()
        assert len(stats) == 2
        for worker, s in stats.items():
            assert worker.startswith("tcp://") and s["tasks"] > 0 and s["kernels"] > 0
            assert s["memory"]["rss"] > 0 and s["device"]["kind"] == "cpu"
    finally:
        gt.shutdown()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40, env={WORKER_FLAG: "1"}) as cluster:
        try:
            gt.connect(cluster.scheduler_address.replace("tcp://", ""))   # GT's "host:port"
            assert gt.client().scheduler.address == cluster.scheduler_address
            assert len(gt.client().scheduler_info()["workers"]) == 2
            got = step()
        finally:
            gt.shutdown()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    with pytest.raises(ValueError, match="host:port"):
        gt.connect("nowhere")
    with pytest.raises(ValueError, match="positive int"):
        gt.gpu_workers(0)


# ---- 4. a GT-style Pixel Transformer script, unchanged, with GT_AUTO_SHARD=1 and 0 -------------------
def _run_example(auto_shard):
    env = dict(os.environ, GT_AUTO_SHARD=auto_shard, GT_WORKERS="2", NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["--steps", "3", "--n-train", "64", "--n-test", "16", "--batch-size", "8", "--img-size", "8",
            "--embed-dim", "16", "--heads", "2", "--ff-dim", "32", "--layers", "1", "--print-every", "1"]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "gt_style_train.py"), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss ([0-9.]+)", out.stdout)]
    accuracy = re.search(r"held-out accuracy ([0-9.]+)%", out.stdout).group(1)
    return out.stdout, losses, accuracy


def test_gt_style_pixel_transformer_runs_unchanged_with_and_without_auto_shard():
    local, local_losses, local_acc = _run_example("0")
    dask, dask_losses, dask_acc = _run_example("1")
    assert "in-process" in local and "on Dask" in dask
    assert len(local_losses) == 3 and local_losses[-1] < local_losses[0]
    np.testing.assert_allclose(dask_losses, local_losses, rtol=1e-4)
    assert dask_acc == local_acc


def test_gt_config_env_var_loads_the_yaml_at_import(tmp_path):
    path = tmp_path / "sharding.yaml"
    path.write_text(CONFIG)
    code = ("import gtnumba as gt; c = gt.get_signal_config('colpar'); "
            "gt.signal.enter('colpar'); print(gt.signal.current_signal()); gt.signal.exit('colpar'); "
            "print(c.shard.axis, c.backward_signal, gt.get_signal_config('rep').shard.replicated)")
    env = dict(os.environ, GT_CONFIG=str(path), NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GT_AUTO_SHARD", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["colpar", "1", "colpar_bwd", "True"]


def test_gpu_workers_takes_precedence_over_gt_auto_shard():
    code = ("import gtnumba as gt\n"
            "first = len(gt.debug.get_worker_stats())\n"
            "gt.gpu_workers(2)\n"
            "a = gt.randn(8, 4)\n"
            "print(first, len(gt.debug.get_worker_stats()), a.data.numpy().shape)\n")
    env = dict(os.environ, GT_AUTO_SHARD="1", GT_WORKERS="1", NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "2", "(8,", "4)"]
