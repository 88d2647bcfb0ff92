"""The worker side of the Dask runner: a store of values per client, a peer-to-peer handler that
serves slices of them, and the task that runs one level of a step on this worker.

Dask moves a dependency's whole result, so collectives do not go through task results: each
worker keeps its parts in its store and the tasks of the next level pull exactly the slices they
need from their peers over distributed's own comm (the `gtnumba_pull` handler), concurrently,
from the worker's event loop.  The client reads values from the stores the same way.  A task's result is a
number, so the Dask dependencies that order a worker's tasks move no data.
"""
import asyncio
import collections
import ctypes
import ctypes.util
import concurrent.futures
import math
import os
import sys
import threading
import time

import numpy as np

from distributed import get_worker, rejoin, secede
from distributed.core import error_message
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import pickle, to_serialize
from distributed.utils import sync

from ..kernels import backend
from .distribute import Collective
from .mesh import Flat
from .block import run_steps
from .executor import spare
from .speculate import GO
from .spmd import concat, flat, reduce_sum

PULL_TIMEOUT = 120.0
WANTED_EVERY = 5.0               # seconds between checks that a task waiting for its go-ahead is still wanted
SECEDE_AFTER = 0.02              # seconds a task waits for its peers' pieces before it secedes
# ... and a predicted step for its go-ahead (sched.speculate): the client records the step meanwhile
GO_SECEDE_AFTER = 0.25
FREED_MEMORY = 4096              # freed keys remembered, so a late read fails at once
# a worker's event loop (peers' pulls, the client's reads) waits up to this long for the GIL while
# its task thread runs Python: at Python's 5 ms a read's reply left ~5 ms after its value was made
SWITCH_INTERVAL = 0.0005


