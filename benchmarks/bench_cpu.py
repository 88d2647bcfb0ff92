"""CPU benchmarks: gtnumba next to NumPy and PyTorch CPU, same process, same shapes, float32.

    python benchmarks/bench_cpu.py [--quick] [--no-write] [--out PATH]

Sections: main ops (gtnumba timed end to end: record, plan, run, .numpy()); the framework's own
cost per op (recording a node; a tiny op end to end); the tiny GT-style transformer step
(tests/gt_style_model.py sizes) and the Pixel Transformer step at the first user's size
(forward + backward + SGD, GT style, loss read every step), each vs the same PyTorch code;
steady-state allocations of the large step (tracemalloc) and RSS over many steps.

The machine may be shared, so contenders are timed alternately in one process (A B, B A, ...),
each block after a short idle pause; medians and minima are both reported, with other processes'
CPU share. The report replaces the block between the bench_cpu markers in benchmarks/RESULTS.md.
"""
import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numba  # noqa: E402

import gtnumba as gt  # noqa: E402
from gtnumba import sched  # noqa: E402
try:
    from gtnumba.sched import replay  # noqa: E402
except ImportError:          # a gtnumba before step replay (for before/after runs)
    replay = None
from gtnumba._tensor import apply  # noqa: E402
import gt_style_model as tiny  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:          # the anchor every row is set against
    sys.exit("benchmarks/bench_cpu.py runs side by side with PyTorch: pip install -e '.[bench]'")

RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
BEGIN, END = "<!-- bench_cpu:begin -->", "<!-- bench_cpu:end -->"
F32 = np.float32


# ---- timing on a shared machine ------------------------------------------------------------------
def _cpu_snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = os.times()
    return time.perf_counter(), (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def _foreign(a, b):
    """Share of the machine's CPUs used by other processes between two snapshots."""
    wall = max(b[0] - a[0], 1e-9)
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / wall / (os.cpu_count() or 1))


def alternate(fns, block_s, rounds):
    """Per-call times of each fn, timed in alternating blocks: {"med", "min", "load"} per fn."""
    samples, loads = [[] for _ in fns], [[] for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            time.sleep(0.2)                      # let the other library's thread pool go idle
            fns[i]()
            a, t_end = _cpu_snap(), time.perf_counter() + block_s
            while time.perf_counter() < t_end or len(samples[i]) < 3 * (r + 1):
                t0 = time.perf_counter()
                fns[i]()
                samples[i].append(time.perf_counter() - t0)
            loads[i].append(_foreign(a, _cpu_snap()))
    return [{"med": statistics.median(s), "min": min(s), "load": statistics.mean(lo)}
            for s, lo in zip(samples, loads)]


def fmt(s):
    return "-" if s is None else f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


# ---- 1. main ops --------------------------------------------------------------------------------
def op_cases(rng):
    def r(*shape):
        return rng.standard_normal(shape).astype(F32)
    big, big2, vec, rows, lw, lb = r(1024, 1024), r(1024, 1024), r(1024), r(4096, 512), r(512), r(512)

    labels = rng.integers(0, 512, 4096)

    def np_ce(x, t):
        m = x.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(-1))
        return (lse - x[np.arange(len(t)), t]).mean()

    def np_ln(x, w, b):
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5) * w + b
    return [
        ("add 1024x1024", (big, big2), lambda a, b: a + b, np.add, torch.add),
        ("mul 1024x1024", (big, big2), lambda a, b: a * b, np.multiply, torch.mul),
        ("exp 1024x1024", (big,), lambda a: a.exp(), np.exp, torch.exp),
        ("broadcast add 1024x1024 + 1024", (big, vec), lambda a, b: a + b, np.add, torch.add),
        ("sum axis=0 of 1024x1024", (big,), lambda a: a.sum(axis=0), lambda a: a.sum(0), lambda a: a.sum(0)),
        ("sum axis=-1 of 1024x1024", (big,), lambda a: a.sum(axis=-1), lambda a: a.sum(-1),
         lambda a: a.sum(-1)),
        ("softmax 4096x512", (rows,), lambda a: gt.softmax(a, axis=-1),
         lambda a: np.exp(a - a.max(-1, keepdims=True)) / np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True),
         lambda a: torch.softmax(a, -1)),
        ("cross_entropy 4096x512", (rows, labels), lambda a, t: gt.nn.functional.cross_entropy(a, t), np_ce,
         lambda a, t: F.cross_entropy(a, t)),
        ("layer_norm 4096x512 (fused row)", (rows, lw, lb),
         lambda x, w, b: apply("layer_norm", x, w, b, eps=1e-5)[0], np_ln,
         lambda x, w, b: F.layer_norm(x, (512,), w, b, 1e-5)),
        ("layer_norm 4096x512 (mean/var/sqrt)", (rows, lw, lb), gt_style_ln, np_ln,
         lambda x, w, b: F.layer_norm(x, (512,), w, b, 1e-5)),
        ("matmul 512x512", (r(512, 512), r(512, 512)), lambda a, b: a @ b, np.matmul, torch.matmul),
        ("batched matmul (8,128,64)@(8,64,128)", (r(8, 128, 64), r(8, 64, 128)), lambda a, b: a @ b,
         np.matmul, torch.matmul),
        ("transpose+copy 1024x1024", (big,), lambda a: a.T.reshape(-1), lambda a: np.ascontiguousarray(a.T).reshape(-1),
         lambda a: a.t().contiguous().reshape(-1)),
        ("tiny add 4x4 (framework cost)", (r(4, 4), r(4, 4)), lambda a, b: a + b, np.add, torch.add),
    ]


