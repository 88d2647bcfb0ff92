"""Run a DistPlan on a Dask cluster: one task per worker per step (or per level), in one message.

A step is submitted as one graph (`client.get(..., sync=False)`) and not waited for: values are
`Part`s (a store key on each worker and the future of the task that makes it), and only a read
waits, for the tasks it reads.  Task results are tiny, so Dask moves no data between workers;
collectives pull exactly the slices they need from the peers' stores (see dask_worker).  New host
data (a batch, parameters placed for the first time) travels inside the first task of its worker.
The plan goes to each worker once and is cached there under its uid.  The values the client reads
are stored as soon as they are made (dask_worker._segments), so its read returns while the worker
runs the rest of the step.

A step's tasks do not depend on the previous step's in Dask: the scheduler would hold the next
step until the last one finished and only then send it (a task-finished message and a
compute-task message on the critical path, ~10 ms a step here).  The next step's task waits on
its worker, in the store, until the previous one is done there (dask_worker.run_levels), and a
worker runs its tasks in the order they were submitted (Dask's priorities).

In a training loop the next step is submitted before the client records it (sched.speculate): its
tasks wait on their workers until `_confirmed` sends its data, or until `_cancel` calls it off.
"""
import asyncio
import itertools
import os
import threading
import time
import uuid
import weakref

import dask
import numpy as np
# private Dask APIs (a graph submitted under our own token and priorities, task specs): setup.cfg pins the series
from dask._expr import LLGExpr
from dask._task_spec import Task, TaskRef

from ..kernels import backend
from .distribute import Collective
from .dask_scheduler import DropStoreOnLeave
from .dask_worker import SENT, StorePlugin, counters, drop_store, pack, run_chain, run_levels, store_get, unpack
from .cost import nbytes, slot_specs
from . import speculate
from .mesh import Flat, WorkerLost


# One task per worker per step runs all its levels (no scheduler hop between forward_backward and
# reduce_update on the critical path); GT_DASK_TASK_PER_LEVEL=1 gives one task per level instead.
FUSED = os.environ.get("GT_DASK_TASK_PER_LEVEL") != "1"

# new parameters travel inside the first step's tasks: no warning about that graph's size
_QUIET = {"distributed.admin.large-graph-warning-threshold": "4GiB"}
# kept values up to this size, of the last RIDE_STEPS steps, come along with any read of their worker
SMALL_READ, RIDE_STEPS = 4096, 2
# host data from this size on goes from the client straight to its worker's store, not inside the
# task: the scheduler would unpickle it from the graph and pickle it again to the worker
DIRECT_BYTES = 64 << 10
_SPAN = {"collections": [{"type": "low-level-graph"}]}
# GT_SPECULATE=0: no step is submitted before it is recorded (sched.speculate)
SPECULATE = os.environ.get("GT_SPECULATE") != "0"
_GO_VALUE, _STOP_VALUE = np.zeros(0, np.int8), np.zeros(1, np.int8)     # a predicted step's go-ahead or not
PUT_WAIT = 0.1          # seconds a read waits for the batches before it submits the next step anyway
# A task future's release is three messages (client -> scheduler -> worker -> scheduler), six a step.  Held
# here, a step's futures go RELEASE_STEPS steps at a time, RELEASE_AFTER steps after their submission (when
# the parts that also hold them are mostly gone): released together, they travel in one message of each kind.
RELEASE_STEPS, RELEASE_AFTER = 8, 4
# A worker no read reaches is asked for its progress once the client has not heard of it for this many steps: a
# step stays in the log (its values alive, for a replay after a worker loss) until every worker finished it
ASK_AFTER = 2
LIVENESS_AFTER = 1.0
# Predicted steps run in chains (speculate.Chain) of up to this many: a chain is one task per worker, submitted
# once, so its later steps cost no scheduler round (update-graph, compute-task, task-finished, key-in-memory:
# ~2.5 ms of CPU a task on the development machine), only their go-aheads.  1: each predicted step its own tasks.
CHAIN_STEPS = max(1, int(os.environ.get("GT_CHAIN_STEPS", "8")))


class Part:
    """One worker's piece of a value on the cluster: its key in the worker's store, the future of
    the task that produced it, and (until its first step is submitted) the host array to send."""
    __slots__ = ("worker", "key", "future", "slot", "pending", "host", "uid", "ahead", "early")

    def __init__(self, worker, key, future=None, slot=None, pending=None, uid=None, early=False):
        self.worker, self.key, self.future, self.slot, self.pending = worker, key, future, slot, pending
        self.host = None          # its value, when it came along with an earlier read
        self.uid = uid            # the plan whose kept `slot` it is
        self.early = early        # its worker stores it as soon as it is made (dask_worker._segments)
        self.ahead = None         # the pull bringing its value ahead of its read, while one runs (on the loop)