class Store:
    """One client's values on this worker: step values, kept values and backups of peers' slices."""

    def __init__(self):
        self.values, self.refs, self.events = {}, {}, {}
        self.backups = {}                     # key -> {owner worker index: slice}
        # capped by dropping the oldest: a dict's next(iter()) after many pops from its front walks their
        # dead slots (4096 kept keys: ~10x slower than OrderedDict.popitem)
        self.freed = collections.OrderedDict()          # recently freed keys
        self.failed = collections.OrderedDict()         # failed step token (or leaf key) -> its error
        self.programs, self.steps, self.sources = {}, {}, {}
        self.called_off = collections.OrderedDict()     # tokens of predicted steps the client did not run
        self.late_frees = {}                  # go-ahead key -> keys to free when that predicted step ends
        self.finished = {}                    # worker index -> the last step that ended there, as last heard
        self.variants = {}                    # (plan uid, slots read early) -> program
        self.closed = None                    # the error of every wait once the client's store is dropped
        self.counters = {"tasks": 0, "bytes_in": 0, "backup_bytes": 0, "pull_seconds": 0.0,
                         "compute_seconds": 0.0, "backup_seconds": 0.0, "secedes": 0, "pull_rpcs": 0}

    def put(self, key, value, refs=None):
        """refs: reads left before the value is dropped (None: until the client frees it)."""
        self.put_many([(key, value, refs)])

    def put_many(self, items):
        """(key, value, refs) items, all stored before any waiter wakes: a read woken by one finds
        the others there too (waking is a syscall, which hands the loop the GIL at once, and a
        read's small riders come along only if they are stored)."""
        events = []
        for key, value, refs in items:
            self.values[key] = value
            if refs is not None:
                self.refs[key] = refs
            ev = self.events.pop(key, None)
            if ev is not None:
                events.append(ev)
        if events:       # from a task's thread, or the loop itself (a batch the client sent)
            _on_loop(events[0].set if len(events) == 1 else lambda: [ev.set() for ev in events])

    def release(self, key):
        left = self.refs.get(key)
        if left is not None:
            if left <= 1:
                self.refs.pop(key)
                value = self.values.pop(key, None)
                if value is not None:
                    spare(value)
            else:
                self.refs[key] = left - 1

    def free(self, keys):
        for key in keys:
            value = self.values.pop(key, None)
            if value is not None:
                spare(value)
            self.backups.pop(key, None)
            self.freed[key] = None
        _cap(self.freed)

    def fail_step(self, token, exc, keys=()):
        """Step `token` failed here: reads of its values (and of `keys`, the leaves it was to place
        that it had not) raise its error at once, and so fail the steps that read them in turn; a
        step that does not read them runs as usual (a pipelined kernel error surfaces at the next
        read, as in-process, and later independent steps and reads still work)."""
        for k in (token, *keys):
            self.failed.setdefault(k, exc)         # the first cause stays
        _cap(self.failed)
        self._wake_all()

    def _wake_all(self):
        events, self.events = self.events, {}
        _on_loop(lambda: [ev.set() for ev in events.values()])

    def failure(self, key):
        """The error of the failed step that was to make `key`, or None (a chain's step `c.i` fails with
        its chain `c`: dask_runner)."""
        token = key.rpartition(":")[0]
        return self.closed or self.failed.get(key) or self.failed.get(token) or self.failed.get(token.partition(".")[0])

    def close(self, exc):
        """Nothing will be stored here any more: every wait raises exc."""
        self.closed = exc
        self._wake_all()

    def get(self, key):
        """A value this worker's own step reads (made by an earlier level or step)."""
        value = self.values.get(key)
        if value is None:
            exc = self.failure(key)
            if exc is not None:
                raise exc
            raise KeyError(f"gtnumba: value {key} is not on this worker")
        return value

    async def wait_for(self, key, wanted=None):
        """`wanted`: without it the wait times out after PULL_TIMEOUT; with it, it lasts while wanted()
        says so, asked every WANTED_EVERY seconds (then Unwanted)."""
        # The event is registered before the value is looked up: `put` runs on a task's thread and
        # stores the value before it pops the event, so a put between the lookup and the wait
        # still finds the event (looked up first, a put in between would wake no one).
        while True:
            ev = self.events.setdefault(key, asyncio.Event())
            if key in self.values:
                if self.events.get(key) is ev and not ev.is_set():
                    self.events.pop(key)
                return self.values[key]
            if key in self.freed:
                raise KeyError(f"gtnumba: value {key} was freed before a peer read it")
            exc = self.failure(key)
            if exc is not None:
                raise exc
            try:
                await asyncio.wait_for(ev.wait(), PULL_TIMEOUT if wanted is None else WANTED_EVERY)
            except asyncio.TimeoutError:
                if wanted is None:
                    raise
                if not wanted():
                    raise Unwanted(key) from None


def _cap(recent):
    while len(recent) > FREED_MEMORY:
        recent.popitem(last=False)


class Unwanted(Exception):
    """The task waiting for this key was released by its client (which left)."""


def _on_loop(fn):
    """Run fn on this worker's event loop (asyncio objects are not thread-safe)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        get_worker().loop.add_callback(fn)
    else:
        fn()


_STORES = {}
_DROPPED = collections.OrderedDict()          # rid -> why its store went (its client closed or left)


def store(rid):
    st = _STORES.get(rid)
    if st is None:
        # a task of a dropped client still running finds a closed store, kept nowhere (recreated, it would
        # outlive the client with whatever the task stored last)
        st = _closed(_DROPPED[rid]) if rid in _DROPPED else _STORES.setdefault(rid, Store())
    return st


def _closed(exc):
    st = Store()
    st.closed = exc
    return st


def _piece(value, start, stop):
    value = backend.to_host(value)
    return value if start is None else value.reshape(-1)[start:stop]


def pack(arrays):
    """Many (small) arrays as one message part: Dask serializes each array of a message on its own
    (~0.1 ms apiece), so a level's dozens of parameter-sized pieces travel as one byte buffer."""
    arrays = [np.asarray(a) for a in arrays]
    meta = [(a.dtype.str, a.shape) for a in arrays]
    if len(arrays) == 1 and arrays[0].flags.c_contiguous:
        return {"meta": meta, "buf": to_serialize(arrays[0].reshape(-1).view(np.uint8))}
    # each piece copied once, into its place (a strided batch half is not copied to a contiguous one first)
    buf, at = np.empty(sum(a.nbytes for a in arrays), np.uint8), 0
    for a in arrays:
        buf[at:at + a.nbytes].view(a.dtype).reshape(a.shape)[...] = a
        at += a.nbytes
    return {"meta": meta, "buf": to_serialize(buf)}