def gt_style_ln(x, w, b):
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / ((xc * xc).mean(axis=-1, keepdims=True) + 1e-5).sqrt() * w + b


def bench_ops(block, rounds):
    out = []
    for name, arrays, gfn, nfn, tfn in op_cases(np.random.default_rng(0)):
        g_in = [gt.tensor(a) for a in arrays]
        np.testing.assert_allclose(gfn(*g_in).numpy(), nfn(*arrays), rtol=2e-3, atol=2e-3, err_msg=name)
        t_in = [torch.from_numpy(a.copy()) for a in arrays]
        fns = [lambda: gfn(*g_in).numpy(), lambda: nfn(*arrays), lambda: tfn(*t_in)]
        res = alternate(fns, block, rounds)
        out.append((name, res))
        print(f"  {name:34s} " + "  ".join(fmt(r["med"]) for r in res), flush=True)
    return out


def bench_recording(block, rounds):
    """Recording cost per op: a chain of 100 tiny adds recorded, then computed (not timed).
    'replayed': the chain repeats the cached step, so each op is matched against its trace;
    'fresh': recorded as a new step (replay turned off)."""
    a, b = gt.tensor(np.ones((4, 4), F32)), gt.tensor(np.ones((4, 4), F32))
    n = 100

    def chain(length):
        t = a
        t0 = time.perf_counter()
        for _ in range(length):
            t = t + b
        dt = time.perf_counter() - t0
        t.numpy()
        return dt / length

    def fresh():
        if replay is None:
            return chain(n)
        replay.set_enabled(False)
        try:
            return chain(n)
        finally:
            replay.set_enabled(True)
    res = {}
    for label, fn in (("replayed", lambda: chain(n)), ("fresh", fresh)):
        for _ in range(5):
            fn()
        times = [fn() for _ in range(max(20, rounds * 10))]
        res[label] = {"med": statistics.median(times), "min": min(times)}
    return res


# ---- 2. training steps --------------------------------------------------------------------------
def tiny_setup():
    rng = np.random.default_rng(1)
    p = {k: v.astype(F32) for k, v in tiny.init_params(0).items()}
    x = rng.standard_normal((tiny.B, tiny.S, tiny.E)).astype(F32)
    y = np.eye(tiny.C, dtype=F32)[rng.integers(0, tiny.C, tiny.B)]
    return p, x, y


def gt_tiny_step(P, x, y, lr=0.01, read_first=False):
    loss = tiny.gt_forward(P, x, y)
    value = loss.item() if read_first else None     # some GT users read the loss before backward()
    loss.backward()
    with gt.no_grad():
        for t in P.values():
            t -= lr * t.grad
            t.grad.zero_()
    return loss.item() if value is None else value


