"""The process pool of convert and demo: forkserver workers that never re-run the caller's script, use one BLAS
thread each, and exit when the process that started them dies."""
from __future__ import annotations

import multiprocessing
import os
import site
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import spawn
from pathlib import Path

from ctprep.location import STORAGE_VARIABLES, storage_environment
from ctprep.partials import process_exists

PRELOAD = ["ctprep.convert", "ctprep.demo"]  # imported once by the fork server: cheap starts, as with fork
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# forkserver where the platform has it (Linux, macOS); spawn elsewhere (Windows): never plain fork, whose children
# inherit the parent's threads and locks
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")  # what makes a child re-run the caller's __main__


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` processes for library functions (this package's, never the caller's ``__main__``).

    A plain script without an ``if __name__ == "__main__":`` guard works: the workers never re-import it
    (see ``_without_main``). Workers use one BLAS thread each, exit when this process dies, and see this process's
    object-storage credentials as they are now (``start_worker``).
    """
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":  # forked from a clean single-threaded server that imported PRELOAD once
        context.set_forkserver_preload(PRELOAD)
    with pool_environment(), ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=start_worker,
            initargs=(os.getpid(), storage_environment())) as pool:
        yield pool  # the executor starts workers lazily (in submit): the whole lifetime is covered


@contextmanager
def pool_environment() -> Iterator[None]:
    """While worker processes start (a pool's, or a Dask LocalCluster's): one BLAS thread each, this ctprep first
    on their path, and the caller's ``__main__`` not re-run in them."""
    with single_threaded_libraries(), _package_on_path(), _without_main():
        yield


# The one piece of process-wide state in ctstack, forced by multiprocessing's own module-level hook: a count of the
# open pools that hide __main__ from the children they start (see _without_main).
_main_hidden = [0]
_hidden_lock = threading.Lock()


@contextmanager
def _without_main() -> Iterator[None]:
    """While the pool lives, leave the caller's ``__main__`` out of what its workers prepare from.

    multiprocessing (spawn and forkserver alike) re-runs the main script in every child as ``__mp_main__``: an
    unguarded script then converts again inside each worker, which dies on the store lock (or, in demo, breaks
    the pool). Pool tasks are this package's functions, so the children need nothing from ``__main__``.
    The wrapper is installed by the first open pool and removed by the last.
    """
    with _hidden_lock:
        if _main_hidden[0] == 0:
            spawn.get_preparation_data = _preparation_data_without_main
        _main_hidden[0] += 1
    try:
        yield
    finally:
        with _hidden_lock:
            _main_hidden[0] -= 1
            if _main_hidden[0] == 0:
                spawn.get_preparation_data = _ORIGINAL_PREPARATION_DATA


_ORIGINAL_PREPARATION_DATA = spawn.get_preparation_data
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding this ctprep package
# An installed ctprep (site-packages) is found by every child anyway: then nothing is put in front of the path.
_FROM_SOURCE = _PACKAGE_ROOT not in {str(Path(p).resolve()) for p in (*site.getsitepackages(),
                                                                     site.getusersitepackages())}


def _preparation_data_without_main(name: str) -> dict:
    """multiprocessing's preparation data for a child, less the instruction to re-run ``__main__``, and with the
    folder this ctprep was imported from first on its path: a '' entry resolves against the folder the process
    started in, so after a chdir (a notebook, a test) a child could otherwise import another ctprep or none."""
    data = _ORIGINAL_PREPARATION_DATA(name)
    for key in _MAIN_KEYS:
        data.pop(key, None)
    if _FROM_SOURCE and "sys_path" in data:
        data["sys_path"] = [_PACKAGE_ROOT, *(p for p in data["sys_path"] if p != _PACKAGE_ROOT)]
    return data


@contextmanager
def _package_on_path() -> Iterator[None]:
    """While the pool lives, put the folder of this ctprep first on PYTHONPATH: the fork server imports PRELOAD
    before it applies the caller's sys.path (Python 3.11 ignores it), so after a chdir it would preload another
    installed ctprep, or none, and its workers would run that code. The caller's PYTHONPATH is restored."""
    saved = os.environ.get("PYTHONPATH")
    if _FROM_SOURCE:
        os.environ["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *([saved] if saved else [])])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@contextmanager
def single_threaded_libraries() -> Iterator[None]:
    """While workers start, tell their BLAS/OpenMP to use one thread each: N processes x N threads each made a
    16-core convert 7x slower than a 2-core one. Parallelism is across cases; the parent's setting is restored."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_worker(owner_pid: int, environment: dict[str, str]) -> None:
    """Worker initializer: take the caller's object-storage ``environment`` (a fork-server child inherits the
    server's, frozen when the first pool of the process started), then ``exit_with_parent``."""
    for name in [name for name in os.environ if name.startswith(STORAGE_VARIABLES)]:
        del os.environ[name]
    os.environ.update(environment)
    exit_with_parent(owner_pid)


def exit_with_parent(owner_pid: int) -> None:
    """Worker initializer: exit when the fork server or the process that made the pool (``owner_pid``) dies,
    e.g. by SIGKILL, instead of lingering with an inherited copy of the store lock; a case it was writing stays
    in .partial/ and is cleared by the next run."""
    server = os.getppid()

    def watch() -> None:
        while os.getppid() == server and _alive(owner_pid):
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything on POSIX; on Windows, where
    os.kill(pid, 0) would terminate it, the spawned worker asks multiprocessing about its parent, the owner)."""
    if os.name == "nt":
        parent = multiprocessing.parent_process()
        return parent is None or parent.is_alive()
    return process_exists(pid)