class _Where:
    """Task key -> the worker it must run on (keys end with the worker index)."""

    def __init__(self, addresses):
        self.addresses = addresses

    def __call__(self, key):
        return [self.addresses[key[-1]]]


def _level_names(plan):
    names = []
    for lv in range(plan.n_levels):
        kinds = {c.kind for c in plan.steps if isinstance(c, Collective) and c.level == lv}
        if lv == 0:
            names.append("forward_backward")
        elif "reducescatter" in kinds:
            names.append("reduce_update")
        else:
            names.append("compute")
    return names


class _PlanInfo:
    """What the client needs per plan: its uid, its tasks (names and the levels each runs), and
    the task making each kept slot."""

    def __init__(self, plan, fused):
        self.uid, self.fused = uuid.uuid4().hex[:12], fused
        names = _level_names(plan)
        if fused:
            self.tasks = [("_".join(dict.fromkeys(names)), tuple(range(plan.n_levels)))]
        else:
            self.tasks = [(name, (lv,)) for lv, name in enumerate(names)]
        task_of = {lv: i for i, (_, levels) in enumerate(self.tasks) for lv in levels}
        made = {s.out: s.level for s in plan.steps}
        self.kept_task = {s: task_of[made[s]] for s in plan.keep}
        self.small = None         # kept slots small enough to ride along with a read (see fetch)

    def small_slots(self, plan, key):
        if self.small is None:
            specs = slot_specs(key, plan) if key is not None else {}
            self.small = frozenset(s for s in plan.keep if s in specs and nbytes(specs[s]) <= SMALL_READ)
        return self.small


async def _failure(future):
    """Raises the error of a task future that fails; returns when it finishes otherwise."""
    await future._state.wait()
    if future.status == "error":
        await future._result()


