"""One thread count for every parallel layer: BLAS, scipy.fft workers, compiled loops.

The count starts at ``TRUECONV_NUM_THREADS`` when set, else all cores. The FFT
algorithms pass :func:`get_num_threads` as scipy.fft ``workers=``; the compiled
(Numba) loops call :func:`apply_numba_threads` before a parallel launch; BLAS is
limited through threadpoolctl when the user sets a count explicitly (by default
BLAS keeps its own setting, which is all cores for OpenBLAS).
"""

from __future__ import annotations

import functools
import operator
import os
import sys
from typing import Any

__all__ = ["get_num_threads", "set_num_threads", "apply_numba_threads", "blas_info"]

_ENV = "TRUECONV_NUM_THREADS"

_num_threads: int | None = None
# The threadpoolctl limiter of the last set_num_threads call, kept so that the
# limit stays in force (threadpool_limits applies on construction).
_blas_limiter: Any = None


def _validate(n: object, source: str) -> int:
    message = f"{source}: n must be a positive integer, got {type(n).__name__} {n!r}"
    if isinstance(n, bool) or type(n).__name__ == "bool_":
        raise TypeError(message)
    try:
        value = operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(message) from None
    if value < 1:
        raise ValueError(f"{source}: n must be a positive integer, got {value}")
    return value


def _from_env() -> int | None:
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{_ENV} must be a positive integer, got {raw!r}")
    return value


@functools.lru_cache(maxsize=1)
def _cpu_count() -> int:
    # os.cpu_count() costs about 7 us here (it reads /sys), and every call asks several times
    return os.cpu_count() or 1


def get_num_threads() -> int:
    """Return the number of threads trueconv uses.

    Returns
    -------
    int
        The count set by :func:`set_num_threads`, else ``TRUECONV_NUM_THREADS``,
        else ``os.cpu_count()``.

    Examples
    --------
    >>> import trueconv
    >>> trueconv.get_num_threads() >= 1
    True
    """
    if _num_threads is not None:
        return _num_threads
    return _from_env() or _cpu_count()


def set_num_threads(n: int) -> None:
    """Set the threads used by BLAS, scipy.fft workers and compiled loops together.

    Parameters
    ----------
    n : int
        A positive number of threads. It applies process-wide: BLAS libraries
        loaded in the process are limited through ``threadpoolctl``, FFTs run
        with ``workers=n`` and Numba loops with ``numba.set_num_threads(n)``
        (capped at Numba's own maximum).

    Raises
    ------
    TypeError
        If ``n`` is not an integer (``bool`` included).
    ValueError
        If ``n < 1``.

    See Also
    --------
    get_num_threads

    Examples
    --------
    >>> import trueconv
    >>> before = trueconv.get_num_threads()
    >>> trueconv.set_num_threads(1)
    >>> trueconv.get_num_threads()
    1
    >>> trueconv.set_num_threads(before)
    """
    global _num_threads, _blas_limiter
    value = _validate(n, "set_num_threads")
    from threadpoolctl import threadpool_limits

    # Only BLAS: OpenMP pools of other libraries (torch, opencv) are theirs to manage.
    _blas_limiter = threadpool_limits(limits=value, user_api="blas")
    _num_threads = value
    apply_numba_threads()


def apply_numba_threads(threads: int | None = None) -> int:
    """Set Numba's thread count to ``threads`` (default :func:`get_num_threads`), capped at
    Numba's maximum, if Numba is already in use; return the count set (1 without Numba).

    Numba is never imported here (it is slow to import); a compiled loop calls
    this just before its parallel launch, so the count applies to the calling
    thread (Numba's setting is thread-local). ``numba.get_thread_id()`` inside the
    launch is then below the returned count: per-thread scratch needs that many slots.
    """
    numba = sys.modules.get("numba")
    if numba is None:
        return 1
    cap = int(numba.config.NUMBA_NUM_THREADS)
    count = max(1, min(get_num_threads() if threads is None else threads, cap))
    numba.set_num_threads(count)
    return count


def blas_info() -> list[dict[str, Any]]:
    """Describe the loaded thread pools (BLAS kernel, version, threads) via threadpoolctl."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "version", "num_threads", "architecture", "filepath")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]
