"""The Pixel Transformer command (issue #5), run the way a user runs it: as a subprocess
``python -m models.pixel_transformer ...`` from the repository root, at a tiny size.

In-process on the CPU, on 2 Dask worker processes and under NUMBA_ENABLE_CUDASIM=1; exact resume
(2 epochs == 1 epoch + --resume); a kill during a checkpoint save leaves the previous checkpoint
loadable; the clean errors (--gpus 8, bad --data) and --help; the GT-style example's falling loss.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import models  # noqa: F401
except ImportError:     # an editable install made before models/ was a package: use the checkout
    sys.path.insert(0, str(ROOT))

from models import checkpoint  # noqa: E402

TINY = ["--img-size", "16", "--seq-len", "3", "--embed-dim", "16", "--heads", "2", "--layers", "1",
        "--ff-dim", "32", "--n-train", "48", "--n-test", "16", "--batch-size", "16", "--warmup-steps", "2",
        "--lr", "3e-3", "--threads", "1"]
FILES = ("metrics.jsonl", "curves.png", "samples.png", "checkpoint.npz")
METRIC_KEYS = {"epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "samples_per_s",
               "seconds"}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GT_AUTO_SHARD", "GT_SCHEDULER", "GT_WORKERS",
                                                            "GTNUMBA_DEVICE", "PIXEL_TRANSFORMER_SAVE_PAUSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["MPLBACKEND"] = "Agg"
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_cmd(args, timeout=150, **env):
    return subprocess.run([sys.executable, "-m", "models.pixel_transformer", *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def check_ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"


def check_outputs(out, epochs):
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for png in ("curves.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        assert METRIC_KEYS <= set(r), r
        assert np.isfinite([r["train_loss"], r["test_loss"]]).all() and 0 <= r["test_acc"] <= 1
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["epoch"] == epochs and meta["step"] == rows[-1]["step"]
    return rows


def params_of(out):
    arrays, meta = checkpoint.load(out / "checkpoint.npz")
    return arrays, meta


def assert_same_checkpoint(a, b):
    (xa, ma), (xb, mb) = params_of(a), params_of(b)
    assert sorted(xa) == sorted(xb)
    assert any(k.startswith("model/") for k in xa) and any(k.startswith("optim/") for k in xa)
    for k in xa:
        np.testing.assert_allclose(xb[k], xa[k], rtol=0, atol=1e-6, err_msg=k)
    assert (ma["epoch"], ma["step"]) == (mb["epoch"], mb["step"])
    assert ma["scheduler"] == mb["scheduler"]
    for ra, rb in zip(ma["history"], mb["history"]):
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), key


# ---- the model itself (in-process, quick) ----------------------------------------------------------
def test_model_shapes_and_positional_slice():
    import gtnumba as gt
    from gtnumba import nn
    from models.pixel_transformer import PixelTransformer
    gt.manual_seed(0)
    m = PixelTransformer(img_size=8, seq_len=3, embed_dim=16, heads=2, layers=1, ff_dim=32, num_classes=5)
    x = gt.randn(4, 3, 8, 8)
    logits = m(x)
    assert logits.shape == (4, 5)
    assert m(x.reshape(4, 3, 64)).shape == (4, 5)
    nn.cross_entropy(logits, gt.tensor(np.array([0, 1, 2, 3]))).backward()
    g = m.pos.grad.numpy()
    assert m.pos.shape == (16, 16)
    assert np.abs(g[:3]).sum() > 0 and not g[3:].any()      # pos[:seq_len] is what trains
    assert m(gt.randn(2, 2, 64)).shape == (2, 5)             # shorter sequences use pos[:2]
    names = dict(m.named_parameters())
    assert names["embed.weight"].shape == (16, 64) and "blocks.0.attn.q_proj.weight" in names


def test_default_model_is_the_first_users():
    from models.pixel_transformer import PixelTransformer, build_parser
    args = build_parser().parse_args([])
    assert (args.embed_dim, args.heads, args.layers, args.ff_dim) == (128, 4, 2, 256)
    assert args.img_size is None and args.seq_len is None          # 200 and 4 unless the .npz says otherwise
    from models.pixel_transformer import DEFAULTS
    assert DEFAULTS["img_size"] == 200 and DEFAULTS["seq_len"] == 4
    import inspect
    sig = inspect.signature(PixelTransformer)
    assert {k: sig.parameters[k].default for k in ("img_size", "seq_len", "embed_dim", "heads", "layers",
                                                    "ff_dim", "num_classes")} == dict(
        img_size=200, seq_len=4, embed_dim=128, heads=4, layers=2, ff_dim=256, num_classes=10)


# ---- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The reference: 2 epochs in-process, default (cosine) schedule."""
    out = tmp_path_factory.mktemp("ref")
    res = run_cmd([*TINY, "--epochs", "2", "--out", str(out)], NUMBA_ENABLE_CUDASIM=None)
    check_ok(res)
    return out, res