def _retrieved(task):
    """A cancelled wait: its outcome is not wanted (asyncio would log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


class DaskRunner:
    name = "dask"

    def __init__(self, client, addresses):
        self.client = client
        self.addresses = list(addresses)
        self.workers = len(self.addresses)
        self.rid = uuid.uuid4().hex
        self._steps = itertools.count()
        self._placed = itertools.count()
        self._last = [None] * self.workers           # future of the last task on each worker
        self._sent = {}                               # (plan uid, worker) -> the step that carried it
        self._shipped = set()                         # (rows source uid, worker) holding that source
        self._small = []                              # per recent step: its small kept values' parts
        self._read_of = set()                         # (plan uid, kept slot, worker) the client has read
        self._put_failed = []                         # (worker address, error) of batches not delivered
        self._put_failure = None
        self._failed = set()                          # keys of step tasks failed on their workers by us
        self._frees = [[] for _ in self.addresses]
        self._outbox = []                             # this step's batches for the workers' stores
        self._keyrefs = {}
        self.log = []                                 # (futures, replay) of steps not known finished
        self._logged = []                             # (place in the run order, token) of each log entry
        self._order = itertools.count()
        self._place = {}                              # token of a logged step -> its place
        self._finished = [-1] * self.workers          # per worker: the last step (place) it reported finished
        self._asking = set()                          # workers asked for that, not answered yet
        self._prev = None                             # (plan, leaf parts, kept parts) of the last step
        self._prediction = None                       # the next step, submitted ahead (sched.speculate)
        self._chain = None                            # the chain of predicted steps it belongs to
        self._deferred = None                         # ... or to be submitted at the next read
        self._stopping = []                           # futures of predicted steps called off
        self._held = []                               # per recent step: its futures (see RELEASE_STEPS)
        self._leaving = False
        self._sent_all = threading.Event()            # set when the last step's batches have arrived
        self.on_lost = None                           # recovery, installed by the mesh step
        self.stats = {"steps": 0, "tasks": 0, "reads": 0, "read_rpcs": 0, "riders": 0, "ahead_rpcs": 0,
                      "direct_bytes": 0, "submit_seconds": 0.0, "wait_seconds": 0.0, "predictions_taken": 0,
                      "predictions_missed": 0, "progress_asks": 0}
        self._where = _Where(self.addresses)
        self._plugin = False      # registered at the first step: gt.init may run inside `import gtnumba`,
        #                           and pickling the plugin there would wait for that import
    # ---- values -----------------------------------------------------------------------------
    def place(self, parts):
        """Host parts become Parts that travel with the next step's first tasks."""
        key = f"p{next(self._placed)}"
        return [Part(w, key, pending=self._pending(w, p)) for w, p in enumerate(parts)]

    def _pending(self, w, part):
        """A host array, or a recipe read on the worker (gtnumba.data), whose source goes to each
        worker once: the worker keeps it in this client's store."""
        if not hasattr(part, "read"):
            return backend.to_host(part)
        ship = (part.uid, w) not in self._shipped
        self._shipped.add((part.uid, w))
        return part.shipped(ship)

    def track(self, value):
        """When `value` (a DistValue) dies, its store entries are freed with the next step (under
        their keys then: a placed part may take another, _rekey)."""
        for w, p in enumerate(value.parts):
            self._keyrefs[(w, p.key)] = self._keyrefs.get((w, p.key), 0) + 1
        weakref.finalize(value, self._release, list(value.parts))

    def _release(self, parts):
        for k in [(w, p.key) for w, p in enumerate(parts)]:
            n = self._keyrefs.get(k, 0) - 1
            if n <= 0:
                self._keyrefs.pop(k, None)
                self._frees[k[0]].append(k[1])
            else:
                self._keyrefs[k] = n

    def fetch(self, parts):
        """Host copies of parts, straight from the workers' stores: each waits there only until its
        own value is computed (the rest of its task, such as the update, may still run)."""
        t0 = time.perf_counter()
        out = [p.pending if p.pending is not None else p.host for p in parts]
        by_worker, ahead = {}, {}
        for i, p in enumerate(parts):
            if out[i] is None:
                task = p.ahead
                if task is not None and not task.done():
                    ahead[id(task)] = task
                else:
                    by_worker.setdefault(p.worker, []).append(i)
        self.stats["reads"] += bool(by_worker or ahead)
        if not by_worker and not ahead:         # all came with an earlier read: no hop to the client's loop
            return out
        for w, idx in by_worker.items():
            self._read_of.update((parts[i].uid, parts[i].slot, w) for i in idx)
        riders = {w: self._riders(w, [parts[i] for i in idx]) for w, idx in by_worker.items()}
        self.stats["read_rpcs"] += len(by_worker)
        self.stats["riders"] += sum(map(len, riders.values()))
        try:
            pulling = asyncio.run_coroutine_threadsafe(self._pull(parts, by_worker, riders, list(ahead.values())),
                                                       self.client.loop.asyncio_loop)
            # while this thread would only wait, once the batches are out (it holds the GIL meanwhile)
            if self._deferred is not None and self._sent_all.wait(PUT_WAIT):
                self._predict()
            replies = pulling.result()
        except Exception:
            dead = self.dead_workers()
            if dead:
                raise WorkerLost(dead) from None
            raise
        for (w, idx), reply in zip(by_worker.items(), replies):
            self._heard(w, reply)
            values = unpack(reply)
            for i, value in zip(idx, values):
                out[i] = value
            for part, value in zip([r for r, have in zip(riders[w], reply["have"]) if have], values[len(idx):]):
                part.host = value
        self.stats["wait_seconds"] += time.perf_counter() - t0
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:               # came ahead, or failed to: then read as any value (its error raised there)
            for i, value in zip(missing, self.fetch([parts[i] for i in missing])):
                out[i] = value
        return out

    def _riders(self, w, asked):
        """Worker w's small kept values of recent steps, of the kinds read from w before (by plan
        and kept slot: the loop reading the loss reads its accuracy and logits next), not read yet:
        they come with this read if they are computed by then.  Small new parameters are never
        read, so they do not ride."""
        asked = {id(p) for p in asked}
        return [parts[w] for step in self._small for parts in step
                if (parts[w].uid, parts[w].slot, w) in self._read_of and parts[w].host is None
                and id(parts[w]) not in asked]

    async def _pull(self, parts, by_worker, riders, ahead=()):
        """The pulls (and the pulls ahead of some parts), unless a task making one of the parts
        fails first (a step the scheduler could not even unpickle never reaches a store): then
        that task's error, at once."""
        if by_worker:
            self._pull_ahead(set(by_worker))
        calls = asyncio.gather(*[self.client.rpc(self.addresses[w]).gtnumba_pull(
            rid=self.rid, items=[(parts[i].key, None, None, False) for i in idx],
            ready=[p.key for p in riders[w]]) for w, idx in by_worker.items()], *map(asyncio.shield, ahead))
        makers = {id(p.future): p.future for p in parts if p.pending is None and p.future is not None}
        earlier = {id(f): f for futures, _ in self.log for f in futures
                   if f.status != "finished" and id(f) not in makers and f.key not in self._failed}
        watch = [asyncio.ensure_future(self._step_failure(f, True)) for f in makers.values() if f.status != "finished"]
        watch += [asyncio.ensure_future(self._step_failure(f, False)) for f in earlier.values()]
        undelivered = asyncio.ensure_future(self._put_event().wait())
        watch += [undelivered, asyncio.ensure_future(self._all_alive())]
        try:
            while True:
                done, _ = await asyncio.wait([calls, *watch], return_when=asyncio.FIRST_COMPLETED)
                if calls in done:
                    return calls.result()
                if undelivered in done:      # a step waits for a batch that will never come
                    raise self._put_error()
                for t in done:
                    t.result()
                watch = [t for t in watch if t not in done]
        finally:
            for t in (calls, *watch):
                if t.cancel():
                    t.add_done_callback(_retrieved)

    async def _all_alive(self):
        """Raises WorkerLost once the scheduler no longer knows one of the workers, checked every LIVENESS_AFTER
        seconds of a read's wait (a read takes milliseconds; a peer's pull from a dead worker waits out the
        connect timeout, 30 s, before it fails)."""
        while True:
            await asyncio.sleep(LIVENESS_AFTER)
            try:
                known = (await self.client.scheduler.identity(n_workers=-1))["workers"]
            except Exception:     # the read's own outcome decides then
                continue
            dead = [a for a in self.addresses if a not in known]
            if dead:
                raise WorkerLost(dead)

    def _pull_ahead(self, asked):
        """A read reaching some workers also asks the others, without waiting for them, for the small
        values of the kinds read from them before (the accuracy of a batch split over workers is a
        sum of every worker's part): the next read finds them here or on their way."""
        for w in range(self.workers):
            # only values stored as soon as they are made: a pull ahead waits for all it asks, and one
            # made at the end of w's level would hold up the read of the others
            wanted = [] if w in asked else [p for p in self._riders(w, ())
                                            if p.early and (p.ahead is None or p.ahead.done())]
            if wanted:
                task = asyncio.ensure_future(self._ahead(w, wanted))
                for p in wanted:
                    p.ahead = task
                self.stats["ahead_rpcs"] += 1

    async def _progress_of(self, w):
        try:
            self._heard(w, await self.client.rpc(self.addresses[w]).gtnumba_pull(rid=self.rid, items=[], ready=[]))
        except Exception:         # a dead worker: the next read finds out
            pass
        finally:
            self._asking.discard(w)

    def _heard(self, w, reply):
        """Worker w's reply says which step it finished last, and its peers as it heard from them
        (dask_worker._pull, _collectives)."""
        for j, token in reply.get("finished", {}).items():
            place = self._place.get(token)
            if place is not None and place > self._finished[j]:
                self._finished[j] = place

    async def _ahead(self, w, wanted):
        try:
            reply = await self.client.rpc(self.addresses[w]).gtnumba_pull(
                rid=self.rid, items=[(p.key, None, None, False) for p in wanted], ready=[])
            self._heard(w, reply)
            for p, value in zip(wanted, unpack(reply)):
                p.host = value
        except Exception:         # not this read's to raise: the read of such a part pulls it again, and raises
            pass
        finally:
            for p in wanted:
                p.ahead = None

    async def _step_failure(self, future, read):
        """If a step's task fails: its error (`read`: the read waits for that task), after failing
        its step on its worker.  A task that failed before it reached its worker (a graph the
        scheduler could not unpickle) leaves the next steps there waiting for it to end; failed,
        they fail at once with this cause (or run, when they do not read its values) instead of at
        the pull timeout.  Watching an earlier step never raises: a read of its own values does."""
        try:
            await _failure(future)
        except Exception as exc:
            if isinstance(future.key, tuple) and len(future.key) == 4 and future.key not in self._failed:
                self._failed.add(future.key)
                _, token, _, w = future.key
                try:
                    await self.client.rpc(self.addresses[w]).gtnumba_fail(
                        rid=self.rid, keys=[token], message=f"gtnumba: step {token} failed: {exc!r}")
                except Exception:             # its worker is gone: the read's error says so
                    pass
            if read:
                raise

    def _stored(self, items):
        """Values from the workers' stores: (worker index, key, owner of a backup or None)."""
        futures = [self.client.submit(store_get, self.rid, key, owner, workers=[self.addresses[w]],
                                      allow_other_workers=False, pure=False) for w, key, owner in items]
        return self.client.gather(futures)

    def recover_parts(self, layout, parts, alive):
        """Host copies of parts, from their worker or, for a dead one's slice, the backup on the
        next worker; None when a part is gone for good."""
        alive, items = set(alive), []
        for p in parts:
            nxt = (p.worker + 1) % self.workers
            if p.worker in alive:
                items.append((p.worker, p.key, None))
            elif isinstance(layout, Flat) and nxt in alive:
                items.append((nxt, p.key, p.worker))
            else:
                return None
        return self._stored(items)

    def lost(self, dead):
        if self.on_lost is None:
            raise WorkerLost(dead)
        self.on_lost(self, dead)

    def dead_workers(self):
        alive = set(self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"])
        return [a for a in self.addresses if a not in alive]

    def without(self, dead):
        return DaskRunner(self.client, [a for a in self.addresses if a not in dead])

    def close(self):
        """Drop this client's stores on the workers (they outlive the client otherwise)."""
        try:                       # the live ones: a dead one's address would be tried until the connect timeout
            alive = set(self.client.scheduler_info(n_workers=-1)["workers"])
            self.client.run(drop_store, self.rid, workers=[a for a in self.addresses if a in alive])
        except Exception:          # workers already gone
            pass

    def _drop_store_on_leave(self):
        try:
            self.client.register_plugin(DropStoreOnLeave(self.rid, self.client.id))
        except Exception:          # a scheduler without gtnumba cannot load it: the stores outlive a dead client
            self.stats["store_outlives_client"] = True

    def byte_counters(self):
        """Per worker: tasks run, bytes pulled from peers, bytes sent as backups (this client)."""
        return self.client.run(counters, self.rid, workers=self.addresses)

    # ---- steps ------------------------------------------------------------------------------
    def run(self, plan, leaf_parts, replay=None):
        if not self._plugin:
            self.client.register_plugin(StorePlugin())
            self._drop_store_on_leave()
            self._plugin = True
        t0 = time.perf_counter()
        info = getattr(plan, "dask_info", None)
        if info is None or info.fused != FUSED:
            info = plan.dask_info = _PlanInfo(plan, FUSED)
        self.last_plan = plan
        learned = speculate.sources(self._prev, plan, leaf_parts) if SPECULATE else None
        kept = self._confirmed(plan, leaf_parts, learned, replay)
        if kept is None:
            kept = self._submitted(plan, info, leaf_parts, replay)
        self._prev = (plan, leaf_parts, kept)
        # submitted at the next read: now, this thread would hold the GIL while the client's loop
        # sends this step's batch (a worker then started its step 10 ms late, medians, 2 workers)
        self._deferred = (info, speculate.Prediction(plan, learned, kept, leaf_parts)) \
            if learned and not self._leaving else None
        self.stats["steps"] += 1
        self.stats["submit_seconds"] += time.perf_counter() - t0
        return kept

    def _submitted(self, plan, info, leaf_parts, replay):
        """The step submitted now, its new host data inside its tasks or sent straight to the stores."""
        token = f"{self.rid[:8]}-{next(self._steps)}"
        leafkeys = {slot: parts[0].key for slot, parts in enumerate(leaf_parts)}
        self._outbox = []
        inlines = [self._inline(w, leaf_parts, leafkeys) for w in range(self.workers)]
        futures, by_key, early = self._issue(plan, info, token, inlines, leafkeys)
        self._send_outbox()
        for slot, parts in enumerate(leaf_parts):
            for w, p in enumerate(parts):
                if p.pending is not None:
                    p.future, p.slot = by_key[(info.tasks[0][0], token, 0, w)], None
        kept = self._kept(plan, info, token, by_key, early)
        self._done_submitting(plan, info, token, kept, futures, replay)
        return kept

    def _issue(self, plan, info, token, inlines, leafkeys):
        dsk, last_keys, early = self._graph(plan, info, token, inlines, leafkeys)
        futures = self._submit(dsk, token)
        self._hold(futures)
        self.stats["tasks"] += len(futures)
        by_key = dict(zip(dsk, futures))
        for w, k in enumerate(last_keys):
            self._last[w] = by_key[k]
        return futures, by_key, early

    def _hold(self, futures):
        self._held.append(futures)
        if len(self._held) >= RELEASE_STEPS + RELEASE_AFTER:
            batch = self._held[:RELEASE_STEPS]
            del self._held[:RELEASE_STEPS]
            self.client.loop.add_callback(batch.clear)      # dropped there: no wake-up of the loop per future

    def _send_outbox(self):
        self._sent_all = threading.Event()
        asks = self._behind()
        if self._outbox or asks:  # all the step's batches in one hop to the client's loop, after the graph
            self.client.loop.add_callback(self._put_all, self._outbox, self._sent_all, asks)
        else:
            self._sent_all.set()
        # the client's loop thread now waits for the GIL to send the graph, while this thread would
        # hold it for its bookkeeping until the next read blocks: handed over now, the graph reached
        # the scheduler 2.9 ms after the submit instead of 4.2 ms (GT-style small step, medians)
        time.sleep(0)

    def _kept(self, plan, info, token, by_key, early):
        kept = {}
        for slot in plan.keep:
            t = info.kept_task[slot]
            kept[slot] = [Part(w, f"{token}:{slot}", by_key[(info.tasks[t][0], token, t, w)], slot, uid=info.uid,
                               early=slot in early[w]) for w in range(self.workers)]
        return kept

    def _done_submitting(self, plan, info, token, kept, futures, replay):
        small = info.small_slots(plan, replay[1] if replay is not None else None)
        self._small.append([kept[slot] for slot in small])
        del self._small[:-RIDE_STEPS]
        self._log(futures, replay, token)

    # ---- the next step submitted before it is recorded (sched.speculate) ----------------------
    def leaving(self):
        """The client leaves the cluster: the reads that bring values home may still run steps,
        but submit none ahead."""
        self._leaving, self._deferred = True, None

    def _predict(self):
        """Step N+1 submitted right behind step N: its tasks wait on their workers for the
        confirmation (and new data) that `_confirmed` sends."""
        if self._deferred is None:
            return
        (info, pred), self._deferred = self._deferred, None
        if info.fused:
            self._chained(info, pred)
        else:
            plan = pred.plan
            pred.reserve(self._new_key)
            pred.token = f"{self.rid[:8]}-{next(self._steps)}"
            inlines = [{slot: SENT for slot in pred.reserved} for _ in range(self.workers)]
            futures, by_key, early = self._issue(plan, info, pred.token, inlines, pred.leafkeys)
            firsts = [by_key[(info.tasks[0][0], pred.token, 0, w)] for w in range(self.workers)]
            pred.issued = (futures, firsts, self._kept(plan, info, pred.token, by_key, early))
        self._prediction = pred

    def _new_key(self):
        return f"p{next(self._placed)}"

    def _chained(self, info, pred):
        """`pred` as the next step of the running chain, or the first of a new one."""
        chain = self._chain
        if chain is None or not chain.continues(pred):
            self._end_chain()
            chain = self._chain = speculate.Chain(pred, f"{self.rid[:8]}-{next(self._steps)}", CHAIN_STEPS,
                                                  self._new_key, "{}:{}".format)
            self._submit_chain(info, chain)
        i = chain.take(pred)
        futures, early = chain.task
        # the chain's task (one, all levels) makes every kept value of each of its steps
        kept = self._kept(pred.plan, info, pred.token, {(info.tasks[0][0], pred.token, 0, w): f
                                                        for w, f in enumerate(futures)}, early)
        assert all(pred.kept[k][0].key == pred.leafkeys[s] for s, (kind, k) in enumerate(pred.sources)
                   if kind == "kept"), f"chain step {i} does not take the outputs of the step before"
        pred.issued = (futures, futures, kept)

    def _submit_chain(self, info, chain):
        plan, (name, levels) = chain.plan, info.tasks[0]
        inline, dsk, earlies = {slot: SENT for slot in chain.reserved[0]}, {}, []
        steps = list(zip(chain.tokens, chain.leafkeys))
        for w in range(self.workers):
            previous, frees, send, carrier, early = self._context(plan, info, chain.tokens[0], w)
            earlies.append(early)
            key = (name, chain.token, 0, w)
            dsk[key] = Task(key, run_chain, self.rid, info.uid, send, carrier, previous, levels, w, chain.token,
                            self.addresses, steps, inline, frees, early)
        futures = self._submit(dsk, chain.token)
        self._hold(futures)
        self._last = list(futures)
        self.stats["tasks"] += len(futures)
        chain.task = (futures, earlies)

    def _end_chain(self):
        """The running chain's tasks, waiting for a step the client will not take, end."""
        chain, self._chain = self._chain, None
        key = chain.waiting() if chain is not None else None
        if key is not None:
            self._stopping = [fs for fs in self._stopping if not all(f.done() for f in fs)] + [chain.task[0]]
            self.client.loop.add_callback(self._call_off, [key], pack([_STOP_VALUE]))

    def _confirmed(self, plan, leaf_parts, learned, replay):
        """The kept parts of the predicted step, when this step is it (it takes its leaves from the
        last step as `learned` now, and as predicted then): its new data go straight to the reserved
        keys in the workers' stores, where its tasks wait.  None (and the prediction cancelled)
        otherwise."""
        if self._prediction is None and self._deferred is not None and learned == self._deferred[1].sources \
                and self._deferred[0].fused:
            self._predict()           # no read came between the steps: this one runs in a chain all the same
        pred, self._prediction, self._deferred = self._prediction, None, None
        if pred is None:
            self._end_chain()
            return None
        if learned is None or learned != pred.sources:
            self.stats["predictions_missed"] += 1
            self._cancel(pred)
            return None
        futures, firsts, kept = pred.issued
        slots = list(pred.reserved)
        keys = [pred.reserved[s] for s in slots] + [pred.leafkeys[speculate.GO]]
        try:
            self._outbox = [(self.addresses[w], keys, pack([leaf_parts[s][w].pending for s in slots] + [_GO_VALUE]),
                             self._frees[w]) for w in range(self.workers)]
        except Exception:         # its tasks would wait for a go-ahead for good, and hold up every later step
            self.stats["predictions_missed"] += 1
            self._cancel(pred)
            raise
        self._frees = [[] for _ in self.addresses]
        self.stats["direct_bytes"] += sum(data["buf"].data.nbytes for _, _, data, _ in self._outbox)
        self._send_outbox()
        if self._chain is not None and pred.token in self._chain.tokens:
            self._chain.confirmed += 1
        for s in slots:
            for w, p in enumerate(leaf_parts[s]):
                self._rekey(p, w, pred.reserved[s])
                p.future, p.slot = firsts[w], None
        self._done_submitting(plan, plan.dask_info, pred.token, kept, futures, replay)
        self.stats["predictions_taken"] += 1
        return kept

    def _cancel(self, pred):
        """The predicted step's tasks, told to stop where they wait, end having run nothing.  Their
        futures are held until then: Dask would forget a released task that has not started (the
        second level's, with one task per level), and the next step waits for it to end."""
        self._stopping = [fs for fs in self._stopping if not all(f.done() for f in fs)] + [pred.issued[0]]
        self.client.loop.add_callback(self._call_off, [pred.leafkeys[speculate.GO]], pack([_STOP_VALUE]))
        if self._chain is not None and pred.token in self._chain.tokens:
            self._chain = None            # its tasks end at this step

    async def _call_off(self, keys, data):
        for address in self.addresses:
            try:
                await self.client.rpc(address).gtnumba_put(rid=self.rid, keys=keys, data=data, reply=False)
            except Exception:         # a dead worker: its tasks are gone with it
                pass

    def _rekey(self, part, w, key):
        """A placed part takes the key its predicted step reads it under (before any step used it)."""
        n = self._keyrefs.pop((w, part.key), None)
        if n is not None:
            self._keyrefs[(w, key)] = n
        part.key = key

    def _submit(self, dsk, token):
        """The step's graph in one message, its futures in key order."""
        with dask.annotate(workers=self._where), dask.config.set(_QUIET):
            expr = LLGExpr(dsk, _determ_token=token)
            # the step's token names the graph: Dask need not hash the whole graph (~10 ms a step).
            # fifo_timeout=0: each step a new generation, so a worker runs an earlier step first.
            # Our priorities (a worker's levels in order) spare the scheduler a dask.order pass
            # in its offload thread, a thread hop per step on the critical path.
            futures = self.client._graph_to_futures(expr, set(dsk), _SPAN, internal_priority={k: k[2] for k in dsk},
                                                    fifo_timeout=0)
        return [futures[k] for k in dsk]

    def _send_direct(self, w, inline, leafkeys):
        """Worker w's big new host arrays go to its store in one message, sent with the other
        workers' once the step is submitted and not waited for; the task finds SENT in their
        place and waits for them there."""
        direct = [slot for slot, v in inline.items() if isinstance(v, np.ndarray) and v.nbytes >= DIRECT_BYTES]
        if not direct:
            return
        keys, data = [leafkeys[slot] for slot in direct], pack([inline[slot] for slot in direct])
        for slot in direct:
            inline[slot] = SENT
        self.stats["direct_bytes"] += data["buf"].data.nbytes
        self._outbox.append((self.addresses[w], keys, data, ()))

    def _behind(self):
        """Workers not heard of (dask_worker._pull's `finished`) for ASK_AFTER steps, now asked."""
        last = self._logged[-1][0] + 1 if self._logged else 0
        asks = [w for w in range(self.workers) if w not in self._asking and self._finished[w] < last - ASK_AFTER]
        self._asking.update(asks)
        self.stats["progress_asks"] += len(asks)
        return asks

    async def _put_all(self, puts, sent, asks=()):
        for w in asks:
            asyncio.ensure_future(self._progress_of(w))
        try:
            await asyncio.gather(*[self._put(*p) for p in puts])
        finally:
            sent.set()

    async def _put(self, address, keys, data, frees=()):
        try:
            await self.client.rpc(address).gtnumba_put(rid=self.rid, keys=keys, data=data, frees=frees, reply=False)
        except Exception as exc:          # raised by the next read (a dead worker: WorkerLost there)
            self._put_failed.append((address, exc))
            self._put_event().set()
            try:                          # the step waiting for the batch fails now, not at its timeout
                await self.client.rpc(address).gtnumba_fail(rid=self.rid, keys=keys,
                                                            message=f"gtnumba: a batch did not arrive: {exc!r}")
            except Exception:
                pass

    def _put_event(self):
        """Set when a batch could not be sent (made on the client's loop, where reads wait)."""
        if self._put_failure is None:
            self._put_failure = asyncio.Event()
        return self._put_failure

    def _put_error(self):
        """The error of the first batch not delivered (raised once: later steps may work again)."""
        address, exc = self._put_failed.pop(0)
        if not self._put_failed:
            self._put_failure.clear()
        return RuntimeError(f"gtnumba: sending a batch to worker {address} failed: {exc!r}")

    def _log(self, futures, replay, token):
        # a failed step stays until a read has failed it on its workers (_step_failure): dropped before,
        # the next step's task, sent while the failure was not known yet, would wait there for it for good.
        # A step of a chain is done when every worker reported it finished (its task ends many steps later).
        done = min(self._finished)
        while self.log and (self._logged[0][0] <= done or
                            all(f.status == "finished" or f.key in self._failed for f in self.log[0][0])):
            self.log.pop(0)
            self._place.pop(self._logged.pop(0)[1], None)
        place = next(self._order)
        self._place[token] = place
        self.log.append((futures, replay))
        self._logged.append((place, token))

    def _inline(self, w, leaf_parts, leafkeys):
        """Worker w's new host data of a step: small ones ride in its task, big ones go straight."""
        inline = {slot: parts[w].pending for slot, parts in enumerate(leaf_parts) if parts[w].pending is not None}
        self._send_direct(w, inline, leafkeys)
        return inline

    def _context(self, plan, info, token, w):
        """What worker w's first task of step `token` needs from the runner: the step it follows there, the keys
        to free, the plan if w has not got it and the step that carried it, the slots the client reads early."""
        frees, self._frees[w] = self._frees[w], []
        previous = self._last[w] and self._last[w].key[1]
        if getattr(self._last[w], "status", None) == "error":
            # its graph failed before reaching the worker: no plan arrived with it, and it
            # will not be done there
            self._sent, previous = {s: t for s, t in self._sent.items() if s[1] != w}, None
        send = None if (info.uid, w) in self._sent else plan
        carrier = self._sent.setdefault((info.uid, w), token)
        early = frozenset(slot for slot in plan.keep if (info.uid, slot, w) in self._read_of)
        return previous, frees, send, carrier, early

    def _graph(self, plan, info, token, inlines, leafkeys):
        dsk, last_keys, earlies = {}, [], []
        for w in range(self.workers):
            inline = inlines[w]
            previous, frees, send, carrier, early = self._context(plan, info, token, w)
            prev = None               # no Dask dependency on the previous step (see the module doc)
            earlies.append(early)
            for t, (name, levels) in enumerate(info.tasks):
                key = (name, token, t, w)
                after = (TaskRef(prev),) if prev is not None else ()
                first, final = t == 0, t == len(info.tasks) - 1
                order = (previous if first else None, final)
                dsk[key] = Task(key, run_levels, self.rid, info.uid, send if first else None, carrier, order, levels,
                                w, token, self.addresses, leafkeys if first else None, inline if first else {},
                                frees if final else [], early, *after)
                prev = key
            last_keys.append(prev)
        return dsk, last_keys, earlies
