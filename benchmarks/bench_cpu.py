"""CPU benchmarks: gtnumba vs NumPy vs PyTorch CPU (the anchor), same process, same shapes, float32.

    python benchmarks/bench_cpu.py [--quick] [--no-write] [--out PATH]

1. main ops (gtnumba timed with its graph/plan overhead: build the op, materialize with .numpy()),
   plus gtnumba's per-op overhead on a tiny (4x4) tensor;
2. one training step (forward + backward + SGD) of the Pixel Transformer (batch 2, seq 4 tokens of
   200x200 = 40,000 values, embed 128, 2 pre-norm blocks, 4 heads, ff 256 GELU, mean pool,
   10 classes, cross-entropy), written GT-style with gtnumba and with PyTorch, same weights and data;
   loss (and the parameters after one step) checked before timing; median of 60 steps each (20 with
   --quick) after warm-up; "no work for unrequested gradients" (input without requires_grad: no
   input-sized node in the step's plan) and "memory flat" (RSS every 50 of 300 steps); where the
   gtnumba step's time goes (phases, kernels by op and shape, cProfile, what-if kernels);
3. a table on stdout and benchmarks/RESULTS.md (machine, date, versions, tables, RSS series,
   cProfile of the gtnumba step, findings, load per section).

The machine may be shared: other processes' CPU use is measured per section and per timed block,
contenders run in alternating blocks after idle pauses, quiet blocks are preferred and minima are
reported next to medians. A full run takes ~3-4 minutes on the 2-core reference machine (longer
when it is busy: the 300-step memory run has no time cap).

PyTorch is optional (the `bench` extra): without it the NumPy/gtnumba parts still run.
Thread settings are left at their defaults for every library; they are recorded, not changed.
"""
import argparse
import cProfile
import datetime
import gc
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numba  # noqa: E402

import gtnumba as gt  # noqa: E402
from gtnumba._tensor import apply  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:   # the NumPy/gtnumba parts still run
    torch = None
    F = None

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
F32 = np.float32


# ---- helpers ---------------------------------------------------------------------------------
class CpuMonitor:
    """CPU used by *other* processes while we measure (the machine may be shared): from /proc/stat
    (all busy jiffies) minus this process's own CPU time (os.times)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ncpu = os.cpu_count() or 1

    def snap(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v[:8]) - v[3] - v[4]) / self.tick     # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def foreign(self, a, b):
        """Share of the machine's CPU (0..1) used by other processes between snapshots a and b."""
        wall = b[0] - a[0]
        if wall <= 0:
            return float("nan")
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (wall * self.ncpu))


MON = CpuMonitor()
LOAD_LOG = []    # (section, foreign CPU share during it, loadavg at its end)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


class section:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.a = MON.snap()
        return self

    def __exit__(self, *exc):
        b = MON.snap()
        LOAD_LOG.append((self.name, MON.foreign(self.a, b), loadavg(), b[0] - self.a[0]))
        return False


def wait_idle(max_s, threshold=0.15):
    """Wait (at most max_s) until other processes use < threshold of the CPUs over one second."""
    t0 = time.perf_counter()
    while True:
        a = MON.snap()
        time.sleep(1.0)
        share = MON.foreign(a, MON.snap())
        waited = time.perf_counter() - t0
        if share < threshold or waited >= max_s:
            return waited, share


QUIET = 0.15     # a block is "quiet" when other processes used < 15% of the CPUs during it
PAUSE_S = 0.25   # idle gap before each timed block: lets the previous library's threads stop spinning


DEADLINE = [float("inf")]   # perf_counter time after which optional extra rounds are skipped


WAIT_BUDGET = [0.0]          # seconds the run may still spend waiting for quiet moments


def time_left():
    return DEADLINE[0] - time.perf_counter()


def wait_quiet(max_s, threshold=QUIET):
    """Wait for a moment when other processes use < threshold of the CPUs (0.5 s probes), at most
    max_s and at most what is left of WAIT_BUDGET; returns the seconds waited."""
    t0 = time.perf_counter()
    limit = min(max_s, WAIT_BUDGET[0])
    while time.perf_counter() - t0 < limit:
        a = MON.snap()
        time.sleep(0.5)
        if MON.foreign(a, MON.snap()) < threshold:
            break
    waited = time.perf_counter() - t0
    WAIT_BUDGET[0] = max(0.0, WAIT_BUDGET[0] - waited)
    return waited


def time_blocks(fns, block_time, rounds=2, max_rounds=4, min_samples=3, sample_s=0.005, pause=PAUSE_S):
    """Per-call timing of each fn: a dict with "med" (median over its quiet blocks, or over all its
    blocks when none was quiet), "min", "quiet" (number of quiet blocks), "share" (other processes'
    CPU share during the blocks used).

    Contenders run in blocks, A B C then C B A in the next round, and so on, so that a busy period
    of the (shared) machine hits all of them alike; each block is preceded by an idle pause, because
    a BLAS/OpenMP pool keeps spinning ~0.1 s after its last call (measured: an OpenBLAS matmul slows
    the next ~0.1 s of PyTorch ops) and would otherwise be charged to the next contender. Rounds are
    added (up to max_rounds, time permitting) while a contender has no quiet block. A sample is a
    batch of calls lasting ~sample_s (one call when sample_s is 0)."""
    batches = []
    for fn in fns:
        fn()
        fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        batches.append(max(1, min(1000, int(sample_s / one))))
    blocks = [[] for _ in fns]          # per contender: [(per-call times, foreign share)]
    r = 0
    while r < rounds or (r < max_rounds and time_left() > 0
                         and any(all(sh >= QUIET for _, sh in bl) for bl in blocks)):
        order = list(range(len(fns)))
        if r % 2:
            order.reverse()
        wait_quiet(3.0)
        for i in order:
            fn, n = fns[i], batches[i]
            time.sleep(pause)
            fn()                            # one untimed call: caches and thread pools warm again
            ts, spent, a = [], 0.0, MON.snap()
            while spent < block_time or len(ts) < min_samples:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                dt = time.perf_counter() - t0
                ts.append(dt / n)
                spent += dt
            blocks[i].append((ts, MON.foreign(a, MON.snap())))
        r += 1
    out = []
    for bl in blocks:
        quiet = [(ts, sh) for ts, sh in bl if sh < QUIET]
        used = quiet or bl
        out.append({"med": statistics.median(t for ts, _ in used for t in ts),
                    "min": min(t for ts, _ in bl for t in ts), "quiet": len(quiet),
                    "share": statistics.mean(sh for _, sh in used)})
    return out