def test_in_process_run_writes_metrics_plots_and_checkpoint(two_epochs):
    out, res = two_epochs
    rows = check_outputs(out, 2)
    assert "device: in-process" in res.stdout and "Dask dashboard" not in res.stdout
    assert "held-out accuracy" in res.stdout and "chance" in res.stdout and "samples/s" in res.stdout
    assert rows[-1]["step"] == 2 * 3 and rows[-1]["lr"] == pytest.approx(0.0)   # cosine ends at 0
    assert (out / "checkpoint.prev.npz").is_file()                             # epoch 1 kept
    assert checkpoint.load(out / "checkpoint.prev.npz", fallback=False)[1]["epoch"] == 1
    assert "epoch 1/2" in res.stderr                                           # the progress bar


def test_resume_after_stop_is_exact(two_epochs, tmp_path):
    ref, _ = two_epochs
    check_ok(run_cmd([*TINY, "--epochs", "2", "--stop-after-epoch", "1", "--out", str(tmp_path)]))
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["epoch"] == 1
    res = run_cmd([*TINY, "--epochs", "2", "--resume", "--out", str(tmp_path)])
    check_ok(res)
    assert "resumed from" in res.stdout and "epoch 1, step 3" in res.stdout
    check_outputs(tmp_path, 2)
    assert_same_checkpoint(ref, tmp_path)


def test_one_epoch_then_resume_for_the_second_equals_two_epochs(tmp_path):
    const = [*TINY, "--lr-schedule", "constant"]
    a, b = tmp_path / "a", tmp_path / "b"
    check_ok(run_cmd([*const, "--epochs", "2", "--out", str(a)]))
    check_ok(run_cmd([*const, "--epochs", "1", "--out", str(b)]))
    check_ok(run_cmd([*const, "--epochs", "2", "--resume", "--out", str(b)]))
    assert_same_checkpoint(a, b)


def test_resume_refuses_other_settings(two_epochs):
    from models.pixel_transformer import main
    out, _ = two_epochs
    flags = [*TINY, "--epochs", "2", "--resume", "--out", str(out)]
    flags[flags.index("--lr") + 1] = "1e-2"
    assert main(flags) == 2


def test_two_dask_workers(tmp_path):
    report = tmp_path / "report.html"
    res = run_cmd([*TINY, "--epochs", "1", "--workers", "2", "--dashboard", ":0", "--out", str(tmp_path),
                   "--report", str(report)], timeout=240)
    check_ok(res)
    check_outputs(tmp_path, 1)
    assert "2 CPU worker process(es)" in res.stdout
    assert "Dask dashboard: http" in res.stdout
    assert report.is_file() and report.stat().st_size > 1000


def test_under_the_cuda_simulator(tmp_path):
    res = run_cmd([*TINY, "--epochs", "1", "--out", str(tmp_path)], NUMBA_ENABLE_CUDASIM="1")
    check_ok(res)
    check_outputs(tmp_path, 1)


