"""What a Dask training step costs, and whether it pays for itself (issue 9).

Part 1, for W = 2, 4, 8 CPU worker processes: tasks per step, bytes each worker pulls from its
peers per step (the runner's own counters), client->scheduler messages per step, and the step
split into record / plan / submit / wait.  Part 2, side by side in the same run:
  (a) the main job's default Pixel Transformer (img 200, seq 4, E 128, L 2, ff 256, Adam, cosine
      schedule, batch 64, digits data rendered batch by batch as at the default 16,000 rows): the
      samples/s of its second epoch, run by the main job's own loop (models.train.train_epoch), 2
      workers x 1 thread vs in-process with 2 threads; also with the pixels kept after epoch 1
      (a smaller split, under Pixels' budget);
  (b) the small GT-style model (tests/gt_style_model.py) at batch 4: Dask step minus in-process
      step, in units of a bare one-task Dask round trip measured in the same run;
  (c) the first user's size (batch 4, 4 tokens of 200x200, plain SGD, loss and logits read every
      step) on 2 workers (what GT_AUTO_SHARD=1 starts) vs in-process.
Part 2 runs in rounds (in-process with no cluster alive, then a fresh cluster) and reports the
median of the rounds' ratios: this machine's speed drifts by tens of percent within minutes.
(c') measures (c) again within each minute: short blocks alternate in-process and on the cluster;
(c'') the same cluster blocks with no step submitted ahead (GT_SPECULATE=0); (c1) the (c') blocks on a
1-worker cluster (the Dask path's own cost, without the split's).

    python benchmarks/bench_dask.py [--quick] [--out benchmarks/RESULTS.md]
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 4          # unmeasured steps of (c) on a new model, in-process and on the cluster alike
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass


def _lone_worker_threads():
    from gtnumba.cluster import _worker_env
    return _worker_env(1)["NUMBA_NUM_THREADS"]


def start(workers):
    import gtnumba as gt
    client = gt.init(workers=workers, dashboard=":0")
    client.run(_one_thread)
    return client


def pixel_model(img, seq, batch, optimizer, seed=0):
    import gtnumba as gt
    from models.pixel_transformer import PixelTransformer
    gt.manual_seed(seed)
    model = PixelTransformer(img_size=img, seq_len=seq)
    opt = gt.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else \
        gt.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((batch, seq, img * img)).astype(np.float32), rng.integers(0, 10, batch))
               for _ in range(2)]
    return model, opt, batches


class Split:
    """Seconds of one step spent recording, planning, submitting and waiting for reads."""

    def __init__(self):
        self.rows = []

    def measure(self, step):
        from gtnumba.sched import STATS
        from gtnumba.sched.mesh import current_mesh
        mesh = current_mesh()
        rs = mesh.runner.stats if mesh is not None and hasattr(mesh.runner, "stats") else None
        p0, s0, w0 = STATS["plan_seconds"], rs and rs["submit_seconds"], rs and rs["wait_seconds"]
        m0 = STATS.get("mesh_plan_seconds", 0.0)
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
        plan = STATS["plan_seconds"] - p0
        submit = rs["submit_seconds"] - s0 if rs else 0.0
        wait = rs["wait_seconds"] - w0 if rs else 0.0
        mesh_plan = STATS.get("mesh_plan_seconds", 0.0) - m0
        self.rows.append((wall, wall - plan - submit - wait, plan, submit, wait, mesh_plan))

    def median(self, skip=2):
        cols = list(zip(*self.rows[skip:]))
        return [statistics.median(c) for c in cols]


def train_step(model, opt, batch, read_logits):
    import gtnumba as gt
    from gtnumba import nn
    x, y = batch
    xb, yb = gt.from_numpy(x), gt.tensor(y)
    logits = model(xb)
    loss = nn.cross_entropy(logits, yb)
    correct = (logits.argmax(axis=-1) == yb).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
    correct.item()
    if read_logits:
        logits.numpy()


def first_user_steps(steps):
    """(c)'s step on a new model, in steady state.  Its first steps load the kernels (on a fresh cluster, in
    each worker), send the plan and make the first prediction: in-process 461, 29, 36 ms, then ~13 ms; on 2
    workers 1420, 94, 30, 58 ms, then ~20 ms (01:1x UTC 2026-12-03). They would weigh in a median of 12."""
    model = pixel_model(200, 4, 4, "sgd")
    timed_steps(*model, WARMUP, read_logits=True)
    return timed_steps(*model, steps, read_logits=True)[0]


def timed_steps(model, opt, batches, steps, read_logits=False):
    split = Split()
    for i in range(steps):
        split.measure(lambda: train_step(model, opt, batches[i % len(batches)], read_logits))
    return split.median()


def stream_writes(client):
    """Writes so far on the scheduler's streams (client -> scheduler, scheduler -> workers and clients,
    workers -> scheduler): each a send and a wake-up of its reader, carrying one message or several."""
    def on_scheduler(dask_scheduler):
        streams = [*dask_scheduler.stream_comms.values(), *dask_scheduler.client_comms.values()]
        return sum(b.batch_count for b in streams)
    workers = client.run(lambda dask_worker: dask_worker.batched_stream.batch_count)
    return client.scheduler_comm.batch_count + client.run_on_scheduler(on_scheduler) + sum(workers.values())


def part1(W, steps):
    """Counts and the step split on W workers (small pixel model, Adam, batch 16)."""
    import gtnumba as gt
    from gtnumba.sched.distribute import step_bytes_per_worker
    client = start(W)
    try:
        model, opt, batches = pixel_model(32, 4, 16, "adam")
        runner = gt.sched.mesh.current_mesh().runner
        timed_steps(model, opt, batches, 3)
        drain = lambda: [p.numpy() for p in model.parameters()]    # waits for the pipelined update
        drain()
        c0, m0, t0 = runner.byte_counters(), client.scheduler_comm.message_count, runner.stats["tasks"]
        w0 = stream_writes(client)
        med = timed_steps(model, opt, batches, steps)
        drain()
        w1 = stream_writes(client)
        c1, m1, t1 = runner.byte_counters(), client.scheduler_comm.message_count, runner.stats["tasks"]
        moved = max((c1[a]["bytes_in"] - c0[a]["bytes_in"]) / steps for a in c1)
        backup = max((c1[a]["backup_bytes"] - c0[a]["backup_bytes"]) / steps for a in c1)
        grad = sum(p.numpy().nbytes for p in model.parameters())
        formula = max(step_bytes_per_worker(runner.last_plan))
        return dict(formula=formula, W=W, tasks=(t1 - t0) / steps, moved=moved, backup=backup, grad=grad,
                    bound=2 * (W - 1) / W * grad, msgs=(m1 - m0) / steps, writes=(w1 - w0) / steps,
                    split=med)
    finally:
        gt.shutdown()


def round_trip(client, n=30):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.submit(int, 1, pure=False).result()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def gt_style_step(P, data):
    import gtnumba as gt
    from gt_style_model import gt_forward
    x, y = data
    loss = gt_forward(P, gt.tensor(x, dtype=gt.float32), gt.tensor(y, dtype=gt.float32))
    loss.backward()
    with gt.no_grad():
        for t in P.values():
            t -= 0.1 * t.grad
            t.grad.zero_()
    loss.item()


def gt_style(steps):
    import gtnumba as gt
    import gt_style_model as m
    m.B = 4
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((4, m.S, m.E)), np.eye(m.C)[rng.integers(0, m.C, 4)]) for _ in range(2)]
    P = {k: gt.tensor(v, dtype=gt.float32, requires_grad=True) for k, v in m.init_params(0).items()}
    split = Split()
    for i in range(steps):
        split.measure(lambda: gt_style_step(P, data[i % 2]))
    return split.median()[0]


def main_job_epoch(steps, budget=0):
    """Samples/s of the main job's second epoch (its own loop, data and optimizer), `steps` steps
    an epoch; the split is rendered batch by batch, as the default 16,000-row split is (over
    Pixels' keep budget): on a mesh each worker renders its own part of each batch."""
    import gtnumba as gt
    from models import pixel_transformer as P, train as T
    args = P.build_parser().parse_args(["--n-train", str(64 * steps), "--n-test", "64", "--no-progress"])
    P._resolve(args)
    train, _ = T.load_data(args)
    gt.manual_seed(args.seed)
    model = P.PixelTransformer(args.img_size, args.seq_len, args.embed_dim, args.heads, args.layers, args.ff_dim,
                               train.n_classes, dropout=args.dropout)
    opt = T.make_optimizer(args, model)
    sched = T.make_scheduler(args, opt, 2 * steps)
    rows = gt.data.Rows(T.Pixels(train, budget=budget))
    step = 0
    for epoch in (1, 2):
        res, step = T.train_epoch(model, opt, sched, rows, train.y, args, epoch, step, progress=False)
    return res.samples / res.seconds


def interleaved(pairs, ahead=(True, False), steps=7):
    """(c) within one minute: blocks of `steps` steps alternate in-process (the cluster idles, ~2% of
    a core) and on the cluster, each in-process block against the Dask blocks after it: the machine's
    speed, which drifts over minutes, is the same for both.  The cluster runs a block per setting of
    `ahead`: as it does, and with no step submitted ahead (sched.speculate; which first alternates).
    The ratios of the pairs, one per setting."""
    from gtnumba.sched import dask_runner
    from gtnumba.sched.mesh import current_mesh, set_mesh
    mesh, ratios, saved = current_mesh(), [], dask_runner.SPECULATE
    try:
        set_mesh(None)
        local = pixel_model(200, 4, 4, "sgd")
        timed_steps(*local, 3, read_logits=True)
        set_mesh(mesh)
        remote = pixel_model(200, 4, 4, "sgd")
        timed_steps(*remote, 3, read_logits=True)
        for n in range(pairs):
            set_mesh(None)
            alone = timed_steps(*local, steps, read_logits=True)[0]
            set_mesh(mesh)
            got = {}
            for setting in (ahead if n % 2 == 0 else ahead[::-1]):
                dask_runner.SPECULATE = setting
                got[setting] = timed_steps(*remote, steps, read_logits=True)[0] / alone
            ratios.append(tuple(got[setting] for setting in ahead))
    finally:
        set_mesh(mesh)
        dask_runner.SPECULATE = saved
    return ratios


def part2(steps, rounds):
    """Rounds of: in-process runs (no cluster alive: its idle processes would slow them), then
    the same on a fresh 2-worker cluster.  The machine's speed drifts by tens of percent over
    minutes, so each round's Dask figure is set against that round's in-process one."""
    import gtnumba as gt
    out = {k: [] for k in ("a", "a_kept", "b", "c", "c_mixed")}
    for r in range(rounds):
        proc = dict(a=main_job_epoch(2 * steps), a_kept=main_job_epoch(2 * steps, budget=4 << 30),
                    b=gt_style(steps * 3), c=first_user_steps(steps))
        client = start(2)
        try:
            rt = round_trip(client)
            out["b"].append((proc["b"], gt_style(steps * 3), rt))
            out["c"].append((proc["c"], first_user_steps(steps)))
            out["c_mixed"] += interleaved(4)
            out["a"].append((proc["a"], main_job_epoch(2 * steps)))
            out["a_kept"].append((proc["a_kept"], main_job_epoch(2 * steps, budget=4 << 30)))
        finally:
            gt.shutdown()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in out.items() if v), flush=True)
    gt.init(workers=1, dashboard=":0")           # no split: the Dask path's own cost
    try:
        out["c_one"] = [r[0] for r in interleaved(2 * rounds, ahead=(True,))]
    finally:
        gt.shutdown()
    os.environ["GT_STATE_BACKUP"] = "0"          # the same without the fault-tolerance copies
    client = start(2)
    try:
        out["a_nobackup"] = main_job_epoch(2 * steps)
    finally:
        gt.shutdown()
        del os.environ["GT_STATE_BACKUP"]
    return out