def quiet_runs(fn, want, max_runs, pause=0.0):
    """Call fn() (which returns a measurement) until `want` calls ran while other processes used
    < QUIET of the CPUs, or max_runs calls / the deadline; returns (chosen results, their mean
    foreign share, number quiet): the quiet ones, else the `want` least disturbed."""
    runs = []
    while len(runs) < max_runs:
        if pause:
            time.sleep(pause)
        if runs and runs[-1][1] >= QUIET:
            wait_quiet(3.0)
        a = MON.snap()
        res = fn()
        runs.append((res, MON.foreign(a, MON.snap())))
        n_quiet = sum(1 for _, sh in runs if sh < QUIET)
        if n_quiet >= want or (len(runs) >= want and time_left() < 0):
            break
    runs.sort(key=lambda r: r[1])
    quiet = [r for r in runs if r[1] < QUIET]
    chosen = quiet[:want] if len(quiet) >= want else runs[:want]
    return [r for r, _ in chosen], statistics.mean(sh for _, sh in chosen), len(quiet)


def fmt_t(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.3f} ms"


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def rss_mib():
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    except OSError:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    blas = "threadpoolctl not installed"
    try:
        import threadpoolctl
        blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('user_api')}, "
                         f"{i.get('num_threads')} threads, {i.get('architecture', '?')})"
                         for i in threadpoolctl.threadpool_info()) or "none found"
    except ImportError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    info = {
        "cpu": cpu, "cores (os.cpu_count)": os.cpu_count(), "memory": f"{mem:.1f} GiB",
        "date (date -u)": date, "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "gtnumba": gt.__version__,
        "torch": torch.__version__ if torch is not None else "not installed",
        "torch.get_num_threads()": torch.get_num_threads() if torch is not None else "-",
        "numpy BLAS (threadpoolctl)": blas,
    }
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        info[var] = os.environ.get(var, "not set")
    info["numba threads"] = numba.config.NUMBA_NUM_THREADS
    return info


# ---- 1. main ops -------------------------------------------------------------------------------
def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_layernorm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


def gt_layernorm_composed(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / (var + eps).sqrt() * w + b


def op_cases(rng):
    """(name, numpy inputs, gtnumba fn, numpy fn, torch fn)."""
    def r(*shape):
        return rng.standard_normal(shape).astype(F32)

    big, big2, vec = r(1024, 1024), r(1024, 1024), r(1024)
    rows, lw, lb = r(4096, 512), r(512), r(512)
    m1, m2 = r(512, 512), r(512, 512)
    b1, b2 = r(8, 128, 64), r(8, 64, 128)
    tiny1, tiny2 = r(4, 4), r(4, 4)
    cases = [
        ("add 1024x1024 (1M)", (big, big2), lambda a, b: a + b, np.add,
         lambda a, b: torch.add(a, b)),
        ("mul 1024x1024 (1M)", (big, big2), lambda a, b: a * b, np.multiply,
         lambda a, b: torch.mul(a, b)),
        ("exp 1024x1024 (1M)", (big,), lambda a: a.exp(), np.exp, lambda a: torch.exp(a)),
        ("broadcast add 1024x1024 + 1024", (big, vec), lambda a, b: a + b, np.add,
         lambda a, b: torch.add(a, b)),
        ("sum axis=0 of 1024x1024", (big,), lambda a: a.sum(axis=0), lambda a: a.sum(axis=0),
         lambda a: a.sum(dim=0)),
        ("sum axis=-1 of 1024x1024", (big,), lambda a: a.sum(axis=-1), lambda a: a.sum(axis=-1),
         lambda a: a.sum(dim=-1)),
        ("softmax last axis 4096x512", (rows,), lambda a: gt.softmax(a, axis=-1), np_softmax,
         lambda a: torch.softmax(a, dim=-1)),
        ("layernorm 4096x512 (fused op)", (rows, lw, lb),
         lambda x, w, b: apply("layer_norm", x, w, b, eps=1e-5)[0], np_layernorm,
         lambda x, w, b: F.layer_norm(x, (512,), w, b, 1e-5)),
        ("layernorm 4096x512 (mean/var/sqrt)", (rows, lw, lb), gt_layernorm_composed, np_layernorm,
         lambda x, w, b: F.layer_norm(x, (512,), w, b, 1e-5)),
        ("matmul 512x512 @ 512x512", (m1, m2), lambda a, b: a @ b, np.matmul,
         lambda a, b: torch.matmul(a, b)),
        ("batched matmul (8,128,64)@(8,64,128)", (b1, b2), lambda a, b: a @ b, np.matmul,
         lambda a, b: torch.matmul(a, b)),
        ("transpose+copy 1024x1024", (big,), lambda a: a.T.reshape(-1),
         lambda a: np.ascontiguousarray(a.T), lambda a: a.t().contiguous()),
        ("tiny add 4x4 (framework cost)", (tiny1, tiny2), lambda a, b: a + b, np.add,
         lambda a, b: torch.add(a, b)),
    ]
    return cases


def bench_ops(quick):
    rng = np.random.default_rng(0)
    block = 0.08 if quick else 0.25
    rows = []
    for name, arrays, gfn, nfn, tfn in op_cases(rng):
        gin = [gt.tensor(a) for a in arrays]
        ref = nfn(*arrays)
        got = gfn(*gin).numpy()
        np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=2e-3, atol=2e-3, err_msg=name)
        fns = [lambda: gfn(*gin).numpy(), lambda: nfn(*arrays),
               # what .numpy() adds on top of the computation: one copy of the result
               lambda: np.array(ref, copy=True)]
        if torch is not None:
            tin = [torch.from_numpy(a.copy()) for a in arrays]
            tref = tfn(*tin).numpy()
            np.testing.assert_allclose(tref.reshape(ref.shape), ref, rtol=2e-3, atol=2e-3, err_msg=name)
            fns.append(lambda: tfn(*tin))
        with section(f"op: {name}"):
            res = time_blocks(fns, block)
        t_gt, m_gt = res[0]["med"], res[0]["min"]
        t_np, m_np = res[1]["med"], res[1]["min"]
        t_copy = res[2]["med"]
        t_th, m_th = (res[3]["med"], res[3]["min"]) if torch is not None else (None, None)
        rows.append({"name": name, "gt": t_gt, "np": t_np, "torch": t_th, "copy": t_copy,
                     "gt_min": m_gt, "np_min": m_np, "torch_min": m_th,
                     "load": statistics.mean(r["share"] for r in res),
                     "quiet": min(r["quiet"] for r in res)})
        print(f"  {name:40s} gtnumba {fmt_t(t_gt):>11s}  numpy {fmt_t(t_np):>11s}  "
              f"torch {fmt_t(t_th):>11s}  gt/torch {ratio(t_gt, t_th):>7s} (min: {ratio(m_gt, m_th)})  "
              f"other procs {rows[-1]['load']:.0%}", flush=True)
    # tiny-op overhead, split into recording the node and materializing it
    a, b = gt.tensor(np.ones((4, 4), F32)), gt.tensor(np.ones((4, 4), F32))
    c = a + b
    c.numpy()
    with section("op: tiny-add split"):
        t_record, t_numpy_done = (r["med"] for r in time_blocks([lambda: a + b, lambda: c.numpy()], block))
    overhead = {"record": t_record, "numpy_of_done": t_numpy_done,
                "total": next(r["gt"] for r in rows if r["name"].startswith("tiny"))}
    n_prof = 3000
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n_prof):
        (a + b).numpy()
    prof.disable()
    st = pstats.Stats(prof)
    top = []
    for (fname, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: kv[1][2],
                                                          reverse=True):
        if func.startswith("<method 'disable'"):
            continue
        short = os.path.relpath(fname, ROOT) if fname.startswith(ROOT) else os.path.basename(fname)
        top.append((f"{short}:{line}({func})", nc / n_prof, tt / n_prof, tt / st.total_tt))
        if len(top) == 10:
            break
    overhead["profile"] = (st.total_tt / n_prof, top)
    print(f"  tiny add split: record the node {fmt_t(t_record)}, .numpy() of a computed tensor "
          f"{fmt_t(t_numpy_done)}, so plan+run of one node ~ "
          f"{fmt_t(overhead['total'] - t_record - t_numpy_done)}", flush=True)
    return rows, overhead


