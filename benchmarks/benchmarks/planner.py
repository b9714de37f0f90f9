"""Planner overhead: a plan per call must stay negligible next to small convolutions."""

from __future__ import annotations

import os
import sys

import trueconv
from trueconv import _planner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._runner import main  # noqa: E402


class Plan:
    """trueconv.plan (cached) and the uncached heuristic it falls back to."""

    def setup(self) -> None:
        trueconv.plan((8, 64, 56, 56), (64, 64, 3, 3), "float32", padding=1)

    def time_plan_cached(self) -> None:
        trueconv.plan((8, 64, 56, 56), (64, 64, 3, 3), "float32", padding=1)

    def time_plan_uncached(self) -> None:
        _planner.plan_cache.cache_clear()
        _planner.candidates.cache_clear()
        trueconv.plan((8, 64, 56, 56), (64, 64, 3, 3), "float32", padding=1)


if __name__ == "__main__":
    main([Plan])
