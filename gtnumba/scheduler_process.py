"""The scheduler of a cluster gtnumba starts, in a process of its own.

In the client's process the scheduler shared the client's GIL and event loop: every step's
scheduling (the graph, the workers' task-finished messages, the releases) ran on the thread that
also sends the step's batches and reads its loss, and stalled the main thread recording the next
step.  In its own process it runs beside them.  `SchedulerProcess` is the cluster's handle on it
(a SpecCluster scheduler spec); `python -m gtnumba.scheduler_process SPEC` is the process.

The process lives exactly as long as its parent holds it: it reads its stdin, and the end of that
pipe (the handle closing it, or the parent dying, even by SIGKILL) closes the scheduler.  Ctrl-C is
the parent's to handle (a terminal sends SIGINT to the whole process group): the parent closes it.
"""
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
import warnings

from distributed.deploy.spec import ProcessInterface

START_SECONDS = 60


class SchedulerProcess(ProcessInterface):
    """Starts the scheduler process with Scheduler `options` (JSON values) and Dask `config`, and
    learns its address from the first line it prints."""

    def __init__(self, options, config, quiet=logging.CRITICAL, env=None):
        self.spec = json.dumps({"options": options, "config": config, "log_level": quiet})
        # this process's import path, as a spawned worker gets it: the same gtnumba, and the functions
        # `client.run_on_scheduler` sends by reference (a test module's) found there
        path = os.pathsep.join(os.path.abspath(p) for p in sys.path)
        self.env = {**os.environ, **(env or {}), "PYTHONPATH": path}
        self.process = None
        super().__init__()

    async def start(self):
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gtnumba.scheduler_process", self.spec, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_SECONDS)
        except asyncio.TimeoutError:
            line = None
        if line is None or not line.startswith(b"tcp://"):
            await self._stop()
            why = f"no address within {START_SECONDS} s" if line is None else \
                f"it exited with status {self.process.returncode}; its error is above"
            raise RuntimeError(f"gt.init: the Dask scheduler process did not start ({why})")
        self.address = line.decode().strip()
        await super().start()

    async def close(self):
        if self.process is not None:
            await self._stop()
        await super().close()

    async def _stop(self):
        """EOF on its stdin closes it; one that does not end within seconds is killed."""
        if self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


def main(spec):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a taken dashboard port moves to a free one, and the parent reports the link
    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    spec = json.loads(spec)
    from .cluster import _dask_loggers
    for logger in _dask_loggers():
        logger.setLevel(spec["log_level"])
    import dask
    with dask.config.set(spec["config"]):
        asyncio.run(_serve(spec["options"]))
    sys.stderr.flush()
    os._exit(0)            # the stdin reader may still block: no interpreter teardown to wait for it


def _read_to_eof():
    while os.read(0, 1 << 12):
        pass


async def _serve(options):
    from distributed import Scheduler
    from .sched.dask_scheduler import prepare
    parent_gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (_read_to_eof(), loop.call_soon_threadsafe(parent_gone.set)),
                     daemon=True).start()
    async with Scheduler(**options) as scheduler:
        prepare(scheduler)
        gc.collect()
        gc.freeze()        # its ~100 ms full collections would stall steps (see cluster._freeze_long_lived)
        print(scheduler.address, flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())     # nobody reads stdout past the address
        waits = [asyncio.ensure_future(parent_gone.wait()), asyncio.ensure_future(scheduler.finished())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()


if __name__ == "__main__":
    main(sys.argv[1])