def torch_tiny_forward(P, x, y):
    B, S, E, H = tiny.B, tiny.S, tiny.E, tiny.H
    d = E // H

    def ln(t, g, b):
        mean = t.mean(-1, keepdim=True)
        var = ((t - mean) ** 2).mean(-1, keepdim=True)
        return (t - mean) / (var + tiny.EPS).sqrt() * g + b

    def lin(t, n):
        return t @ P[n + "_w"] + P[n + "_b"]

    def heads(t):
        return t.reshape(B, S, H, d).permute(0, 2, 1, 3)
    a = ln(x, P["ln1_g"], P["ln1_b"])
    q, k, v = heads(lin(a, "q")), heads(lin(a, "k")), heads(lin(a, "v"))
    attn = torch.softmax((q @ k.transpose(-2, -1)) / float(np.sqrt(d)), -1)
    o = (attn @ v).transpose(1, 2).reshape(B, S, E)
    h = x + lin(o, "o")
    h = h + lin(lin(ln(h, P["ln2_g"], P["ln2_b"]), "f1").relu(), "f2")
    return ((lin(h.mean(1), "cls") - y) ** 2).mean()


def torch_tiny_step(P, x, y, lr=0.01, read_first=False):
    loss = torch_tiny_forward(P, x, y)
    value = loss.item() if read_first else None
    loss.backward()
    with torch.no_grad():
        for t in P.values():
            t -= lr * t.grad
            t.grad.zero_()
    return loss.item() if value is None else value


B, S, PIX, E, H, L, FF, C = 2, 4, 200 * 200, 128, 4, 2, 256, 10
D, EPS, LR = E // H, 1e-5, 1e-3


def big_params(seed=0):
    rng = np.random.default_rng(seed)

    def lin(i, o):
        return (rng.standard_normal((i, o)) / np.sqrt(i)).astype(F32), (0.02 * rng.standard_normal(o)).astype(F32)
    p = {}
    p["emb_w"], p["emb_b"] = lin(PIX, E)
    p["pos"] = (0.02 * rng.standard_normal((S, E))).astype(F32)
    for li in range(L):
        for n in ("ln1", "ln2"):
            p[f"{li}.{n}_w"] = (1 + 0.05 * rng.standard_normal(E)).astype(F32)
            p[f"{li}.{n}_b"] = (0.05 * rng.standard_normal(E)).astype(F32)
        for n, (i, o) in (("q", (E, E)), ("k", (E, E)), ("v", (E, E)), ("o", (E, E)), ("f1", (E, FF)),
                          ("f2", (FF, E))):
            p[f"{li}.{n}_w"], p[f"{li}.{n}_b"] = lin(i, o)
    p["cls_w"], p["cls_b"] = lin(E, C)
    rng = np.random.default_rng(1)
    return p, rng.random((B, S, PIX), dtype=F32), rng.integers(0, C, B).astype(np.int64)


def big_loss(P, x, y, lib):
    """The Pixel Transformer step's loss, written once for both libraries (`lib` is gt or torch)."""
    is_gt = lib is gt

    def ln(t, n):
        if is_gt:
            return apply("layer_norm", t, P[n + "_w"], P[n + "_b"], eps=EPS)[0]
        return F.layer_norm(t, (E,), P[n + "_w"], P[n + "_b"], EPS)

    def lin(t, n):
        return t @ P[n + "_w"] + P[n + "_b"]

    def heads(t):
        return t.reshape(B, S, H, D).permute(0, 2, 1, 3)
    h = x @ P["emb_w"] + P["emb_b"] + P["pos"]
    for li in range(L):
        a = ln(h, f"{li}.ln1")
        q, k, v = heads(lin(a, f"{li}.q")), heads(lin(a, f"{li}.k")), heads(lin(a, f"{li}.v"))
        att = lib.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D)), -1)
        o = (att @ v).permute(0, 2, 1, 3).reshape(B, S, E)
        h = h + lin(o, f"{li}.o")
        z = lin(ln(h, f"{li}.ln2"), f"{li}.f1")
        f = lin(z.gelu() if is_gt else F.gelu(z), f"{li}.f2")
        h = h + f
    logits = lin(h.mean(1), "cls")
    if is_gt:
        return apply("cross_entropy", logits, y)[0].mean()
    return F.cross_entropy(logits, y)