def unpack(message):
    """The arrays of `pack` (views into the received buffer)."""
    buf, out, at = message["buf"], [], 0
    for dtype, shape in message["meta"]:
        dtype = np.dtype(dtype)
        n = math.prod(shape) * dtype.itemsize          # (np.prod: ~6 us a call)
        a = buf[at:at + n].view(dtype).reshape(shape)
        out.append(a if a.flags.writeable else a.copy())
        at += n
    return out


async def _pull(rid, items, ready=()):
    """Handler: the asked slices of this worker's values, waiting for ones not yet computed, then
    those of the values `ready` names that are computed already (`have` says which).  A value that
    cannot come (its step failed, it was freed) is an error reply, which the caller's rpc raises:
    raised here, it would also be logged on this worker as an ERROR with a traceback."""
    st = store(rid)
    out = []
    try:
        for key, start, stop, release in items:
            out.append(_piece(await st.wait_for(key), start, stop))
            if release:
                st.release(key)
    except Exception as exc:
        return error_message(exc, status="uncaught-error")
    have = [key in st.values for key in ready]
    reply = pack(out + [backend.to_host(st.values[key]) for key, h in zip(ready, have) if h])
    reply["have"], reply["finished"] = have, dict(st.finished)
    return reply


async def _put(rid, keys, data, address=None, frees=()):
    """Handler, sent without a reply (two messages fewer a step): new host data of a step, sent by the
    client straight to this worker (a batch inside the task would be pickled into the graph and pass
    through the scheduler).  Data that cannot be stored fail the step waiting for them, at once: the
    client's next read raises the cause.  `frees`: keys the step whose go-ahead is keys[-1] frees when
    it ends (a predicted step was submitted before the client dropped them)."""
    try:
        if frees:
            store(rid).late_frees[keys[-1]] = frees
        _store_batch(rid, keys, data)
    except Exception as exc:
        await _fail(rid, keys, f"gtnumba: a batch for worker {address} could not be stored: {exc!r}")


def _store_batch(rid, keys, data):
    store(rid).put_many([(key, backend.to_backend(value), None) for key, value in zip(keys, unpack(data))])


async def _fail(rid, keys, message):
    """Handler: step or values keys[0] will never be made here (the client could not send a batch;
    a step's task failed before it reached this worker): what waits for them fails."""
    store(rid).fail_step(keys[0], RuntimeError(message), keys)
    return {"ok": True}


async def _put_backup(rid, owner, keys, data):
    st = store(rid)
    for key, value in zip(keys, unpack(data)):
        st.backups.setdefault(key, {})[owner] = value
    return {"ok": True}