# ---- 2. the Pixel Transformer step -----------------------------------------------------------
B, S, PIX, E, H, L, FF, C = 2, 4, 200 * 200, 128, 4, 2, 256, 10
D = E // H
EPS = 1e-5
LR = 1e-3


def init_params(seed=0):
    rng = np.random.default_rng(seed)

    def lin(i, o):
        return (rng.standard_normal((i, o)) / np.sqrt(i)).astype(F32), (0.02 * rng.standard_normal(o)).astype(F32)

    p = {}
    p["emb_w"], p["emb_b"] = lin(PIX, E)
    p["pos"] = (0.02 * rng.standard_normal((S, E))).astype(F32)
    for l in range(L):
        for n in ("ln1", "ln2"):
            p[f"{l}.{n}_w"] = (1 + 0.05 * rng.standard_normal(E)).astype(F32)
            p[f"{l}.{n}_b"] = (0.05 * rng.standard_normal(E)).astype(F32)
        for n, (i, o) in (("q", (E, E)), ("k", (E, E)), ("v", (E, E)), ("o", (E, E)),
                          ("f1", (E, FF)), ("f2", (FF, E))):
            p[f"{l}.{n}_w"], p[f"{l}.{n}_b"] = lin(i, o)
    p["cls_w"], p["cls_b"] = lin(E, C)
    return p


def make_data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((B, S, PIX), dtype=F32)          # pixel intensities in [0, 1)
    y = rng.integers(0, C, B).astype(np.int64)
    return x, y


def gt_loss(P, x, y):
    """The model, GT style: raw tensors, gtnumba ops, fused layer norm and cross-entropy rows."""
    def ln(t, n):
        return apply("layer_norm", t, P[n + "_w"], P[n + "_b"], eps=EPS)[0]

    def lin(t, n):
        return t @ P[n + "_w"] + P[n + "_b"]

    def heads(t):
        return t.reshape(B, S, H, D).permute(0, 2, 1, 3)

    h = x @ P["emb_w"] + P["emb_b"] + P["pos"]
    for l in range(L):
        a = ln(h, f"{l}.ln1")
        q, k, v = heads(lin(a, f"{l}.q")), heads(lin(a, f"{l}.k")), heads(lin(a, f"{l}.v"))
        att = gt.softmax((q @ k.T) * (1.0 / math.sqrt(D)), axis=-1)
        o = (att @ v).permute(0, 2, 1, 3).reshape(B, S, E)
        h = h + lin(o, f"{l}.o")
        f = lin(lin(ln(h, f"{l}.ln2"), f"{l}.f1").gelu(), f"{l}.f2")
        h = h + f
    logits = lin(h.mean(axis=1), "cls")
    return apply("cross_entropy", logits, y)[0].mean()


def gt_step(P, x, y):
    loss = gt_loss(P, x, y)
    loss.backward()
    with gt.no_grad():
        for p in P.values():
            p -= LR * p.grad
            p.grad.zero_()
    return loss.item()


def torch_loss(P, x, y):
    def ln(t, n):
        return F.layer_norm(t, (E,), P[n + "_w"], P[n + "_b"], EPS)

    def lin(t, n):
        return t @ P[n + "_w"] + P[n + "_b"]

    def heads(t):
        return t.reshape(B, S, H, D).permute(0, 2, 1, 3)

    h = x @ P["emb_w"] + P["emb_b"] + P["pos"]
    for l in range(L):
        a = ln(h, f"{l}.ln1")
        q, k, v = heads(lin(a, f"{l}.q")), heads(lin(a, f"{l}.k")), heads(lin(a, f"{l}.v"))
        att = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D)), dim=-1)
        o = (att @ v).permute(0, 2, 1, 3).reshape(B, S, E)
        h = h + lin(o, f"{l}.o")
        f = lin(F.gelu(lin(ln(h, f"{l}.ln2"), f"{l}.f1")), f"{l}.f2")
        h = h + f
    logits = lin(h.mean(dim=1), "cls")
    return F.cross_entropy(logits, y)


def torch_step(P, x, y):
    loss = torch_loss(P, x, y)
    loss.backward()
    with torch.no_grad():
        for p in P.values():
            p -= LR * p.grad
            p.grad.zero_()
    return loss.item()


def step_plan_census():
    """The largest cached plan (the training step): node count per op; computed nodes the size of the
    input batch (the input's gradient, which nobody asked for); nodes of the embedding weight's size
    or larger."""
    try:
        cache = sys.modules["gtnumba.sched.plan_cache"]._CACHE
        key = max((k for (_, k) in cache), key=len)
        leaves, nodes = key[0], key[1:]
        counts, input_sized, big, matmuls = {}, [], [], []
        views = ("reshape", "permute", "alias", "select", "expand")

        def shape_of(slot):
            if slot < len(leaves):
                return tuple(leaves[slot][0][0].shape)
            return tuple(nodes[slot - len(leaves)][3][0].shape)
        for op, attrs, ins, specs, keep in nodes:
            counts[op] = counts.get(op, 0) + 1
            if op == "matmul":
                matmuls.append((tuple(shape_of(i) for i in ins), tuple(specs[0].shape)))
            for sp in specs:
                n = math.prod(sp.shape)
                if op in views:
                    continue
                if n == B * S * PIX:
                    input_sized.append((op, sp.shape))
                if n >= PIX * E:
                    big.append((op, sp.shape))
        return {"n_nodes": len(nodes), "n_leaves": len(leaves), "counts": counts,
                "input_sized": input_sized, "big": big, "matmuls": matmuls}
    except Exception as e:   # internal layout changed: report, do not fail
        return {"error": repr(e)}