def big_step(P, x, y, lib):
    loss = big_loss(P, x, y, lib)
    loss.backward()
    with (gt.no_grad() if lib is gt else torch.no_grad()):
        for p in P.values():
            p -= LR * p.grad
            p.grad.zero_()
    return loss.item()


def bench_steps(rounds, quick):
    out = {}
    p, x, y = tiny_setup()
    G = {k: gt.tensor(v, requires_grad=True) for k, v in p.items()}
    gx, gy = gt.tensor(x), gt.tensor(y)
    T = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    tx, ty = torch.tensor(x), torch.tensor(y)
    l_gt, l_th = gt_tiny_step(G, gx, gy), torch_tiny_step(T, tx, ty)
    assert abs(l_gt - l_th) < 1e-4 * abs(l_th), (l_gt, l_th)
    # short blocks, many rounds: a loaded machine's slow spells then hit both contenders alike
    out["tiny"] = alternate([lambda: gt_tiny_step(G, gx, gy), lambda: torch_tiny_step(T, tx, ty)],
                            0.15 if quick else 0.25, 3 * rounds)
    print(f"  tiny step: gtnumba {fmt(out['tiny'][0]['med'])}, torch {fmt(out['tiny'][1]['med'])}", flush=True)
    for _ in range(5):
        gt_tiny_step(G, gx, gy, read_first=True)
    out["tiny_read_first"] = alternate([lambda: gt_tiny_step(G, gx, gy, read_first=True),
                                        lambda: torch_tiny_step(T, tx, ty, read_first=True)],
                                       0.15 if quick else 0.25, 3 * rounds)
    print(f"  tiny step, loss read before backward: gtnumba {fmt(out['tiny_read_first'][0]['med'])}, "
          f"torch {fmt(out['tiny_read_first'][1]['med'])}", flush=True)
    p, x, y = big_params()
    G = {k: gt.tensor(v, requires_grad=True) for k, v in p.items()}
    gx, gy = gt.tensor(x), gt.tensor(y)
    T = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    tx, ty = torch.tensor(x), torch.tensor(y)
    l_gt, l_th = big_step(G, gx, gy, gt), big_step(T, tx, ty, torch)
    assert abs(l_gt - l_th) < 1e-4 * abs(l_th), (l_gt, l_th)
    for _ in range(3):
        big_step(G, gx, gy, gt)
    out["big"] = alternate([lambda: big_step(G, gx, gy, gt), lambda: big_step(T, tx, ty, torch)],
                           0.3 if quick else 0.5, 3 * rounds)
    print(f"  big step: gtnumba {fmt(out['big'][0]['med'])}, torch {fmt(out['big'][1]['med'])}", flush=True)
    out["phases"] = big_phases(G, gx, gy, 10 if quick else 30)
    out["alloc"] = steady_allocations(G, gx, gy)
    out["rss"] = rss_series(G, gx, gy, 60 if quick else 200)
    return out


def big_phases(P, x, y, steps):
    """Where a gtnumba large step goes: min over `steps` of each phase (record forward, backward,
    record the update, and .item(): plan lookup + run)."""
    phases = {"forward": [], "backward": [], "update": [], ".item()": []}
    for _ in range(steps):
        t = [time.perf_counter()]
        loss = big_loss(P, x, y, gt)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        with gt.no_grad():
            for p in P.values():
                p -= LR * p.grad
                p.grad.zero_()
        t.append(time.perf_counter())
        loss.item()
        t.append(time.perf_counter())
        for k, a, b in zip(phases, t, t[1:]):
            phases[k].append(b - a)
    return {k: min(v) for k, v in phases.items()}


def steady_allocations(G, gx, gy):
    """Peak traced memory of one steady-state big step and the largest single allocation size seen."""
    big_step(G, gx, gy, gt)
    tracemalloc.start()
    big_step(G, gx, gy, gt)
    snap = tracemalloc.take_snapshot()
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    largest = max((s.size for s in snap.statistics("traceback")), default=0)
    return {"peak": peak, "current": cur, "largest_live": largest, "param_bytes": PIX * E * 4}