def test_simulated_cuda_backend_runs_the_model(tmp_path):
    """GTNUMBA_DEVICE=cuda under the simulator, at a microscopic size: the run must succeed (a
    crash or a hang fails this test) and match the CPU run."""
    micro = ["--img-size", "2", "--seq-len", "2", "--embed-dim", "4", "--heads", "1", "--layers", "1",
             "--ff-dim", "4", "--n-train", "4", "--n-test", "2", "--batch-size", "4", "--epochs", "1",
             "--no-progress"]
    res = run_cmd([*micro, "--out", str(tmp_path / "cuda")], timeout=240, NUMBA_ENABLE_CUDASIM="1",
                  GTNUMBA_DEVICE="cuda")
    assert res.returncode == 0, f"the simulated CUDA run failed:\n{res.stdout}\n{res.stderr}"
    assert "in-process (cuda" in res.stdout
    cuda_rows = check_outputs(tmp_path / "cuda", 1)
    check_ok(run_cmd([*micro, "--out", str(tmp_path / "cpu")], NUMBA_ENABLE_CUDASIM="1"))
    cpu_rows = check_outputs(tmp_path / "cpu", 1)
    for key in ("train_loss", "test_loss"):
        assert cuda_rows[0][key] == pytest.approx(cpu_rows[0][key], rel=1e-4), key


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    env = _env(PIXEL_TRANSFORMER_SAVE_PAUSE="2:120")
    proc = subprocess.Popen([sys.executable, "-m", "models.pixel_transformer", *TINY, "--epochs", "3",
                             "--out", str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("checkpoint: paused after writing"):
                break
            assert time.time() < deadline, "".join(seen[-20:])
        else:
            pytest.fail("the save never paused:\n" + "".join(seen[-30:]))
        tmp_file = line.split("writing", 1)[1].strip()
        assert os.path.getsize(tmp_file) > 0               # the new checkpoint is fully written...
        proc.send_signal(signal.SIGKILL)                   # ...and the process dies before replacing
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    arrays, meta = checkpoint.load(tmp_path / "checkpoint.npz", fallback=False)
    assert meta["epoch"] == 1 and any(k.startswith("model/") for k in arrays)
    # the next save cleans the stale temporary file up
    checkpoint.save(tmp_path / "other.npz", {"x": np.zeros(2)}, {"epoch": 0})
    checkpoint.save(tmp_path / "checkpoint.npz", arrays, meta)
    assert not os.path.exists(tmp_file)


def test_checkpoint_save_is_atomic_and_falls_back(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, {"w": np.arange(3.0)}, {"epoch": 1})
    real_replace = os.replace

    def crash(src, dst):
        if os.fspath(dst) == os.fspath(path):
            raise OSError("simulated crash during the final rename")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(path, {"w": np.arange(3.0) + 10}, {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    arrays, meta = checkpoint.load(path, fallback=False)
    assert meta["epoch"] == 1 and arrays["w"].tolist() == [0.0, 1.0, 2.0]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    checkpoint.save(path, {"w": np.arange(3.0) + 20}, {"epoch": 2})
    path.write_bytes(path.read_bytes()[:100])           # a torn file (e.g. a copy cut short)
    arrays, meta = checkpoint.load(path)
    assert meta["epoch"] == 1                            # checkpoint.prev.npz
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path, fallback=False)


# ---- errors and help --------------------------------------------------------------------------
def test_more_gpus_than_visible_is_a_clean_error(tmp_path):
    from gtnumba.cluster import visible_gpus
    if len(visible_gpus()) >= 8:
        pytest.skip("this machine has 8 GPUs")
    res = run_cmd(["--gpus", "8", "--out", str(tmp_path)])
    assert res.returncode == 2, res.stderr
    assert f"asked for 8 GPUs but {len(visible_gpus())} are visible" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("data, message", [
    ("/no/such/dir/pixels.npz", "data file '/no/such/dir/pixels.npz': no such file"),
    ("mnist", "unknown data set 'mnist'"),
])
def test_bad_data_is_a_clean_error(tmp_path, capsys, data, message):
    from models.pixel_transformer import main
    assert main(["--data", data, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err


def test_bad_npz_content_is_a_clean_error(tmp_path, capsys):
    from models.pixel_transformer import main
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((4, 2, 3, 5)), y=np.zeros(4, np.int64))
    assert main(["--data", str(bad), "--out", str(tmp_path)]) == 2
    assert "square images" in capsys.readouterr().err


def test_help_documents_every_flag():
    res = run_cmd(["--help"])
    check_ok(res)
    from models.pixel_transformer import build_parser
    flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}
    issue = {"--gpus", "--workers", "--scheduler", "--img-size", "--seq-len", "--embed-dim", "--heads", "--layers",
             "--ff-dim", "--batch-size", "--epochs", "--lr", "--optimizer", "--lr-schedule", "--warmup-steps",
             "--seed", "--data", "--out", "--resume", "--report"}
    assert issue <= flags
    for flag in flags:
        assert flag in res.stdout, flag
    assert "chance" in res.stdout and "--label" in res.stdout


# ---- the GT-style example ---------------------------------------------------------------------
def _losses(stdout):
    return [float(line.split()[-1]) for line in stdout.splitlines() if line.startswith("step")]


def test_gt_style_example_loss_falls():
    res = subprocess.run([sys.executable, "examples/gt_style_train.py", "--steps", "60", "--print-every", "1",
                          "--img-size", "8", "--embed-dim", "16", "--ff-dim", "32", "--layers", "1",
                          "--n-train", "256"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)
    check_ok(res)
    losses = _losses(res.stdout)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), losses
    assert "held-out accuracy" in res.stdout


def test_gt_style_example_under_gt_auto_shard():
    res = subprocess.run([sys.executable, "examples/gt_style_train.py", "--steps", "20", "--print-every", "1",
                          "--img-size", "8", "--embed-dim", "16", "--ff-dim", "32", "--layers", "1",
                          "--n-train", "256"],
                         cwd=ROOT, env=_env(GT_AUTO_SHARD="1", GT_WORKERS="2"), capture_output=True, text=True,
                         timeout=240)
    check_ok(res)
    assert "training on Dask" in res.stdout
    losses = _losses(res.stdout)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5]), losses