def report(rows, cmp, steps):
    import dask
    import numba
    from gtnumba.sched import dask_runner
    ms = lambda s: f"{1e3 * s:.1f}"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["", f"## Dask step: counts and comparisons ({when})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average at the "
             f"end of the run {os.getloadavg()[0]:.1f} (this run's own processes included). "
             f"dask/distributed {dask.__version__}, "
             f"numpy {np.__version__}, numba {numba.__version__}, Python {platform.python_version()}. "
             f"Medians of {steps} steady-state steps.", "",
             "Part 1: Pixel Transformer img 32 seq 4 E 128 L 2, Adam, batch 16, loss and accuracy read every step.",
             f"tasks/step = Dask tasks submitted per step: a chain of up to {dask_runner.CHAIN_STEPS} predicted steps "
             "is one task per worker (a fractional count: the measured steps share a chain's tasks).",
             "bytes in = what a worker pulls from its peers per step (reduce-scatter + gather of the parameters);",
             "bound = 2(W-1)/W x gradient bytes; backup = copies of the new parameter and state slices sent to",
             "the next worker (fault tolerance, outside the collective bound). msgs = client->scheduler messages",
             "per step; writes = sends per step on the scheduler's streams, both ways (one may carry several",
             "messages).",
             "",
             "plan = ordering + structure key (core) + the mesh side (in brackets: leaf layouts, cached DistPlan).",
             "",
             "| W | tasks/step | bytes in/worker (formula) | bound | backup bytes | msgs | writes | step ms "
             "| record | plan [mesh] | submit | wait |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall, rec, plan, sub, wait, mesh_plan = r["split"]
        lines.append(f"| {r['W']} | {r['tasks']:.2f} | {r['moved']:.0f} ({r['formula']}) | {r['bound']:.0f} | "
                     f"{r['backup']:.0f} | {r['msgs']:.1f} | {r['writes']:.1f} | {ms(wall)} | {ms(rec)} | "
                     f"{ms(plan)} [{1e3 * mesh_plan:.2f}] | {ms(sub)} | {ms(wait)} |")
    med = statistics.median
    a = [d / p for p, d in cmp["a"]]
    a_kept = [d / p for p, d in cmp["a_kept"]]
    b = [(d - p) / rt for p, d, rt in cmp["b"]]
    c = [d / p for p, d in cmp["c"]]
    mixed, unahead = [r[0] for r in cmp["c_mixed"]], [r[1] for r in cmp["c_mixed"]]
    each = lambda xs, f: ", ".join(f.format(x) for x in xs)          # noqa: E731
    pair = lambda xs, i, f: med([x[i] for x in xs]) * f               # noqa: E731
    a_proc = pair(cmp["a"], 0, 1)
    lines += ["", f"Part 2 (same run, {len(c)} rounds; each round runs in-process first, with no cluster alive, then "
              "on a freshly started 2-worker cluster; result = median over rounds of each round's ratio, the "
              "rounds' own ratios in brackets):", "",
              "| benchmark | in-process (median) | 2 Dask workers (median) | result | goal |", "|---|---|---|---|---|",
              f"| (a) main job's default model b64, second epoch, samples/s | {a_proc:.1f} | "
              f"{pair(cmp['a'], 1, 1):.1f} | {med(a):.2f}x ({each(a, '{:.2f}')}) | "
              f">= 0.9x: {'met' if med(a) >= 0.9 else 'not met'} |",
              f"| (a') the same, GT_STATE_BACKUP=0 (no slice backups), one run | | {cmp['a_nobackup']:.1f} | "
              f"{cmp['a_nobackup'] / a_proc:.2f}x | |",
              f"| (a'') the same, pixels kept after epoch 1 (a split under Pixels' 4 GiB budget) | "
              f"{pair(cmp['a_kept'], 0, 1):.1f} | {pair(cmp['a_kept'], 1, 1):.1f} | {med(a_kept):.2f}x "
              f"({each(a_kept, '{:.2f}')}) | |",
              f"| (b) GT-style small model b4, step ms | {ms(pair(cmp['b'], 0, 1))} | {ms(pair(cmp['b'], 1, 1))} | "
              f"{med(b):.1f} round trips ({each(b, '{:.1f}')}; one-task round trip {ms(pair(cmp['b'], 2, 1))} ms) | "
              f"<= 2: {'met' if med(b) <= 2 else 'not met'} |",
              f"| (c) first user's size b4 200x200 SGD, loss+logits read, step ms (after {WARMUP} unmeasured steps) | "
              f"{ms(pair(cmp['c'], 0, 1))} | "
              f"{ms(pair(cmp['c'], 1, 1))} | {med(c):.2f}x ({each(c, '{:.2f}')}) | "
              f"<= 1.5x: {'met' if med(c) <= 1.5 else 'not met'} |",
              f"| (c') the same within each minute: blocks of 7 steps alternating in-process / on the round's "
              f"cluster, 4 pairs a round | | | {med(mixed):.2f}x (median of {len(mixed)} pairs; "
              f"{min(mixed):.2f}-{max(mixed):.2f}) | <= 1.5x: {'met' if med(mixed) <= 1.5 else 'not met'} |",
              f"| (c'') the same blocks on the cluster with no step submitted ahead (GT_SPECULATE=0), each "
              f"block next to the (c') one | | | {med(unahead):.2f}x (median of {len(unahead)} pairs; "
              f"{min(unahead):.2f}-{max(unahead):.2f}) | |",
              f"| (c1) the (c') blocks on a 1-worker cluster: the whole step on one worker (its "
              f"kernels get the cores less the client's one: {_lone_worker_threads()} thread(s)), no split "
              f"and no exchange (what the Dask path costs by itself) | | | {med(cmp['c_one']):.2f}x (median of "
              f"{len(cmp['c_one'])} pairs; {min(cmp['c_one']):.2f}-{max(cmp['c_one']):.2f}) | |"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    ap.add_argument("--workers", default="2,4,8")
    args = ap.parse_args()
    steps = 6 if args.quick else 12
    rounds = 2 if args.quick else 5
    rows = [part1(int(w), steps) for w in args.workers.split(",")]
    for r in rows:
        print(r, flush=True)
    cmp = part2(steps, rounds)
    print(cmp, flush=True)
    text = report(rows, cmp, steps)
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
