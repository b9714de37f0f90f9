"""The worker threads and BLAS thread limit that the algorithms share.

The compiled loops (Winograd's drivers, forward and weight-gradient, and the
direct stencil) fork and join inside Numba (``prange`` on its OpenMP or TBB
threads, :func:`compiled_parallel`): no GIL, and threads that wait spinning
between calls. The Python-level work items (im2col's images and column chunks,
Winograd's 1-D dilation phase copies, FFT's tile runs, the direct GEMM path's
images) run on one persistent pool, the first item in the calling thread; the
BLAS users among them run each worker with a single BLAS thread: their matrix
products are small, and OpenBLAS's own threads gain little on them and stall
badly when the cores are shared.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .._memory import get_memory_limit

__all__ = ["LockedIterator", "compiled_parallel", "drain", "run_parallel", "scratch",
           "single_threaded_blas"]


class LockedIterator:
    """An iterator several worker threads can pull from."""

    def __init__(self, items: list[tuple[int, ...]]) -> None:
        self._items = iter(items)
        self._lock = threading.Lock()

    def __iter__(self) -> LockedIterator:
        return self

    def __next__(self) -> tuple[int, ...]:
        with self._lock:
            return next(self._items)


# A persistent pool: starting threads per call cost about 0.2 ms, a tenth of a small layer.
# It is rebuilt lazily after fork (a child inherits the object but not its threads).
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _reset_pool_after_fork() -> None:  # pragma: no cover - runs in forked children
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _get_pool(size: int) -> ThreadPoolExecutor:
    """The shared pool, grown to at least ``size`` threads."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            old = _pool
            _pool = ThreadPoolExecutor(size, thread_name_prefix="trueconv-worker")
            _pool_size = size
            if old is not None:
                old.shutdown(wait=False)  # its idle threads exit; running tasks finish
        return _pool


# Compiled loops launch their parallel regions through Numba's threading layer. Only a
# thread-safe layer will do (OpenMP or TBB: trueconv is called from several Python threads
# at once, e.g. by Dask); Numba's fallback "workqueue" aborts the process on concurrent
# launches, and GNU OpenMP aborts a forked child that launches after its parent did.
_COMPILED_PARALLEL: list[bool] = []
_compiled_parallel_lock = threading.Lock()
_forked_after_launch = False


def compiled_parallel() -> bool:
    """True if compiled loops may run Numba parallel regions (``prange``) in this process.

    That needs Numba with a thread-safe threading layer (``omp``: GNU OpenMP's libgomp,
    usually installed; or ``tbb``: ``pip install tbb``), and not a forked child of a
    process that started one. Otherwise the compiled loops run serially in the
    calling thread. Probed once: Numba picks its layer when it first starts its threads.

    Examples
    --------
    >>> isinstance(compiled_parallel(), bool)
    True
    """
    if _forked_after_launch:
        return False
    if not _COMPILED_PARALLEL:
        with _compiled_parallel_lock:
            if not _COMPILED_PARALLEL:
                _COMPILED_PARALLEL.append(_probe_threading_layer())
    return _COMPILED_PARALLEL[0]


def _probe_threading_layer() -> bool:
    try:
        import numba
    except ImportError:
        return False
    # Starting Numba's OpenMP threads sets the OpenMP thread count of the process to Numba's
    # (all cores): torch, sharing GNU OpenMP, ran on two threads after its user had set one
    # (found by `trueconv bench --threads 1`). The OpenMP libraries' counts are put back.
    openmp = _openmp_thread_counts()
    try:
        numba.get_thread_id()  # starts Numba's threads: selects the threading layer
        return numba.threading_layer() in ("omp", "tbb")
    except (ValueError, RuntimeError, ImportError):  # no layer could start
        return False
    finally:
        for library, threads in openmp:
            if library.get_num_threads() != threads:
                library.set_num_threads(threads)


