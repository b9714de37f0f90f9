"""One thread count for every parallel layer: BLAS, scipy.fft workers, compiled loops."""

from __future__ import annotations

import os

_num_threads: int | None = None


def get_num_threads() -> int:
    """Threads trueconv uses (default: all cores)."""
    return _num_threads or os.cpu_count() or 1
