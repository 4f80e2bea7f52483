"""Where convert runs its per-case function: in this process, in a fork-server pool (``ctprep.workers``), or on a
Dask cluster (``--scheduler local:N`` or ``tcp://HOST:PORT``). Each yields results as cases finish; a worker that
dies fails its case (the pool) or has it re-run elsewhere (Dask), never the run.

Dask is an optional extra (``pip install 'ctstack[distributed]'``), imported only when a scheduler is given.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from ctprep.errors import UsageError
from ctprep.workers import pool_environment, process_pool

DASK_RETRIES = 2  # re-runs of a case whose task raised; a case whose worker died is re-run by the scheduler itself
CONNECT_TIMEOUT_S = 30  # how long to wait for the scheduler of --scheduler tcp://...
SCHEDULER_TEXT = re.compile(r"local:(?P<workers>[0-9]+)|(?P<address>(tcp|tls|ws|wss|inproc)://\S+)")
INSTALL_HINT = "pip install 'ctstack[distributed]'"

Call = tuple  # the arguments of one call of the per-case function
OnDeath = Callable[[Call], Any]  # the result of a call whose worker died (for good)


@dataclass(frozen=True)
class Scheduler:
    """A Dask scheduler to convert on: a LocalCluster of ``local_workers`` processes, or a cluster's ``address``."""

    local_workers: int | None = None  # local:N
    address: str | None = None  # tcp://HOST:8786

    @classmethod
    def parse(cls, text: str) -> "Scheduler":
        """'local:N' or 'tcp://HOST:PORT' (also tls://, ws://); UsageError otherwise."""
        match = SCHEDULER_TEXT.fullmatch(text.strip())
        if match is None or (match["workers"] is not None and int(match["workers"]) < 1):
            raise UsageError(f"--scheduler {text}: expected local:N (N >= 1 worker processes on this machine) or a "
                             "Dask scheduler address such as tcp://HOST:8786")
        if match["workers"] is not None:
            return cls(local_workers=int(match["workers"]))
        return cls(address=match["address"])

    def __str__(self) -> str:
        return f"local:{self.local_workers}" if self.address is None else self.address


@dataclass
class PoolExecutor:
    """Runs calls in this process (one worker) or in a fork-server pool of ``workers`` processes."""

    workers: int
    pool: Any = None  # the ProcessPoolExecutor while open; None for one worker

    def results(self, fn: Callable, calls: list[Call], on_death: OnDeath) -> Iterator[Any]:
        """``fn(*call)`` for every call, yielded as they finish; a call whose worker died yields ``on_death(call)``."""
        if self.pool is None:
            for call in calls:
                yield fn(*call)
            return
        pending = {self.pool.submit(fn, *call): call for call in calls}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                call = pending.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:  # killed by the OS (out of memory?): the pool is gone with it
                    yield on_death(call)


@dataclass
class DaskExecutor:
    """Runs calls as tasks of a Dask cluster, one task per call, with retries; ``workers`` counts its threads."""

    client: Any
    workers: int

    def results(self, fn: Callable, calls: list[Call], on_death: OnDeath) -> Iterator[Any]:
        """``fn(*call)`` for every call, yielded as they finish; a call that killed its workers (Dask gives up after
        ``distributed.scheduler.allowed-failures`` deaths) yields ``on_death(call)``."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        futures = {self.client.submit(fn, *call, retries=DASK_RETRIES, pure=False): call for call in calls}
        for future in as_completed(futures):
            try:
                yield future.result()
            except KilledWorker:
                yield on_death(futures[future])
            finally:
                future.release()


@contextmanager
def open_executor(workers: int, scheduler: Scheduler | None = None) -> Iterator[PoolExecutor | DaskExecutor]:
    """The executor for a run: Dask when ``scheduler`` is given, else ``workers`` local processes (1: in-process)."""
    if scheduler is not None:
        with dask_executor(scheduler) as executor:
            yield executor
    elif workers == 1:
        yield PoolExecutor(1)
    else:
        with process_pool(workers) as pool:
            yield PoolExecutor(workers, pool)


@contextmanager
def dask_executor(scheduler: Scheduler) -> Iterator[DaskExecutor]:
    """A client of the given scheduler (starting a LocalCluster of one-thread worker processes for local:N)."""
    distributed = import_distributed()
    with ExitStack() as stack:
        if scheduler.address is None:
            stack.enter_context(pool_environment())  # one BLAS thread each; workers import this ctprep
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=scheduler.local_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR))
            address = cluster.scheduler_address
        else:
            address = scheduler.address
        client = stack.enter_context(_connect(distributed, address, scheduler))
        yield DaskExecutor(client, workers=max(sum(client.nthreads().values()), 1))


def _connect(distributed, address: str, scheduler: Scheduler):
    """A Client of ``address``; UsageError in one line when no scheduler answers there."""
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as err:
        raise UsageError(f"--scheduler {scheduler}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s "
                         f"({type(err).__name__}); start one with `dask scheduler` and workers with "
                         f"`dask worker {address}`, or use --scheduler local:N") from err


def import_distributed():
    """The ``distributed`` package, or UsageError in one line saying how to install it."""
    try:
        import distributed
    except ImportError as err:
        raise UsageError(f"--scheduler needs Dask distributed, which is not installed; {INSTALL_HINT}") from err
    return distributed