def _library_controllers(user_api: str) -> list[Any]:
    """threadpoolctl's controllers of the loaded ``user_api`` ("blas", "openmp") libraries.

    Scanning the loaded libraries takes ~2 ms: callers keep the result.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api=user_api).lib_controllers


def _openmp_thread_counts() -> list[tuple[Any, int]]:
    """The loaded OpenMP libraries (threadpoolctl controllers) and their thread counts."""
    try:
        return [(library, library.get_num_threads())
                for library in _library_controllers("openmp")]
    except Exception:  # pragma: no cover - introspection only: never fail a call over it
        return []


def _note_fork() -> None:  # pragma: no cover - runs in forked children
    global _forked_after_launch
    _forked_after_launch = bool(_COMPILED_PARALLEL and _COMPILED_PARALLEL[0])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


_SCHED_GETCPU: Any = None


def current_cpu() -> int:
    """The CPU the calling thread runs on (libc ``sched_getcpu``), or -1 where unknown."""
    global _SCHED_GETCPU
    if _SCHED_GETCPU is None:
        try:
            import ctypes

            _SCHED_GETCPU = ctypes.CDLL(None, use_errno=True).sched_getcpu
        except (AttributeError, OSError):  # not Linux/glibc
            _SCHED_GETCPU = False
    return int(_SCHED_GETCPU()) if _SCHED_GETCPU else -1


def _leave_cpu(cpu: int) -> set[int] | None:
    """Move the calling thread off ``cpu`` if it may run elsewhere; return the old CPU mask.

    Linux wakes a pool thread on the CPU of the thread that woke it (the caller) when
    the other CPUs look idle, and moves it only after a few milliseconds: on a 2-core
    VM a 1 ms Winograd call split over two threads ran both halves on one core
    (1.3-1.5 ms, process CPU / wall time 1.0; with the threads on different CPUs
    0.9-1.0 ms, CPU / wall 1.5). Three system calls per task, a few microseconds.
    """
    if cpu < 0 or not hasattr(os, "sched_setaffinity"):
        return None
    mask = os.sched_getaffinity(0)
    if cpu not in mask or len(mask) < 2:
        return None
    os.sched_setaffinity(0, mask - {cpu})
    return mask


def _off_caller_cpu(task: Any, caller: int) -> Any:
    """``task`` wrapped to run off the caller's CPU, the thread's CPU mask restored afterwards,
    under the caller's NumPy floating-point error settings (``np.errstate`` is per thread:
    a caller's ``invalid="ignore"`` did not reach the pool threads doing its products)."""
    errors = np.geterr()

    def run() -> None:
        mask = _leave_cpu(caller)
        try:
            with np.errstate(**errors):
                task()
        finally:
            if mask is not None:
                os.sched_setaffinity(0, mask)
    return run


def drain(task: Any, workers: int) -> None:
    """Run ``task`` in this thread and in ``workers - 1`` pool threads, all draining one
    shared queue (a :class:`LockedIterator`).

    A pool task that has not started by the time this thread emptied the queue has
    nothing left to do: it is cancelled, not waited for. On a loaded machine a pool
    thread can wait milliseconds for a core; the work then simply runs here (a fixed
    split of a 1 ms call took 2-6 ms there, as :func:`run_parallel` would).
    """
    if workers <= 1:
        task()
        return
    caller = current_cpu()
    futures = [_get_pool(workers - 1).submit(_off_caller_cpu(task, caller))
               for _ in range(workers - 1)]
    try:
        task()
    finally:
        for future in futures:
            if not future.cancel():
                future.exception()  # running: wait for it before the buffers go away
    for future in futures:
        if not future.cancelled():
            future.result()


