"""Per-step cost of running a training step on Dask workers (CPU), next to the in-process run.

For 1, 2 and 4 worker processes: step wall time, time spent planning (ordering the pending graph,
its structure key, plan lookup), time the workers spend computing (from Dask's task stream) and
the rest (dispatch: submitting tasks, moving data, round trips), and Dask tasks per step.

    python benchmarks/bench_dask.py [--quick] [--out benchmarks/RESULTS.md]
"""
import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np


def model_and_data(img, seq, embed, heads, layers, ff, batch, seed=0):
    import gtnumba as gt
    from gtnumba import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
            self.attn = nn.MultiHeadAttention(embed, heads)
            self.ff = nn.Sequential(nn.Linear(embed, ff), nn.GELU(), nn.Linear(ff, embed))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.ff(self.ln2(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(img * img, embed)
            self.pos = nn.Parameter(gt.randn(seq, embed) * 0.02)
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.head = nn.Linear(embed, 10)

        def forward(self, x):
            h = self.embed(x) + self.pos[:x.shape[1]]
            for b in self.blocks:
                h = b(h)
            return self.head(h.mean(axis=1))

    gt.manual_seed(seed)
    net = Net()
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((batch, seq, img * img)).astype(np.float32), rng.integers(0, 10, batch))
               for _ in range(4)]
    return net, batches


def time_steps(net, batches, steps):
    import gtnumba as gt
    from gtnumba import nn
    from gtnumba.sched import STATS
    opt = gt.optim.SGD(net.parameters(), lr=0.01)
    walls, plans, losses = [], [], []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        p0, t0 = STATS["plan_seconds"], time.perf_counter()
        loss = nn.cross_entropy(net(gt.from_numpy(x)), gt.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        walls.append(time.perf_counter() - t0)
        plans.append(STATS["plan_seconds"] - p0)
    return walls, plans, losses


def run(workers, cfg, steps, warm):
    import gtnumba as gt
    from distributed import get_task_stream
    if workers:
        gt.init(workers=workers, dashboard=":0")
    try:
        net, batches = model_and_data(**cfg)
        time_steps(net, batches, warm)
        if workers:
            with get_task_stream() as ts:
                walls, plans, losses = time_steps(net, batches, steps)
            busy = {}
            for t in ts.data:
                start, stop = t["startstops"][0]["start"], t["startstops"][-1]["stop"]
                busy[t["worker"]] = busy.get(t["worker"], 0.0) + (stop - start)
            compute = max(busy.values()) / steps if busy else 0.0
            tasks = len(ts.data) / steps
        else:
            walls, plans, losses = time_steps(net, batches, steps)
            compute, tasks = None, 0
    finally:
        if workers:
            gt.shutdown()
    return {"workers": workers, "wall": statistics.median(walls), "plan": statistics.median(plans),
            "compute": compute, "tasks": tasks, "loss0": losses[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = ap.parse_args()
    cfg = dict(img=64, seq=4, embed=128, heads=4, layers=2, ff=256, batch=8)
    steps, warm = (5, 2) if args.quick else (20, 3)
    rows = [run(w, cfg, steps, warm) for w in (0, 1, 2, 4)]
    base = rows[0]["loss0"]
    for r in rows:
        assert abs(r["loss0"] - base) < 1e-4 * max(1, abs(base)), f"loss differs on {r['workers']} workers"
    lines = ["", f"## Dask per-step cost, CPU workers ({datetime.date.today()})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"model: Pixel Transformer img {cfg['img']} seq {cfg['seq']} E {cfg['embed']} h {cfg['heads']} "
             f"L {cfg['layers']} ff {cfg['ff']}, batch {cfg['batch']}, SGD; median of {steps} steps.", "",
             "| workers | step ms | planning ms | busiest worker computing ms | rest (dispatch, transfers) ms | tasks/step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        name = "in-process" if r["workers"] == 0 else str(r["workers"])
        comp = "-" if r["compute"] is None else f"{1e3 * r['compute']:.1f}"
        rest = "-" if r["compute"] is None else f"{1e3 * (r['wall'] - r['plan'] - r['compute']):.1f}"
        lines.append(f"| {name} | {1e3 * r['wall']:.1f} | {1e3 * r['plan']:.2f} | {comp} | {rest} | {r['tasks']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