def gt_step_phases(P, x, y, steps):
    """Per-step seconds in each phase (forward record, backward record, SGD record, .item() = plan
    lookup + run) and per kernel inside the executor (by kernel name)."""
    mat = sys.modules["gtnumba.sched.materialize"]
    original = mat.run_plan
    acc = {}

    def timed(kernel):
        name = getattr(kernel, "__name__", type(kernel).__name__)

        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = kernel(*args, **kwargs)
            dt = time.perf_counter() - t0
            first = out[0] if isinstance(out, tuple) and out else out
            shape = tuple(getattr(first, "shape", ()))
            a = acc.setdefault((name, shape), [0.0, 0])
            a[0] += dt
            a[1] += 1
            return out
        return run

    def timed_run_plan(plan, *args, **kwargs):   # the executor itself, with a clock on each kernel
        saved = [st.kernel for st in plan.steps]
        try:
            for st in plan.steps:
                st.kernel = timed(st.kernel)
            return original(plan, *args, **kwargs)
        finally:
            for st, k in zip(plan.steps, saved):
                st.kernel = k

    names = ("forward (record)", "backward (record)", "SGD (record)", ".item(): plan + run")

    def one_step():
        acc.clear()
        t0 = time.perf_counter()
        loss = gt_loss(P, x, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        with gt.no_grad():
            for p in P.values():
                p -= LR * p.grad
                p.grad.zero_()
        t3 = time.perf_counter()
        loss.item()
        t4 = time.perf_counter()
        return t4 - t0, dict(zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3))), \
            {k: tuple(v) for k, v in acc.items()}

    mat.run_plan = timed_run_plan
    try:
        chosen, share, n_quiet = quiet_runs(one_step, steps, 3 * steps)
    finally:
        mat.run_plan = original
    n = len(chosen)
    total = sum(c[0] for c in chosen) / n
    phases = {k: sum(c[1][k] for c in chosen) / n for k in names}
    kernels = {}
    for _, _, kern in chosen:
        for k, (t, calls) in kern.items():
            a = kernels.setdefault(k, [0.0, 0])
            a[0] += t / n
            a[1] += calls / n
    return total, phases, {k: tuple(v) for k, v in kernels.items()}, {"steps": n, "share": share,
                                                                       "quiet": n_quiet}


def profile_gt_step(P, x, y, steps):
    """cProfile of single steps; the least disturbed `steps` of them are merged."""
    def one_step():
        prof = cProfile.Profile()
        prof.enable()
        gt_step(P, x, y)
        prof.disable()
        return prof

    chosen, share, n_quiet = quiet_runs(one_step, steps, 3 * steps)
    st = pstats.Stats(chosen[0])
    for prof in chosen[1:]:
        st.add(prof)
    steps = len(chosen)
    total = st.total_tt

    def top(col, n):
        out = []
        for (fname, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: kv[1][col],
                                                              reverse=True):
            if func.startswith("<method 'disable'"):
                continue
            short = os.path.relpath(fname, ROOT) if fname.startswith(ROOT) else os.path.basename(fname)
            out.append({"where": f"{short}:{line}({func})", "calls": nc / steps, "tottime": tt / steps,
                        "cumtime": ct / steps, "share": (ct if col == 3 else tt) / total})
            if len(out) == n:
                break
        return out

    return total / steps, top(3, 12), top(2, 12), {"steps": steps, "share": share, "quiet": n_quiet}


def what_if(p0, x_np, quick):
    """The step's biggest kernels as gtnumba runs them vs as one folded GEMM / one in-place pass
    (NumPy, same process): how much of the gap each structural choice explains."""
    W = p0["emb_w"].copy()
    G = np.random.default_rng(2).standard_normal((B, S, E)).astype(F32)
    lr = F32(LR)
    x2 = x_np.reshape(B * S, PIX)
    G2 = G.reshape(B * S, E)

    Gnew = W * F32(0.5)
    Z = np.zeros_like(W)
    Wp, Gacc = W.copy(), np.zeros_like(W)

    def sgd_gt_style():      # as the step's plan runs it for the 40000x128 weight: 4 new arrays
        g = Z + Gnew                       # grad accumulated into the zero_()'d grad
        W - lr * g                         # p -= lr * p.grad: mul then sub
        np.full(W.shape, 0, F32)           # p.grad.zero_(): a new zeros array

    def sgd_inplace():       # what PyTorch does: grad += new in place, p -= lr*g, grad.zero_()
        np.add(Gacc, Gnew, out=Gacc)
        np.subtract(Wp, lr * Gacc, out=Wp)
        Gacc.fill(0)

    try:
        from gtnumba.ops import OPS
        mm_kernel = OPS["matmul"].kernels["cpu"]
    except Exception:
        mm_kernel = np.matmul
    cases = [
        ("embedding forward: gtnumba's cpu matmul kernel as registered now, (2,4,40000) @ (40000,128)",
         lambda: mm_kernel(x_np, W)),
        ("embedding forward: np.matmul((2,4,40000), (40000,128)) (batched)",
         lambda: np.matmul(x_np, W)),
        ("embedding forward folded: (8,40000) @ (40000,128)", lambda: x2 @ W),
        ("weight grad batched: matmul((2,40000,4), (2,4,128)) -> (2,40000,128), then sum(axis=0)",
         lambda: np.sum(np.matmul(x_np.transpose(0, 2, 1), G), axis=(0,))),
        ("weight grad folded: (40000,8) @ (8,128)", lambda: x2.T @ G2),
        ("SGD on the 40000x128 weight as the GT-style step does it: zeros+g, lr*g, p-(...), new zeros",
         sgd_gt_style),
        ("SGD in place: g += new, p -= lr*g, g.fill(0)", sgd_inplace),
    ]
    with section("what-if"):
        res = time_blocks([f for _, f in cases], 0.2 if quick else 0.6, sample_s=0.0)
    return [(name, r["med"], r["min"], r["share"]) for (name, _), r in zip(cases, res)]