def run_parallel(tasks: list[Any]) -> None:
    """Run the callables, the first in the calling thread and the rest in the shared pool.

    The tasks never wait on one another, so calls from several threads sharing the pool
    only queue, never deadlock. The first exception is raised after all tasks finished.
    Pool tasks run off the caller's CPU (see :func:`_leave_cpu`).
    """
    if len(tasks) == 1:
        tasks[0]()
        return
    caller = current_cpu()
    pool = _get_pool(len(tasks) - 1)
    futures = [pool.submit(_off_caller_cpu(task, caller)) for task in tasks[1:]]
    try:
        tasks[0]()
    finally:
        for future in futures:
            future.exception()  # wait for every task before the buffers go away
    for future in futures:
        future.result()


_blas_lock = threading.Lock()
_blas_users = 0
_blas_libraries: list[Any] | None = None
_blas_saved: list[tuple[Any, int]] = []


def _blas_library_controllers() -> list[Any]:
    """The BLAS libraries' controllers, scanned at the first use."""
    global _blas_libraries
    if _blas_libraries is None:
        _blas_libraries = _library_controllers("blas")
    return _blas_libraries


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS single-threaded inside the block (restored afterwards, reentrant across threads).

    The transform-domain GEMMs are small (``O x C`` times ``C x tiles``); OpenBLAS's
    own threads gain little on them and stall badly when the cores are shared, so
    the parallelism is over tile blocks instead, one BLAS thread per worker. The
    libraries' own ``set_num_threads`` are called directly: a threadpoolctl
    ``limit()`` per call cost 15 us, a tenth of a small Winograd call's overhead.
    """
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = []
            for library in _blas_library_controllers():
                threads = library.get_num_threads()
                if threads != 1:
                    library.set_num_threads(1)
                    _blas_saved.append((library, threads))
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for library, threads in _blas_saved:
                    library.set_num_threads(threads)
                _blas_saved = []


# ---------------------------------------------------------------------------
# Reused scratch buffers. On this kind of (virtualized) machine a page fault costs
# 2-3 us, and glibc hands buffers of a few hundred KiB to a few MiB back to the kernel
# when they are freed (mmap threshold, heap trimming), so every call faulted them in
# again: 1,080 faults, about 2 ms, in a 1 ms Winograd call (128->128 @28, batch 1).
# Per-thread buffers, kept between calls, remove that; each stays at most
# SCRATCH_KEEP_BYTES and 1/64 of trueconv's memory limit (larger requests get a fresh
# array that is not kept), so a thread keeps a few tens of MB at most.
# ---------------------------------------------------------------------------
#: Largest scratch buffer a thread keeps between calls, per key.
SCRATCH_KEEP_BYTES = 32 * 2**20

_scratch = threading.local()


def scratch(key: str, size: int, dtype: Any, keep: int | None = None) -> Any:
    """An uninitialized 1-D array of ``size`` items, reused by this thread across calls.

    The contents are garbage and the buffer is overwritten by the next request for
    ``key`` in the same thread: use it only within one call, never return it.
    Requests over ``keep`` bytes (default :data:`SCRATCH_KEEP_BYTES`) get a fresh
    array that is not kept.

    Examples
    --------
    >>> import numpy as np
    >>> a = scratch("doc", 10, np.float32)
    >>> b = scratch("doc", 8, np.float32)
    >>> a.shape, b.shape, np.shares_memory(a, b)
    ((10,), (8,), True)
    """
    dtype = np.dtype(dtype)
    nbytes = size * dtype.itemsize
    keep = SCRATCH_KEEP_BYTES if keep is None else keep
    # what stays between calls is outside any call's workspace: a small share of the limit
    keep = min(keep, get_memory_limit() // 64)
    if nbytes > keep:
        return np.empty(size, dtype=dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    raw = buffers.get(key)
    if raw is None or raw.nbytes < nbytes:
        # a little headroom, so that slowly growing requests do not reallocate every call
        raw = buffers[key] = np.empty(min(keep, max(nbytes, nbytes * 5 // 4, 64)), dtype=np.uint8)
    return raw[:nbytes].view(dtype)
