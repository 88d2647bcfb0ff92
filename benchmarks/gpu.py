"""The first GPU session's benchmarks, in one process (run through benchmarks/gpu.sh, which runs
`pytest -m gpu` first).  GTNUMBA_GPU_DRYRUN=1 with NUMBA_ENABLE_CUDASIM=1 runs everything at tiny
sizes in the simulator (PyTorch on the CPU) to check the script; its numbers mean nothing.

    python -m benchmarks.gpu                  # every section, a table, appended to RESULTS.md
    python -m benchmarks.gpu --host-cost-fake # host cost per launch, simulator off, fake pointers

Sections: elementwise / reduction bandwidth vs a device-to-device copy; GEMM TFLOP/s at 4096^3
(Numba kernel, cuBLAS through CuPy); host cost per launch (a bound step) and per CUDA graph
replay; the Pixel Transformer step (fwd + bwd + SGD) at DESIGN.md's small and large configs vs
PyTorch CUDA eager; peak GPU memory.  Every number is a median of timed repeats after warm-up,
with the stream synchronized before each clock read.
"""
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

DRY = os.environ.get("GTNUMBA_GPU_DRYRUN") == "1"
# a dry run's numbers mean nothing: its table goes to $OUT (or /tmp), never to RESULTS.md
RESULTS = (os.path.join(os.environ.get("OUT", "/tmp"), "RESULTS.dryrun.md") if DRY else
           os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
ROWS = []


def row(what, ours, anchor="", note=""):
    """One result: printed, and appended to the results file at once (a run stopped by its time
    limit keeps what it measured)."""
    ROWS.append((what, ours, anchor, note))
    print(f"  {what}: {ours}  {anchor}  {note}", flush=True)
    with open(RESULTS, "a") as f:
        f.write(f"| {what} | {ours} | {anchor} | {note} |\n")


def median_time(fn, sync, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync():
    from gtnumba.kernels import backend
    if backend.current() == "cuda":
        from gtnumba.kernels.cuda import memory
        memory.synchronize()


def _dev(a):
    from gtnumba.kernels.cuda import memory
    return memory.to_device(np.ascontiguousarray(a))


# ---- bandwidth ------------------------------------------------------------------------------------
def bandwidth():
    from gtnumba.kernels.cuda import elementwise as ew, memory, reduction, runtime
    n = 1 << 10 if DRY else 1 << 26
    a, b = _dev(np.random.rand(n).astype(np.float32)), _dev(np.random.rand(n).astype(np.float32))
    got = memory.to_host(ew.add(a, b))
    assert np.allclose(got, memory.to_host(a) + memory.to_host(b))
    gb = 3 * n * 4 / 1e9
    t_add = median_time(lambda: ew.add(a, b), _sync, 3 if DRY else 20)
    out = memory.empty((n,), np.float32)
    t_copy = median_time(lambda: out.copy_to_device(a, stream=runtime.stream()), _sync, 3 if DRY else 20)
    t_sum = median_time(lambda: reduction.reduce_sum(a, None, False), _sync, 3 if DRY else 20)
    row("elementwise add fp32 (GB/s)", f"{gb / t_add:.0f}", f"d2d copy {2 * n * 4 / 1e9 / t_copy:.0f}",
        f"n={n}")
    row("sum fp32 (GB/s)", f"{n * 4 / 1e9 / t_sum:.0f}", "", f"n={n}")


# ---- GEMM ----------------------------------------------------------------------------------------
def gemm_bench():
    from gtnumba.kernels.cuda import gemm, memory
    n = 16 if DRY else 4096
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    da, db, out = _dev(a), _dev(b), memory.empty((n, n), np.float32)
    gemm.gemm(da, db, out)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    err = np.max(np.abs(memory.to_host(out) - ref)) / np.max(np.abs(ref))
    flops = 2 * n ** 3
    t = median_time(lambda: gemm.gemm(da, db, out), _sync, 2 if DRY else 10, warmup=1)
    anchor = ""
    cupy = gemm._cublas()
    if cupy is not None:
        t2 = median_time(lambda: gemm.matmul(da, db), _sync, 10, warmup=2)
        anchor = f"cuBLAS {flops / t2 / 1e12:.1f}"
    row(f"SGEMM {n}^3 (TFLOP/s)", f"Numba {flops / t / 1e12:.2f}", anchor, f"max rel err {err:.1e}")


# ---- host cost per launch and per graph replay ---------------------------------------------------------
def host_cost():
    """Bound replays of a one-launch plan step at a tiny size (the GPU idles: host-bound), and a
    whole cached plan of many tiny launches per CUDA graph replay."""
    import gtnumba as gt
    from gtnumba.kernels.cuda import graphs
    x = gt.tensor(np.random.rand(8).astype(np.float32))
    n_ops = 50

    def chain():
        y = x
        for _ in range(n_ops):
            y = y * 1.0001
        return y
    chain().numpy()
    repeats = 3 if DRY else 200
    os.environ["GTNUMBA_CUDA_GRAPHS"] = "0"
    t_bound = median_time(lambda: chain().numpy(), lambda: None, repeats)
    os.environ["GTNUMBA_CUDA_GRAPHS"] = "1"
    t_graph = median_time(lambda: chain().numpy(), lambda: None, repeats) if graphs.enabled() else None
    row("eager chain of 50 tiny ops, recorded + bound launches + read (us per op)",
        f"{t_bound / n_ops * 1e6:.1f}")
    if t_graph is not None:
        row("same chain, its plan replayed as one CUDA graph (us per op)", f"{t_graph / n_ops * 1e6:.1f}")


def _per_call(fn, repeats):
    """Thread CPU seconds per call (the machine may be shared: CPU time, not wall time), the
    median of 5 rounds after a warm-up."""
    for _ in range(200):
        fn()
    rounds = []
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(repeats // 5):
            fn()
        rounds.append((time.thread_time() - t0) / (repeats // 5))
    return statistics.median(rounds)


def host_cost_fake(repeats=50000):
    """Host cost of one bound launch with the simulator off and fake device pointers: the output's
    allocation (caching pool) and wrapping, the argument template with the new pointers, up to
    the driver call (a stub).  Also the unbound path (the op's host code, then Numba's dispatcher
    stubbed out) for comparison."""
    import functools
    import types
    from numba import typeof
    from numba.cuda.dispatcher import _Kernel
    from gtnumba.kernels.cuda import bound, elementwise as ew, memory, runtime
    assert not runtime.SIMULATOR, "run with NUMBA_ENABLE_CUDASIM unset"

    class FakeRaw:
        def __init__(self, p):
            self.device_pointer_value = p

    class FakeContext:
        next = 1 << 32

        def memalloc(self, size):
            FakeContext.next += size
            return FakeRaw(FakeContext.next)
    memory._allocator[:] = [memory._CachingAllocator(context=FakeContext())]
    n = 1024
    a, b = memory.empty((n,), np.float32), memory.empty((n,), np.float32)
    out = memory.empty((n,), np.float32)
    args = [runtime.flat(out), n, (n,), runtime.flat(a), (1,), runtime.flat(b), (1,)]
    kern = types.SimpleNamespace(argument_types=[typeof(v) for v in args], extensions=[])
    kern._prepare_args = functools.partial(_Kernel._prepare_args, kern)      # Numba's own marshalling
    calls = []
    refs = [(bound._TMP, 0, (n,)), None, None, (bound._IN, 0, (n,)), None, (bound._IN, 1, (n,)), None]
    packed = bound.pack(kern, args, refs, lambda *a: calls.append(1), None, None, None)
    step = bound.BoundStep((((n,), np.dtype(np.float32)),), [packed], ((bound._TMP, 0, (n,)),), False, False)
    t_bound = _per_call(lambda: step(a, b), repeats)
    saved = runtime.launch_config
    runtime.launch_config = lambda kernel, grid, block, *args: None      # stop before Numba's dispatcher
    try:
        t_unbound = _per_call(lambda: ew.add(a, b), repeats // 4)
    finally:
        runtime.launch_config = saved
    print(f"host cost per launch (thread CPU time), fake pointers, driver call stubbed: bound step {t_bound * 1e6:.2f} us; "
          f"unbound op host code (before Numba's own launch) {t_unbound * 1e6:.2f} us "
          f"({len(calls)} stub launches)")
    return t_bound, t_unbound


# ---- Pixel Transformer step ------------------------------------------------------------------------
SMALL = dict(b=2, s=4, e=128, h=4, layers=2, ff=256, img=200)
LARGE = dict(b=64, s=16, e=512, h=8, layers=6, ff=2048, img=200)
TINY = dict(b=2, s=2, e=8, h=2, layers=1, ff=16, img=4)


def _ours_step(cfg, steps):
    import gtnumba as gt
    from gtnumba import nn, optim
    from models.pixel_transformer import PixelTransformer
    gt.manual_seed(0)
    model = PixelTransformer(img_size=cfg["img"], seq_len=cfg["s"], embed_dim=cfg["e"], heads=cfg["h"],
                             layers=cfg["layers"], ff_dim=cfg["ff"])
    opt = optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = gt.tensor(rng.standard_normal((cfg["b"], cfg["s"], cfg["img"] ** 2)).astype(np.float32))
    y = gt.tensor(rng.integers(0, 10, cfg["b"]))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    t0 = time.perf_counter()
    first = step().item()
    t_first = time.perf_counter() - t0
    t = median_time(step, _sync, steps)
    return t, t_first, first


def _torch_step(cfg, steps):
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    e = cfg["e"]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(e), torch.nn.LayerNorm(e)
            self.attn = torch.nn.MultiheadAttention(e, cfg["h"], batch_first=True)
            self.ff = torch.nn.Sequential(torch.nn.Linear(e, cfg["ff"]), torch.nn.GELU(), torch.nn.Linear(cfg["ff"], e))

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.ff(self.ln2(x))

    class PT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(cfg["img"] ** 2, e)
            self.pos = torch.nn.Parameter(torch.randn(16, e) * 0.02)
            self.blocks = torch.nn.ModuleList([Block() for _ in range(cfg["layers"])])
            self.norm, self.head = torch.nn.LayerNorm(e), torch.nn.Linear(e, 10)

        def forward(self, x):
            h = self.embed(x) + self.pos[:x.shape[1]]
            for blk in self.blocks:
                h = blk(h)
            return self.head(self.norm(h).mean(dim=1))
    model = PT().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(cfg["b"], cfg["s"], cfg["img"] ** 2, device=dev)
    y = torch.randint(0, 10, (cfg["b"],), device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return median_time(step, sync, steps), dev


def pixel_transformer():
    configs = [("tiny", TINY)] if DRY else [("small", SMALL), ("large", LARGE)]
    for name, cfg in configs:
        steps = 3 if DRY else (30 if name == "small" else 10)
        t, t_first, loss = _ours_step(cfg, steps)
        anchor = ""
        try:
            tt, dev = _torch_step(cfg, steps)
            anchor = f"PyTorch {dev} eager {tt * 1e3:.2f} ms ({t / tt:.2f}x)"
        except Exception as exc:  # no torch: say so in the table
            anchor = f"PyTorch failed: {type(exc).__name__}: {exc}"
        shown = " ".join(f"{k}{v}" for k, v in cfg.items())
        row(f"Pixel Transformer step {name} ({shown}) ms", f"{t * 1e3:.2f}", anchor,
            f"first step {t_first:.1f} s (compiles), loss {loss:.3f}")


FRESH_LIMIT = 100
FRESH = """
import sys, time
t0 = time.perf_counter()
import benchmarks.gpu as g
import gtnumba as gt
gt.set_device(sys.argv[1])
t1 = time.perf_counter()
cfg = g.TINY if g.DRY else g.SMALL
t, t_first, loss = g._ours_step(cfg, 1)
print(f"FRESH import {t1 - t0:.2f} first_step {t_first:.2f} next_step {t:.4f}")
"""


def fresh_process(device="cuda"):
    """The first step of a fresh process (a restarted worker), with an empty kernel cache and then
    with the cache the first run left (NUMBA_CACHE_DIR: a new directory for this run)."""
    import subprocess
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="gtnumba-cache-"))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for label in ("empty kernel cache", "warm kernel cache"):
        try:
            res = subprocess.run([sys.executable, "-c", FRESH, device], capture_output=True, text=True, env=env,
                                 cwd=root, timeout=FRESH_LIMIT)
        except subprocess.TimeoutExpired:
            row(f"fresh process on {device}, {label}: first step (s)", f"> {FRESH_LIMIT} (stopped)")
            continue
        line = [x for x in res.stdout.splitlines() if x.startswith("FRESH")]
        if res.returncode or not line:
            raise RuntimeError(f"fresh process failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")
        _, _, imp, _, first, _, nxt = line[0].split()
        row(f"fresh process on {device}, {label}: first step (s)", first, "",
            f"import {imp} s, next step {float(nxt) * 1e3:.1f} ms")


def peak_memory():
    from gtnumba.kernels.cuda import memory, runtime
    if runtime.SIMULATOR:
        row("GPU memory", "n/a (simulator)")
        return
    from numba import cuda
    free, total = cuda.current_context().get_memory_info()
    row("GPU memory in use at the end (GiB)", f"{(total - free) / 2 ** 30:.2f}", "",
        f"pool: {memory.stats()}")


def versions():
    import numba
    out = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"numba {numba.__version__}"]
    for mod in ("numba_cuda", "cupy", "torch", "dask"):
        try:
            m = __import__(mod)
            out.append(f"{mod} {getattr(m, '__version__', '?')}")
        except Exception:
            pass
    return ", ".join(out)


def card():
    from gtnumba.kernels.cuda import runtime
    if runtime.SIMULATOR:
        return "Numba CUDA simulator (dry run, tiny sizes: numbers mean nothing)"
    from numba import cuda
    return cuda.get_current_device().name.decode() if isinstance(cuda.get_current_device().name, bytes) \
        else str(cuda.get_current_device().name)


def results_header():
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## GPU run{' (DRY RUN)' if DRY else ''}: {card()}, {when}\n",
             f"benchmarks/gpu.sh; {versions()}; medians after warm-up, stream synchronized before each clock read\n",
             "| what | gtnumba | anchor | note |", "| --- | --- | --- | --- |"]
    with open(RESULTS, "a") as f:
        f.write("\n".join(lines) + "\n")


def print_table():
    print("\n| what | gtnumba | anchor | note |\n| --- | --- | --- | --- |")
    print("\n".join(f"| {w} | {o} | {a} | {n} |" for w, o, a, n in ROWS))


def main():
    if "--host-cost-fake" in sys.argv:
        host_cost_fake()
        return 0
    import gtnumba as gt
    gt.set_device("cuda")
    print(f"card: {card()}\nversions: {versions()}", flush=True)
    results_header()
    failed = 0
    for section in (bandwidth, gemm_bench, host_cost, pixel_transformer, peak_memory, fresh_process):
        print(f"== {section.__name__}", flush=True)
        t0 = time.perf_counter()
        try:
            section()
        except Exception as exc:
            failed += 1
            import traceback
            traceback.print_exc()
            row(section.__name__, f"FAILED: {type(exc).__name__}: {exc}")
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    print_table()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