def bench_step(quick):
    p0 = init_params(0)
    x_np, y_np = make_data(1)
    out = {}

    # gtnumba
    P = {k: gt.tensor(v.copy(), requires_grad=True) for k, v in p0.items()}
    x, y = gt.tensor(x_np), gt.tensor(y_np)
    assert not x.requires_grad, "the input batch must not require grad"
    t0 = time.perf_counter()
    gt_loss0 = gt_step(P, x, y)
    out["gt_first_step"] = time.perf_counter() - t0
    gt_p1 = {k: v.numpy() for k, v in P.items()}

    # PyTorch, same weights and data
    if torch is not None:
        TP = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in p0.items()}
        tx, ty = torch.from_numpy(x_np.copy()), torch.from_numpy(y_np.copy())
        th_loss0 = torch_step(TP, tx, ty)
        out["loss0"] = (gt_loss0, th_loss0)
        rel = abs(gt_loss0 - th_loss0) / abs(th_loss0)
        print(f"  step-0 loss: gtnumba {gt_loss0:.7f}  torch {th_loss0:.7f}  rel diff {rel:.2e}")
        if not np.isclose(gt_loss0, th_loss0, rtol=1e-4, atol=0):
            raise SystemExit(f"step-0 losses differ beyond rtol 1e-4: {gt_loss0} vs {th_loss0}")
        # backward + SGD agree too: the parameters after one step
        worst = max(float(np.max(np.abs(gt_p1[k] - TP[k].detach().numpy()))) /
                    (float(np.max(np.abs(p0[k] - TP[k].detach().numpy()))) + 1e-12) for k in p0)
        out["param_check"] = worst
        print(f"  after step 0: max |gt - torch| / max |update| over all parameters = {worst:.2e}")
    else:
        out["loss0"] = (gt_loss0, None)
        print(f"  step-0 loss: gtnumba {gt_loss0:.7f} (torch not installed: no cross-check)")

    # timed steps, in blocks: gtnumba, PyTorch, PyTorch, gtnumba, ... (the machine may be shared; a
    # pause before each block lets the other library's thread pool stop spinning)
    warm, n, per_block = (3, 20, 5) if quick else (5, 60, 10)
    for _ in range(warm):
        gt_step(P, x, y)
    if torch is not None:
        for _ in range(warm):
            torch_step(TP, tx, ty)
    out["wait_idle"] = wait_idle(0 if quick else 10)
    plans_before = dict(gt.sched.STATS)
    blocks = {"gt": [], "torch": []}         # per block: (step times, other processes' CPU share)
    contenders = [("gt", lambda: gt_step(P, x, y))]
    if torch is not None:
        contenders.append(("torch", lambda: torch_step(TP, tx, ty)))
    def few_quiet():
        return any(sum(1 for _, sh in blocks[name] if sh < QUIET) < 2 for name, _ in contenders)

    with section("step: gtnumba vs PyTorch, ABBA blocks"):
        r = 0
        while r < n // per_block or (r < 3 * n // per_block // 2 and few_quiet() and time_left() > 0):
            r += 1
            wait_quiet(8.0)
            for name, fn in (contenders if r % 2 == 1 else contenders[::-1]):
                time.sleep(PAUSE_S)
                ts, a = [], MON.snap()
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                blocks[name].append((ts, MON.foreign(a, MON.snap())))
    out["step_load"] = LOAD_LOG[-1][1]
    out["blocks"] = blocks
    plans_after = dict(gt.sched.STATS)
    out["gt_plans"] = {k: plans_after[k] - plans_before[k] for k in plans_after}
    for name in [c[0] for c in contenders]:
        every = [t for ts, _ in blocks[name] for t in ts]
        quiet = [t for ts, share in blocks[name] if share < QUIET for t in ts]
        out[name], out[name + "_min"] = statistics.median(every), min(every)
        out[name + "_quiet"] = statistics.median(quiet) if quiet else None
        out[name + "_quiet_n"] = len(quiet)
    out["n_steps"] = len(blocks["gt"]) * per_block
    msg = (f"  gtnumba step: median {fmt_t(out['gt'])}, quiet blocks {fmt_t(out['gt_quiet'])} "
           f"({out['gt_quiet_n']} steps), min {fmt_t(out['gt_min'])}")
    if torch is not None:
        msg += (f"; torch step: median {fmt_t(out['torch'])}, quiet blocks {fmt_t(out['torch_quiet'])} "
                f"({out['torch_quiet_n']} steps), min {fmt_t(out['torch_min'])}")
    print(msg + f"; {out['n_steps']} steps each, other processes used {out['step_load']:.0%} of the CPUs; "
          f"plans during timing: {out['gt_plans']}", flush=True)

    # no work for gradients nobody asked for: the plan holds no input-sized node; for contrast the
    # same step with an input that requires grad
    out["census"] = step_plan_census()
    xg = gt.tensor(x_np, requires_grad=True)

    def gt_step_xgrad():
        gt_step(P, xg, y)
        xg.grad = None
    fns = [lambda: gt_step(P, x, y), gt_step_xgrad]
    if torch is not None:
        txg = tx.clone().requires_grad_(True)

        def torch_step_xgrad():
            torch_step(TP, txg, ty)
            txg.grad = None
        fns += [lambda: torch_step(TP, tx, ty), torch_step_xgrad]
    with section("step: with/without x.requires_grad"):
        res = time_blocks(fns, 0.3 if quick else 1.0, min_samples=4, sample_s=0.0)
    out["xgrad"] = [(r["med"], r["min"]) for r in res]
    out["xgrad_share"] = statistics.mean(r["share"] for r in res)
    res = out["xgrad"]
    print(f"  x without / with requires_grad: gtnumba {fmt_t(res[0][0])} / {fmt_t(res[1][0])}"
          + (f"; torch {fmt_t(res[2][0])} / {fmt_t(res[3][0])}" if torch is not None else "")
          + f"; input-sized nodes in the step plan: {out['census'].get('input_sized')}", flush=True)
    del xg
    gc.collect()

    # where the time goes
    with section("step: phases and kernels"):
        out["phases"] = gt_step_phases(P, x, y, 10 if quick else 15)
    with section("step: cProfile"):
        out["profile"] = profile_gt_step(P, x, y, 10 if quick else 15)
    out["what_if"] = what_if(p0, x_np, quick)
    for name, t, m, _ in out["what_if"]:
        print(f"  what-if {name}: {fmt_t(t)} (min {fmt_t(m)})")

    # memory flat
    gc.collect()
    n_mem = 100 if quick else 300
    series = [(0, rss_mib())]
    with section("step: memory (RSS) run"):
        for i in range(1, n_mem + 1):
            gt_step(P, x, y)
            if i % 50 == 0:
                series.append((i, rss_mib()))
    out["rss"] = series
    print("  RSS (MiB) every 50 steps: " + ", ".join(f"{i}:{r:.1f}" for i, r in series), flush=True)
    return out


# ---- 3. report -------------------------------------------------------------------------------
def code_loc(module, qualname):
    """'path:line' of a function in gtnumba (for the findings), or the dotted name if not found."""
    try:
        import inspect
        obj = sys.modules.get(module) or __import__(module, fromlist=["_"])
        for part in qualname.split("."):
            obj = getattr(obj, part)
        obj = inspect.unwrap(obj)
        path = os.path.relpath(inspect.getsourcefile(obj), ROOT)
        return f"{path}:{inspect.getsourcelines(obj)[1]} {qualname}"
    except Exception:
        return f"{module}.{qualname}"