def keep_freed_memory():
    """glibc keeps freed blocks up to 256 MiB in the process for reuse, in one arena for all
    threads (a task thread's own arena gives its big blocks back whatever the thresholds).  Dask
    starts workers trimming at 64 KiB, which hands every parameter-sized result back to the OS, so
    each step page-faults its arrays in again (an SGD update of a 128 x 20000 weight on a worker:
    8 ms, 2.5 ms with this; the first user's step: 1,200 page faults a step, 230-290 with this).
    Set at run time: the environment is read only when a process starts."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(p, v) == 1 for p, v in ((M_TRIM_THRESHOLD, 1 << 30), (M_MMAP_THRESHOLD, 256 << 20),
                                                         (M_ARENA_MAX, 1)))
    except (OSError, AttributeError):       # not glibc: its allocator keeps its own policy
        return False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8      # glibc's mallopt parameters


class StorePlugin(WorkerPlugin):
    """Installs the handlers on every worker (also workers that join later)."""
    name = "gtnumba-store"
    # not idempotent: registering it again (another client's first step) waits until every worker has set it
    # up; an idempotent plugin registered already returns at once, while it may still be on its way to a
    # worker, and that client's first read there found no handler (a None reply)
    idempotent = False

    def setup(self, worker):
        self.worker = worker
        worker.handlers["gtnumba_pull"] = _pull
        worker.handlers["gtnumba_put_backup"] = _put_backup
        worker.handlers["gtnumba_put"] = lambda rid, keys, data, frees=(): _put(rid, keys, data, worker.address, frees)
        worker.handlers["gtnumba_fail"] = _fail
        worker.stream_handlers["gtnumba_drop_store"] = drop_store
        keep_freed_memory()
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))

    def transition(self, key, start, finish, **kwargs):
        """A step's task that failed outside run_levels (its arguments, the worker): its step
        fails in the store, so reads and peers waiting for its values raise at once."""
        if finish != "error" or not (isinstance(key, tuple) and len(key) == 4 and isinstance(key[1], str)):
            return
        ts = self.worker.state.tasks.get(key)
        exc = getattr(getattr(ts, "exception", None), "data", None)       # the pickled exception
        try:
            exc = pickle.loads(exc)
        except Exception:
            pass
        if not isinstance(exc, BaseException):
            exc = RuntimeError(f"gtnumba: task {key} failed: {getattr(ts, 'exception_text', '')}")
        for rid, st in list(_STORES.items()):
            if key[1].startswith(rid[:8] + "-"):
                st.fail_step(key[1], exc)


def store_get(rid, key, owner=None):
    """A kept value (or, with `owner`, the backup of worker `owner`'s slice) as a host array."""
    st = store(rid)
    value = st.values[key] if owner is None else st.backups[key][owner]
    return backend.to_host(value)


def drop_store(rid):
    """Also a stream handler: the scheduler sends it when the client leaves (dask_scheduler.DropStoreOnLeave)."""
    _DROPPED[rid] = RuntimeError("gtnumba: this client's values were dropped from the worker")
    _cap(_DROPPED)
    st = _STORES.pop(rid, None)
    if st is not None:          # a task still waiting in it (for a dead peer's slice) fails now
        st.close(_DROPPED[rid])


def counters(rid):
    return dict(store(rid).counters)


# ---- the program of one worker: what each level reads, pulls, computes, keeps and drops ----
class Level:
    __slots__ = ("collectives", "steps", "reads", "puts", "keeps", "drops", "backups", "segments")


class Segment:
    """Steps of a level run as one block (block.run_steps), then the values of theirs it stores."""
    __slots__ = ("steps", "outputs", "puts", "block")

    def __init__(self, steps, puts, carried):
        self.steps, self.puts, self.block = steps, puts, None
        self.outputs = [slot for slot, _ in puts] + sorted(carried)


def compile_program(plan, early=frozenset()):
    """Per level: the plan's steps and the store traffic around them (the same on every worker).
    `early`: kept slots the client reads (see _segments)."""
    uses = {}                                     # slot -> levels reading it on its own worker
    for s in plan.steps:
        for i in [s.src] if isinstance(s, Collective) else s.ins:
            uses.setdefault(i, set()).add(s.level)
    published = {s.src for s in plan.steps if isinstance(s, Collective)}
    return [_level(plan, lv, uses, published, early) for lv in range(plan.n_levels)]


def _level(plan, lv, uses, published, early):
    L, keep = Level(), set(plan.keep)
    L.collectives = [s for s in plan.steps if isinstance(s, Collective) and s.level == lv]
    L.steps = [s for s in plan.steps if not isinstance(s, Collective) and s.level == lv]
    here = {s.out for s in L.steps} | {c.out for c in L.collectives}
    L.reads = sorted(({i for s in L.steps for i in s.ins} | {c.src for c in L.collectives}) - here)
    # a value lives until it is read by every later level here and pulled once by every peer
    L.puts = []
    for slot in sorted(here):
        reads = len({u for u in uses.get(slot, ()) if u > lv}) + (plan.workers - 1 if slot in published else 0)
        if slot in keep or reads:
            L.puts.append((slot, None if slot in keep else reads))
    L.keeps = [s for s in sorted(here) if s in keep]
    L.backups = [s for s in L.keeps if isinstance(plan.layouts[s], Flat)]
    L.drops = [i for i in L.reads if i >= plan.n_leaves and i not in keep]
    L.segments = _segments(L, early)
    return L


def _segments(L, early):
    """The level as one segment or, when values the client reads (the loss, the accuracy) are
    made before the rest of the level (the backward pass, the update), two: the steps those
    values need, whose values are stored at once (the client's read returns and it records the
    next step while this worker runs the rest), then the other steps.  The first segment is
    closed under inputs, so running it first keeps the level's order valid; it has no steps when
    a collective makes the values read (the all-reduced loss of data parallel)."""
    wanted = early & ({s.out for s in L.steps} | {c.out for c in L.collectives})
    need, head = set(wanted), []
    for s in reversed(L.steps):
        if s.out in need:
            head.append(s)
            need.update(s.ins)
    if not wanted or len(head) == len(L.steps):
        return [Segment(L.steps, L.puts, ())]
    made_head = {s.out for s in head}
    tail = [s for s in L.steps if s.out not in made_head]
    made_tail = {s.out for s in tail}
    carried = {i for s in tail for i in s.ins} & made_head
    return [Segment(head[::-1], [p for p in L.puts if p[0] not in made_tail], carried),
            Segment(tail, [p for p in L.puts if p[0] in made_tail], ())]


def _key(token, slot, leafkeys):
    return leafkeys[slot] if slot in leafkeys else f"{token}:{slot}"


def _pull_plan(plan, c, w, token, leafkeys):
    """(key, start, stop, release) wanted from every peer for collective c on worker w."""
    key = _key(token, c.src, leafkeys)
    release = c.src >= plan.n_leaves and c.src not in plan.keep
    if c.kind == "reducescatter":
        start, stop = plan.layouts[c.out].offsets()[w]
        return key, start, stop, release
    return key, None, None, release


def _combine(plan, c, w, parts):
    """Worker w's part of collective c from every worker's piece (own piece included)."""
    if c.kind == "reducescatter":
        return reduce_sum([backend.to_backend(p) for p in parts])
    if c.kind == "gather":
        return concat([flat(backend.to_backend(p)) for p in parts], 0).reshape(plan.layouts[c.src].shape)
    if c.kind == "allgather":
        return concat([backend.to_backend(p) for p in parts], c.dim)
    return reduce_sum([backend.to_backend(p) for p in parts])


class _Pulls:
    """A level's pieces from its peers: from backups here, or pulled (posted maybe a level ahead)."""
    __slots__ = ("wanted", "pieces", "asked", "done")


def _post_pulls(worker, rid, peers, plan, L, w, token, leafkeys, st):
    """Ask the peers for every collective's pieces of level L at once, not waiting for them.
    A peer's whole kept slice already here as its backup (the next worker holds one: with two
    workers, each holds the other's) is not pulled again: the step's first level then gathers
    the parameters without a round trip."""
    p = _Pulls()
    p.wanted = [_pull_plan(plan, c, w, token, leafkeys) for c in L.collectives]
    others = [j for j in range(len(peers)) if j != w]
    p.pieces = {j: _backed_up(st, p.wanted, j) for j in others}      # peer -> {n: piece}; the pulls fill the rest
    p.asked = {j: ns for j in others if (ns := [n for n in range(len(p.wanted)) if n not in p.pieces[j]])}

    async def pull_all():
        calls = [worker.rpc(peers[j]).gtnumba_pull(rid=rid, items=[p.wanted[n] for n in ns])
                 for j, ns in p.asked.items()]
        return await asyncio.gather(*calls)
    p.done = asyncio.run_coroutine_threadsafe(pull_all(), worker.loop.asyncio_loop) if p.asked else None
    st.counters["pull_rpcs"] += len(p.asked)
    return p


def _collectives(worker, rid, peers, plan, L, w, token, leafkeys, env, st, posted=None):
    """Level L's collectives: its pieces from all peers (pulls `posted` ahead, or asked now), combined."""
    if not L.collectives:
        return
    p = posted or _post_pulls(worker, rid, peers, plan, L, w, token, leafkeys, st)
    replies = _waited(p.done, st) if p.done is not None else []
    for j, reply in zip(p.asked, replies):
        p.pieces[j].update(zip(p.asked[j], unpack(reply)))
        if reply["finished"].get(j) is not None:          # a peer's progress reaches the client with our replies
            st.finished[j] = reply["finished"][j]
    st.counters["bytes_in"] += sum(a.nbytes for r in p.pieces.values() for a in r.values())
    for n, (c, (key, start, stop, _)) in enumerate(zip(L.collectives, p.wanted)):
        own = st.get(key)
        own = own if start is None else flat(own)[start:stop]
        parts = [own if j == w else p.pieces[j][n] for j in range(len(peers))]
        env[c.out] = _combine(plan, c, w, parts)


def _backed_up(st, wanted, j):
    """n -> peer j's whole value for wanted[n], where its backup is in this store.  Only kept
    values have backups, and a kept value is never released by a pull."""
    out = {}
    for n, (key, start, _, release) in enumerate(wanted):
        piece = st.backups.get(key, {}).get(j) if start is None and not release else None
        if piece is not None:
            out[n] = piece
    return out


def _waiting_for_peers(worker, pull, st, secede_after=SECEDE_AFTER):
    """Run `pull` on the worker's loop and wait for it (see _waited)."""
    return _waited(asyncio.run_coroutine_threadsafe(pull(), worker.loop.asyncio_loop), st, secede_after)


def _waited(done, st, secede_after=SECEDE_AFTER):
    """The result of `done` (running on the worker's loop).  If it has not finished within
    `secede_after`, wait with this task's thread handed back to the worker (secede): on a cluster
    shared by several clients the step a peer runs now may wait for this worker in turn, and a
    thread held while waiting would deadlock them.  Seceding costs a scheduler message and two
    worker transitions, so the pulls that peers answer at once (most of them: workers run a step's
    levels in step) skip it."""
    try:
        return done.result(secede_after)
    except concurrent.futures.TimeoutError:
        st.counters["secedes"] += 1
    secede()
    try:
        return done.result()
    finally:
        rejoin()


def _backup(worker, rid, peers, w, items, st):
    """A copy of this worker's new slices on the next worker: a lost worker loses no state.
    GT_STATE_BACKUP=0 turns it off (a lost worker then loses its slices: training cannot go on)."""
    if len(peers) < 2 or not items or os.environ.get("GT_STATE_BACKUP") == "0":
        return
    nxt = peers[(w + 1) % len(peers)]
    host = [backend.to_host(v) for _, v in items]
    st.counters["backup_bytes"] += sum(a.nbytes for a in host)
    keys, data = [k for k, _ in items], pack(host)

    async def push():
        return await worker.rpc(nxt).gtnumba_put_backup(rid=rid, owner=w, keys=keys, data=data)
    sync(worker.loop, push)


class Sent:
    """Stands in a task for a leaf part that the client sends to the store itself (gtnumba_put)."""

    def __reduce__(self):
        return (_sent, ())


def _sent():
    return SENT


SENT = Sent()


def _await(worker, keys, st, secede_after=SECEDE_AFTER, wanted=None):
    """Wait until these keys are in the store (a batch the client sends straight here may arrive
    after its task; the previous step may not be done yet), or raise the error of the step that
    was to make them (Store.wait_for: `wanted`)."""
    missing = [k for k in keys if k not in st.values]
    if not missing:
        return

    async def arrive():
        for k in missing:
            await st.wait_for(k, wanted)
    _waiting_for_peers(worker, arrive, st, secede_after)


def _arrived(value, st):
    """A leaf part that came with the task: an array, or rows this worker reads itself (a failed
    read fails the step, like a failed kernel)."""
    if hasattr(value, "read"):
        t0 = time.perf_counter()
        value = value.read(st.sources)
        st.counters["read_seconds"] = st.counters.get("read_seconds", 0.0) + time.perf_counter() - t0
    return backend.to_backend(value) if isinstance(value, np.ndarray) else value


def run_levels(rid, uid, plan, carrier, order, levels, w, token, peers, leafkeys, inline, frees, early, *after):
    """A Dask task running several levels of a step in a row on worker w (the whole step: no
    scheduler hop between forward_backward and reduce_update; reads of the loss still return
    as soon as level 0 has stored it).  It never raises: whatever fails (a kernel, or anything
    before the store is reached) fails the step in the store, where reads and the steps that
    depend on it find the error at once; Dask sees a finished task.

    Steps are not Dask dependencies of each other (see dask_runner).  `order` = (previous, closes):
    this task starts when step `previous` of this client is done on this worker, and if it
    `closes` its step (runs the last level), the step is done when it ends: a client's steps never
    overlap on a worker (a step seceding while it waits for its peers frees the worker's thread).
    `plan` comes with the first step of its uid on this worker, step `carrier`; later steps wait
    for it as for a value of that step.  `after`: the task of the step's previous level (one task
    per level).  `early`: the kept slots the client reads from this worker, stored as soon as
    they are made (_segments)."""
    st, (previous, closes) = store(rid), order
    go = leafkeys.get(GO) if leafkeys else None
    try:
        if previous is not None:
            _await(get_worker(), [f"{previous}:done"], st)
            st.values.pop(f"{previous}:done")
        if token in st.called_off or go is not None and not _go_ahead(get_worker(), st, go):
            return _called_off(st, token, frees, closes)
        frees = [*frees, *st.late_frees.pop(go, ())]
        if plan is not None:
            _keep_plan(st, uid, plan, token)
        elif uid not in st.programs:
            _await(get_worker(), [f"{carrier}:plan"], st)
        posted = None
        for n, level in enumerate(levels):
            first, last = n == 0, n == len(levels) - 1
            posted = run_level(rid, uid, level, w, token, peers, leafkeys if first else None, inline if first else {},
                               frees if last else [], early, posted, None if last else levels[n + 1])
    except Exception as exc:
        _step_failed(rid, uid, plan, token, leafkeys, inline, [*frees, *st.late_frees.pop(go, ())], exc, closes)
        return -1
    if closes:
        st.put(f"{token}:done", True)
    return len(levels)


def run_chain(rid, uid, plan, carrier, previous, levels, w, chain, peers, steps, inline, frees, early):
    """The steps of a chain (speculate.Chain) in a row, each run by run_levels when its go-ahead comes,
    until one is called off.  Its steps do not close themselves: the chain is done when it ends."""
    n = 0
    for token, leafkeys in steps:
        n += 1
        if not run_levels(rid, uid, plan if n == 1 else None, carrier, (previous if n == 1 else None, False), levels,
                          w, token, peers, leafkeys, inline, frees if n == 1 else [], early):
            break
    store(rid).put(f"{chain}:done", True)
    return n


def _go_ahead(worker, st, key):
    """Whether the client ran the step it predicted (an empty go-ahead) or another (sched.speculate).
    The client may take any time to record it (an evaluation or a checkpoint between steps), so the
    wait lasts as long as the client keeps this task: released, its client left, and the step is off."""
    task = worker.active_threads.get(threading.get_ident())
    try:
        _await(worker, [key], st, GO_SECEDE_AFTER, None if task is None else lambda: _kept_by_client(worker, task))
    except Unwanted:
        return False
    return st.values.pop(key).size == 0


def _kept_by_client(worker, task):
    ts = worker.state.tasks.get(task)
    return ts is not None and ts.state != "cancelled"


def _called_off(st, token, frees, closes):
    """A predicted step the client did not run: its tasks end having run nothing."""
    st.called_off[token] = None
    _cap(st.called_off)
    st.free(frees)
    if closes:
        st.put(f"{token}:done", True)
    return 0


def _keep_plan(st, uid, plan, token):
    if uid not in st.programs:
        st.programs[uid] = (plan, compile_program(plan))
        st.put(f"{token}:plan", uid)


def _step_failed(rid, uid, plan, token, leafkeys, inline, frees, exc, closes):
    st = store(rid)
    if plan is not None:
        _keep_plan(st, uid, plan, token)     # later steps of this plan do not carry it
    placed = [leafkeys[slot] for slot in inline if leafkeys[slot] not in st.values] if leafkeys else []
    if closes:                               # first: fail_step wakes the next step, which must not fail
        st.put(f"{token}:done", True)
    st.fail_step(token, exc, placed)
    st.steps.pop(token, None)
    st.free(frees)


def run_level(rid, uid, level, w, token, peers, leafkeys, inline, frees, early, posted=None, after=None):
    """Level `level` of step `token` on worker w, its pulls `posted` by the level before.  When this
    task runs level `after` next, that level's pulls are posted before this level computes: each
    peer answers as soon as it has stored its piece (the partial embedding output, made at the end
    of level 0), not a round trip after this worker is done.  Returns them."""
    worker = get_worker()
    st = store(rid)
    plan, program = _program(st, uid, early)
    L = program[level]
    if level == 0:
        for slot, value in inline.items():
            if value is not SENT:
                st.put(leafkeys[slot], _arrived(value, st))
        _await(worker, [k for slot, k in leafkeys.items() if slot != GO], st)
        st.steps[token] = leafkeys
    leafkeys = st.steps[token]
    st.counters["tasks"] += 1
    t0 = time.perf_counter()
    env = {}
    _collectives(worker, rid, peers, plan, L, w, token, leafkeys, env, st, posted)
    t1 = time.perf_counter()
    nxt = program[after] if after is not None else None
    ahead = _post_pulls(worker, rid, peers, plan, nxt, w, token, leafkeys, st) if nxt and nxt.collectives else None
    for i in L.reads:
        env[i] = st.get(_key(token, i, leafkeys))
    for seg in L.segments:
        if seg.steps:
            run_steps(seg, plan, seg.steps, seg.outputs, w, env)
        st.put_many([(f"{token}:{slot}", env[slot], refs) for slot, refs in seg.puts])
    for i in L.drops:
        st.release(_key(token, i, leafkeys))
    t2 = time.perf_counter()
    _backup(worker, rid, peers, w, [(f"{token}:{s}", env[s]) for s in L.backups], st)
    c = st.counters
    c["pull_seconds"] += t1 - t0
    c["compute_seconds"] += t2 - t1
    c["backup_seconds"] += time.perf_counter() - t2
    if level == plan.n_levels - 1:
        st.steps.pop(token, None)
        st.free(frees)
        st.finished[w] = token
    return ahead


def _program(st, uid, early):
    """The plan and its program for the slots the client reads early (a variant per set)."""
    plan, program = st.programs[uid]
    if not early:
        return plan, program
    variant = st.variants.get((uid, early))
    if variant is None:
        variant = st.variants[(uid, early)] = compile_program(plan, early)
    return plan, variant