def rss_series(G, gx, gy, steps):
    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))
    series = []
    for i in range(steps + 1):
        if i % (steps // 4) == 0:
            series.append((i, rss()))
        big_step(G, gx, gy, gt)
    return series


# ---- report -------------------------------------------------------------------------------------
def machine():
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
    return {"date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
            "cpu": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)"}


def report(info, ops, rec, steps, wall):
    tbl = lambda rows: "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)  # noqa: E731
    lines = [BEGIN, "## CPU: gtnumba vs PyTorch (benchmarks/bench_cpu.py)", "",
             f"{info['date']}; {info['cpu']}; Python {info['python']}, NumPy {info['numpy']}, "
             f"Numba {info['numba']}, PyTorch {info['torch']}; ran {wall:.0f} s. 'load' is the share of the 2 "
             "cores that other processes used during each row. Contenders are timed alternately in one "
             "process; medians (minima in brackets).", "",
             "| op | gtnumba | NumPy | PyTorch | gt / torch | load |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines.append(tbl([(n, fmt(r[0]["med"]), fmt(r[1]["med"]), fmt(r[2]["med"]) if len(r) > 2 else "-",
                       ratio(r[0]["med"], r[2]["med"]) if len(r) > 2 else "-",
                       f"{statistics.mean(x['load'] for x in r):.0%}") for n, r in ops]))
    a = steps["alloc"]

    def step_row(name, r):
        verdict = "/".join("met" if r[0][k] <= r[1][k] else "**not met**" for k in ("med", "min"))
        return (name, f"{fmt(r[0]['med'])} ({fmt(r[0]['min'])})", f"{fmt(r[1]['med'])} ({fmt(r[1]['min'])})",
                f"{ratio(r[0]['med'], r[1]['med'])} ({ratio(r[0]['min'], r[1]['min'])})",
                f"{r[0]['load']:.0%} / {r[1]['load']:.0%}", "<= 1.0x: " + verdict)
    lines += ["", "| step (forward + backward + SGD, GT style, loss read) | gtnumba | PyTorch | ratio | load | "
              "goal (median/min) |", "| --- | ---: | ---: | ---: | ---: | --- |",
              tbl([step_row("tiny (b2, 3 tokens of 8, E 8, 2 heads)", steps["tiny"]),
                   step_row("tiny, loss read before backward()", steps["tiny_read_first"]),
                   step_row("first user (b2, 4 tokens of 40000, E 128, L 2)", steps["big"])]),
              "", f"Recording cost per op (4x4 add in a 100-op chain): replayed step {fmt(rec['replayed']['med'])} "
              f"(min {fmt(rec['replayed']['min'])}), new step {fmt(rec['fresh']['med'])}; goal <= 5 us: "
              + ("met" if rec["replayed"]["med"] <= 5e-6 else "**not met**") + ".",
              "", "Large gtnumba step by phase (min of 30): " + ", ".join(
                  f"{k} {fmt(v)}" for k, v in steps["phases"].items()) + ".",
              "", f"Steady-state large step under tracemalloc: peak {a['peak'] / 2**20:.1f} MiB traced, largest "
              f"live allocation {a['largest_live'] / 2**20:.2f} MiB (one 40000x128 weight: "
              f"{a['param_bytes'] / 2**20:.1f} MiB). RSS (MiB) by step: "
              + ", ".join(f"{i}: {r:.0f}" for i, r in steps["rss"]) + ".",
              f"Plan cache: {dict((k, round(v, 3)) for k, v in sched.STATS.items())}.", END]
    return "\n".join(lines) + "\n"


def write(text, path):
    old = open(path).read() if os.path.exists(path) else "# gtnumba benchmarks\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
        head, _, rest = old.partition("\n")
        new = head + "\n\n" + text + rest
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--only-steps", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rounds = 2 if args.quick else 4
    info = machine()
    ops = [] if args.only_steps else bench_ops(0.05 if args.quick else 0.2, rounds)
    rec = bench_recording(0.1, rounds)
    print(f"  recording per op: {rec}", flush=True)
    steps = bench_steps(rounds, args.quick)
    text = report(info, ops, rec, steps, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write(text, args.out)


if __name__ == "__main__":
    main()
