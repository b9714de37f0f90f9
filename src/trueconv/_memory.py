"""How much memory one call may use, and how to stay under it.

The limit bounds the *workspace* an algorithm allocates (im2col columns, FFT
buffers, Winograd tiles) and the output itself. A workspace over the limit is
split over the batch; an output over the limit is refused before allocation
(EDGE_CASES #64, #66).
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

__all__ = ["get_memory_limit", "set_memory_limit", "memory_limit", "total_memory_bytes"]

DEFAULT_FRACTION = 0.5
_limit_override: int | None = None
# ``with memory_limit(...)`` is scoped to the current thread (and asyncio task): a
# tight limit in one thread must not shrink another thread's workspace mid-call.
_scoped_limit: ContextVar[int | None] = ContextVar("trueconv_memory_limit", default=None)


@functools.lru_cache(maxsize=1)  # two sysconf calls per trueconv call showed in profiles
def total_memory_bytes() -> int:
    """Physical memory of this machine (cgroup limits are not consulted)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # non-POSIX: assume a modest machine
        return 8 * 2**30


def get_memory_limit() -> int:
    """Return the byte limit for one call's output plus workspace.

    Order: an enclosing ``with memory_limit(...)`` in this thread, then
    :func:`set_memory_limit` (process-wide), then env ``TRUECONV_MEMORY_LIMIT``
    (bytes, or with a ``K``/``M``/``G`` suffix), then half the physical memory.
    """
    scoped = _scoped_limit.get()
    if scoped is not None:
        return scoped
    if _limit_override is not None:
        return _limit_override
    # (`in` first: a missing key made os.environ.get raise and catch a KeyError, ~1 us, and a
    # call asks several times)
    env = os.environ["TRUECONV_MEMORY_LIMIT"] if "TRUECONV_MEMORY_LIMIT" in os.environ else None
    if env:
        return parse_bytes(env)
    return int(total_memory_bytes() * DEFAULT_FRACTION)


def parse_bytes(text: str) -> int:
    """Parse ``"512M"``, ``"2G"`` or a plain byte count."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"memory limit must be bytes or a number with K/M/G/T, got {text!r}") from None


def _checked_limit(limit: int | str) -> int:
    value = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    if value <= 0:
        raise ValueError(f"memory limit must be positive, got {limit!r}")
    return value


def set_memory_limit(limit: int | str | None) -> None:
    """Set the process-wide per-call memory limit in bytes (``None`` restores the default)."""
    global _limit_override
    _limit_override = None if limit is None else _checked_limit(limit)


@contextmanager
def memory_limit(limit: int | str) -> Iterator[None]:
    """Set the memory limit inside a ``with`` block, for the current thread only.

    Examples
    --------
    >>> import trueconv
    >>> with trueconv.memory_limit("64M"):
    ...     trueconv.get_memory_limit()
    67108864
    """
    token = _scoped_limit.set(_checked_limit(limit))
    try:
        yield
    finally:
        _scoped_limit.reset(token)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"
