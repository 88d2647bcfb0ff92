"""Under NUMBA_ENABLE_CUDASIM=1, a tiny 2-worker training step runs the simulated CUDA kernels
inside the Dask workers (blocks exchange host arrays: simulator arrays cannot be pickled)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import gtnumba as gt
    from gtnumba import nn

    def train():
        gt.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        opt = gt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(1)
        losses = []
        for _ in range(2):
            x = gt.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
            y = gt.tensor(rng.integers(0, 3, 5))
            loss = nn.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.numpy() for p in model.parameters()]

    if __name__ == "__main__":
        gt.set_device("cpu")
        want_losses, want_params = train()
        gt.set_device("cuda")
        client = gt.init(workers=2, dashboard=":0")
        losses, params = train()
        devices = client.run(lambda: __import__("gtnumba").kernels.backend.current())
        ran = client.run(lambda: "gtnumba.kernels.cuda.elementwise" in sys.modules
                         and "gtnumba.kernels.cuda.gemm" in sys.modules)
        gt.shutdown()
        np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
        for p, q in zip(params, want_params):
            np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)
        assert set(devices.values()) == {"cuda"}, devices
        assert all(ran.values()), ran
        print("OK", losses)
""")


def test_two_simulated_gpu_workers_train_like_the_cpu(tmp_path):
    script = tmp_path / "sim_train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GTNUMBA_DEVICE="cuda", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "OK" in out.stdout