def render(info, ops, overhead, step, quick, wall):
    out = []
    w = out.append
    w("# gtnumba CPU benchmarks")
    w("")
    w("Produced by `python benchmarks/bench_cpu.py" + (" --quick" if quick else "") + f"` (ran {wall:.0f} s). "
      "Every number below was measured by that run, on the machine and date below.")
    w("")
    w("## Machine and versions")
    w("")
    w("| | |")
    w("| --- | --- |")
    for k, v in info.items():
        w(f"| {k} | {v} |")
    w("")
    w("Thread settings are every library's defaults (the benchmark sets nothing).")
    w("")
    shares = [s for _, s, _, _ in LOAD_LOG if s == s]
    w("**Shared machine.** Other processes' CPU use is measured during every section (/proc/stat minus "
      "this process's CPU time): "
      f"{min(shares):.0%} to {max(shares):.0%} of the {os.cpu_count()} CPUs, "
      f"mean {statistics.mean(shares):.0%} (per section at the end). With 2 cores, any other process "
      "competes with the 2 BLAS/OpenMP threads that NumPy and PyTorch start, so medians are inflated "
      "and noisy. Contenders are therefore timed in alternating blocks (A B C, C B A, ...) so that load "
      f"hits them alike, each block after an idle pause of {PAUSE_S} s (a BLAS/OpenMP pool keeps spinning "
      "~0.1 s after its last call and would slow the next library down), and minima are given next to "
      "medians.")
    w("")
    w("## Main ops (float32, per call)")
    w("")
    w("gtnumba times include the framework: record the op on existing tensors, plan (structure key, "
      "cache hit), run, and `.numpy()`, which also copies the result (that copy alone: last column). "
      "NumPy and PyTorch times are the bare eager calls. Each time is the median over the contender's "
      f"quiet blocks (other processes < {QUIET:.0%} of the CPUs), or over all its blocks if none was quiet "
      "(2 to 4 rounds of blocks); 'other procs' is the mean load during the blocks used. The ratio "
      "columns are gtnumba / other (medians, and min / min).")
    w("")
    w("| op | gtnumba | NumPy | PyTorch | gt / NumPy | gt / PyTorch | gt / PyTorch (min) | .numpy() copy | other procs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in ops:
        w(f"| {r['name']} | {fmt_t(r['gt'])} | {fmt_t(r['np'])} | {fmt_t(r['torch'])} | "
          f"{ratio(r['gt'], r['np'])} | {ratio(r['gt'], r['torch'])} | {ratio(r['gt_min'], r['torch_min'])} | "
          f"{fmt_t(r['copy'])} | {r['load']:.0%} |")
    w("")
    w(f"**Per-op framework cost** (4x4 add, pure overhead): {fmt_t(overhead['total'])} per op end to end; "
      f"recording the node alone {fmt_t(overhead['record'])}; `.numpy()` of an already computed tensor "
      f"{fmt_t(overhead['numpy_of_done'])}; so planning (structure key + cache hit) and running a one-node "
      f"plan ~{fmt_t(overhead['total'] - overhead['record'] - overhead['numpy_of_done'])}.")
    w("")
    ptot, ptop = overhead["profile"]
    w(f"cProfile of `(a + b).numpy()` on 4x4 tensors ({fmt_t(ptot)} per op under the profiler), top 10 by "
      "own time:")
    w("")
    w("| function | calls / op | own us / op | share |")
    w("| --- | ---: | ---: | ---: |")
    for where, nc, tt, share in ptop:
        w(f"| `{where}` | {nc:.0f} | {tt * 1e6:.2f} | {share:.1%} |")
    w("")
    w("`transpose+copy` is `x.T.reshape(-1)` in gtnumba (the reshape of the transposed view makes the "
      "C-order copy), `np.ascontiguousarray(x.T)` and `x.t().contiguous()`. `layernorm (fused op)` is "
      "`apply(\"layer_norm\", x, w, b, eps=1e-5)[0]`; `(mean/var/sqrt)` composes Tensor ops; NumPy's "
      "column is always the composed formula and PyTorch's always `F.layer_norm`.")
    w("")
    w("## Pixel Transformer training step (forward + backward + SGD)")
    w("")
    w(f"Batch {B}, {S} tokens of 200x200 = {PIX} values, Linear({PIX} -> {E}) embedding, learnable "
      f"positional table ({S}x{E}) added, {L} pre-norm blocks (LayerNorm, {H}-head self-attention, residual, "
      f"LayerNorm, ff {FF} with GELU, residual), mean pool over the sequence, {C}-class classifier, "
      "cross-entropy. GT style: raw tensors with requires_grad, fused `layer_norm` and `cross_entropy` rows, "
      "SGD `p -= lr * p.grad; p.grad.zero_()` under `no_grad`, loss read with `.item()` every step. "
      "PyTorch: the same code with torch ops (`F.layer_norm`, `F.gelu`, `torch.softmax`, `F.cross_entropy`), "
      "the same initial weights (copied from NumPy) and data.")
    w("")
    lo = step["loss0"]
    if lo[1] is not None:
        w(f"Step-0 loss: gtnumba {lo[0]:.7f}, PyTorch {lo[1]:.7f} (relative difference "
          f"{abs(lo[0] - lo[1]) / abs(lo[1]):.1e}; required < 1e-4). Parameters after one step: "
          f"max |gtnumba - PyTorch| / max |update| over all tensors = {step['param_check']:.1e}.")
    else:
        w(f"Step-0 loss: gtnumba {lo[0]:.7f} (PyTorch not installed: no cross-check).")
    w("")
    th = step.get("torch")
    w(f"{step['n_steps']} steps each after warm-up, in blocks of consecutive steps (gtnumba, PyTorch, "
      "PyTorch, gtnumba, ...) with an idle pause before each block "
      f"(waited {step['wait_idle'][0]:.0f} s for a quieter machine first; other processes used "
      f"{step['step_load']:.0%} of the CPUs over the whole timed section). 'Quiet blocks' are the blocks "
      f"during which other processes used < {QUIET:.0%} of the CPUs.")
    w("")
    w("| | gtnumba | PyTorch | gtnumba / PyTorch |")
    w("| --- | ---: | ---: | ---: |")
    w(f"| step, median of quiet blocks (steps) | {fmt_t(step['gt_quiet'])} ({step['gt_quiet_n']}) | "
      f"{fmt_t(step.get('torch_quiet'))} ({step.get('torch_quiet_n', 0)}) | "
      f"{ratio(step['gt_quiet'], step.get('torch_quiet'))} |")
    w(f"| step, median of all blocks | {fmt_t(step['gt'])} | {fmt_t(th)} | {ratio(step['gt'], th)} |")
    w(f"| step, min | {fmt_t(step['gt_min'])} | {fmt_t(step.get('torch_min'))} | "
      f"{ratio(step['gt_min'], step.get('torch_min'))} |")
    xr = step["xgrad"]
    w(f"| step, input without requires_grad (second run, blocks) | {fmt_t(xr[0][0])} | "
      f"{fmt_t(xr[2][0]) if th is not None else '-'} | {ratio(xr[0][0], xr[2][0] if th is not None else None)} |")
    w(f"| step, input with requires_grad=True (contrast) | {fmt_t(xr[1][0])} | "
      f"{fmt_t(xr[3][0]) if th is not None else '-'} | {ratio(xr[1][0], xr[3][0] if th is not None else None)} |")
    w(f"| first step (planning + first run) | {fmt_t(step['gt_first_step'])} | | |")
    w("")
    w(f"Plan cache during the timed steps: {step['gt_plans']} (one plan per step, always reused).")
    w("")
    gq, tq = step["gt_quiet"], step.get("torch_quiet")
    g_best, t_best = (gq, tq) if gq is not None and tq is not None else (step["gt"], th)
    basis = "quiet-block medians" if gq is not None and tq is not None else "medians of all blocks"
    if th is None:
        w("**Goal (step no slower than PyTorch CPU): not checked, PyTorch is not installed.**")
    elif g_best <= t_best and step["gt_min"] <= step["torch_min"]:
        w(f"**Goal (step no slower than PyTorch CPU): met** ({basis}: {fmt_t(g_best)} vs {fmt_t(t_best)}; "
          f"min {fmt_t(step['gt_min'])} vs {fmt_t(step['torch_min'])}).")
    else:
        w(f"**Goal (step no slower than PyTorch CPU): NOT met.** On {basis} gtnumba takes {fmt_t(g_best)} "
          f"per step, PyTorch {fmt_t(t_best)}: {g_best / t_best:.2f}x, {fmt_t(g_best - t_best)} slower "
          f"(min vs min: {fmt_t(step['gt_min'])} vs {fmt_t(step['torch_min'])}, "
          f"{step['gt_min'] / step['torch_min']:.2f}x). Where the time goes: below.")
    w("")
    w("Per block (median step, other processes' CPU share): "
      + "; ".join(f"{n} " + ", ".join(f"{fmt_t(statistics.median(ts))} ({sh:.0%})" for ts, sh in bl)
                  for n, bl in step["blocks"].items() if bl) + ".")
    w("")
    c = step["census"]
    w("### No work for gradients nobody asked for")
    w("")
    if "error" in c:
        w(f"Plan census unavailable: {c['error']}.")
    else:
        w(f"The input batch has requires_grad=False. The step's plan has {c['n_nodes']} nodes over "
          f"{c['n_leaves']} leaves; computed (non-view) nodes of the input's size {B}x{S}x{PIX}: "
          f"**{c['input_sized'] or 'none'}**, so no input gradient is computed. Per step the input-less "
          f"step takes {fmt_t(xr[0][0])}, the same step with x.requires_grad=True {fmt_t(xr[1][0])}.")
        w("")
        w("Nodes per op in the step plan: "
          + ", ".join(f"{k} {v}" for k, v in sorted(c["counts"].items(), key=lambda kv: -kv[1])) + ".")
        w("")
        w(f"Nodes of the embedding weight's size ({PIX}x{E}) or larger, per step: "
          + ", ".join(f"{op} {shape}" for op, shape in c["big"]) + ". PyTorch does the weight gradient as "
          "one GEMM into a (40000, 128) buffer and the update in place.")
    w("")
    w("### Memory flat")
    w("")
    rss = step["rss"]
    w(f"Process RSS (MiB) during {rss[-1][0]} further gtnumba steps, every 50 steps:")
    w("")
    w("| step | " + " | ".join(str(i) for i, _ in rss) + " |")
    w("| --- | " + " | ".join("---:" for _ in rss) + " |")
    w("| RSS MiB | " + " | ".join(f"{r:.1f}" for _, r in rss) + " |")
    w("")
    w(f"Growth from step 50 to step {rss[-1][0]}: {rss[-1][1] - rss[1][1]:+.1f} MiB; from step 0: "
      f"{rss[-1][1] - rss[0][1]:+.1f} MiB (one embedding weight is {PIX * E * 4 / 2**20:.1f} MiB).")
    w("")
    w("### Where the gtnumba step's time goes")
    w("")
    total, phases, kern, sel = step["phases"]
    w(f"Phases, timed separately: mean of the {sel['steps']} least disturbed steps ({sel['quiet']} quiet "
      f"of those run; other processes used {sel['share']:.0%} of the CPUs during the ones kept), "
      f"{fmt_t(total)} per step:")
    w("")
    w("| phase | ms / step | share |")
    w("| --- | ---: | ---: |")
    for k, v in phases.items():
        w(f"| {k} | {v * 1e3:.3f} | {v / total:.1%} |")
    w("")
    in_k = sum(v[0] for v in kern.values())
    if not kern:
        w("(Per-kernel times unavailable: the executor no longer runs through "
          "`gtnumba.sched.materialize.run_plan`.)")
    w(f"Inside `.item()`, the executor's kernels take {in_k * 1e3:.2f} ms/step ({in_k / total:.0%} of the step); "
      f"everything else ({(total - in_k) * 1e3:.2f} ms, {(total - in_k) / total:.0%}) is Python: recording "
      "the graph, backward, structure key + plan lookup, the executor loop.")
    w("")
    by_name = {}
    for (name, _), (t, n) in kern.items():
        a = by_name.setdefault(name, [0.0, 0.0])
        a[0] += t
        a[1] += n
    w("| kernel (by function name) | ms / step | calls / step | share of step |")
    w("| --- | ---: | ---: | ---: |")
    for name, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:12]:
        w(f"| {name} | {t * 1e3:.3f} | {n:.0f} | {t / total:.1%} |")
    w("")
    w("The same, by kernel and output shape (top 12):")
    w("")
    w("| kernel | output shape | ms / step | calls / step | share of step |")
    w("| --- | --- | ---: | ---: | ---: |")
    for (name, shape), (t, n) in sorted(kern.items(), key=lambda kv: -kv[1][0])[:12]:
        w(f"| {name} | {shape} | {t * 1e3:.3f} | {n:.0f} | {t / total:.1%} |")
    w("")
    ptotal, cum, tot, sel = step["profile"]
    w(f"cProfile of the gtnumba step: {sel['steps']} least disturbed single-step profiles merged (other "
      f"processes used {sel['share']:.0%} of the CPUs during them), {fmt_t(ptotal)} per step under the "
      "profiler; top 8 by cumulative time:")
    w("")
    w("| function | calls / step | cumulative ms / step | share of step | own ms / step |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for r in cum[:8]:
        w(f"| `{r['where']}` | {r['calls']:.0f} | {r['cumtime'] * 1e3:.3f} | {r['share']:.1%} | "
          f"{r['tottime'] * 1e3:.3f} |")
    w("")
    w("Top 10 by own time (callees excluded; `cpu.py:...(kernel)` is the shared wrapper of every "
      "binary elementwise kernel, `reduce` of numpy.ufunc is the sums):")
    w("")
    w("| function | calls / step | own ms / step | share of step |")
    w("| --- | ---: | ---: | ---: |")
    for r in tot[:10]:
        w(f"| `{r['where']}` | {r['calls']:.0f} | {r['tottime'] * 1e3:.3f} | {r['share']:.1%} |")
    w("")
    w("The step's largest kernels as gtnumba runs them vs the folded / in-place form PyTorch uses "
      "(plain NumPy, same shapes, same process):")
    w("")
    w("| computation | median | min | other procs |")
    w("| --- | ---: | ---: | ---: |")
    for name, t, m, sh in step["what_if"]:
        w(f"| {name} | {fmt_t(t)} | {fmt_t(m)} | {sh:.0%} |")
    w("")
    wi = {i: m for i, (_, _, m, _) in enumerate(step["what_if"])}
    w("**Findings** (computed from the numbers above; what-if savings use minima; code locations as of "
      "this run):")
    w("")
    top3 = sorted(kern.items(), key=lambda kv: -kv[1][0])[:3]
    w("1. Largest kernel nodes of the step: " + "; ".join(
        f"{name} -> {shape}: {t * 1e3:.2f} ms ({t / total:.0%})" for (name, shape), (t, n) in top3) + ".")
    mms = c.get("matmuls", []) if "error" not in c else []
    batched = [m for m in mms if m[1] == (B, PIX, E)]
    folded = [m for m in mms if m[1] == (PIX, E)]
    loc = code_loc("gtnumba.ops.linalg", "_matmul_grad")
    if batched:
        w(f"2. Embedding weight gradient: the plan runs a batched matmul {batched[0][0]} -> {batched[0][1]} "
          f"(rule `{loc}`) and `sum_to` (`{code_loc('gtnumba._tensor', 'Tensor.sum_to')}`) then sums the "
          f"batch away; one folded (40000,8)@(8,128) GEMM would save ~{fmt_t(wi[3] - wi[4])} per step.")
    elif folded:
        w(f"2. Embedding weight gradient: folded into one GEMM {folded[0][0]} -> {folded[0][1]} (rule `{loc}`); "
          f"the batched form plus sum it replaces measures {fmt_t(wi[3])} vs {fmt_t(wi[4])} folded.")
    fwd_gap = wi[0] - wi[2]
    w(f"3. Embedding forward `x @ W` with 3-D x: gtnumba's registered cpu matmul kernel "
      f"(`{code_loc('gtnumba.kernels.cpu', 'matmul')}`) takes {fmt_t(wi[0])} (min), NumPy's batched "
      f"np.matmul {fmt_t(wi[1])}, one folded GEMM {fmt_t(wi[2])}"
      + (" (the kernel folds already)." if fwd_gap < 0.25 * wi[2] else f"; folding would save ~{fmt_t(fwd_gap)}."))
    big_nodes = ", ".join(f"{op} {shape}" for op, shape in c.get("big", [])) if "error" not in c else "?"
    w(f"4. SGD, GT style (`p -= lr * p.grad; p.grad.zero_()`): per step the plan computes these arrays of the "
      f"40000x128 weight's size: {big_nodes}. Besides the weight-gradient GEMM these are: the gradient "
      f"accumulated into the zeroed grad as a new array (`owner.grad + g` in "
      f"`{code_loc('gtnumba.functions', 'accumulate_leaf_grad')}`), `lr * grad` and `p - ...` into new arrays "
      f"(`{code_loc('gtnumba._tensor', 'Tensor.__isub__')}` -> `_assign`), and a new zeros array for "
      f"`zero_()` (`{code_loc('gtnumba._tensor', 'Tensor.zero_')}`). Measured on that weight alone: "
      f"{fmt_t(wi[5])} this way vs {fmt_t(wi[6])} in place as PyTorch does (grad += g, p -= lr*g, fill 0): "
      f"~{fmt_t(wi[5] - wi[6])} per step.")
    w(f"5. Python (framework) time: {(total - in_k) * 1e3:.1f} ms per step ("
      + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in phases.items() if "item" not in k)
      + f", and {(phases.get('.item(): plan + run', 0) - in_k) * 1e3:.1f} ms of `.item()` outside kernels: "
      "structure key, plan lookup, executor loop); PyTorch's whole step takes "
      + (fmt_t(step.get("torch_quiet") or step.get("torch")) if step.get("torch") is not None else "-") + ".")
    if step.get("torch") is not None:
        g_ref = step["gt_quiet"] if step.get("gt_quiet") is not None else step["gt"]
        t_ref = step["torch_quiet"] if step.get("torch_quiet") is not None else step["torch"]
        w("")
        w(f"Gap to PyTorch: {fmt_t(g_ref - t_ref)} per step ({g_ref / t_ref:.2f}x). Of the gtnumba step, "
          f"{in_k * 1e3:.1f} ms are kernels (PyTorch's whole step: {t_ref * 1e3:.1f} ms) and "
          f"{(total - in_k) * 1e3:.1f} ms Python; the in-place SGD alone would recover "
          f"~{fmt_t(wi[5] - wi[6])}.")
    w("")
    w("## Load by section")
    w("")
    w("| section | seconds | other processes' CPU share | loadavg at end |")
    w("| --- | ---: | ---: | --- |")
    for name, share, la, dt in LOAD_LOG:
        w(f"| {name} | {dt:.1f} | {share:.0%} | {la} |")
    w("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter timings (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not write the results file")
    ap.add_argument("--out", default=RESULTS, help="results file (default: benchmarks/RESULTS.md)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    DEADLINE[0] = t_start + (60 if args.quick else 150)   # no optional extra rounds after this
    WAIT_BUDGET[0] = 5.0 if args.quick else 60.0
    wait_budget = WAIT_BUDGET[0]
    if torch is None:
        print("NOTE: PyTorch is not installed (pip install torch, or the `bench` extra of setup.cfg); "
              "the PyTorch anchor is skipped, the NumPy and gtnumba parts still run.", flush=True)
    info = machine_info()
    print("machine / versions:")
    for k, v in info.items():
        print(f"  {k}: {v}")
    if not args.quick:
        waited, share = wait_idle(20)
        print(f"  waited {waited:.0f} s for a quiet machine; other processes now use {share:.0%} of the CPUs")
    print("1. main ops (median per call)")
    ops, overhead = bench_ops(args.quick)
    print("2. Pixel Transformer training step")
    step = bench_step(args.quick)
    info["waited for quiet moments"] = f"{wait_budget - WAIT_BUDGET[0]:.0f} s (budget {wait_budget:.0f} s)"
    report = render(info, ops, overhead, step, args.quick, time.perf_counter() - t_start)
    print()
    print(report)
    if not args.no_write:
        with open(args.out, "w") as f:
            f.write(report + "\n")
        print(f"wrote {args.out}")
    print(f"total time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
