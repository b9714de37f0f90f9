"""Shared fixtures; the oracles live in tests/references.py."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/references.py importable from every test module


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _fresh_winograd_layouts() -> None:
    """Winograd caches each problem's tiling; tests that patch its tiling constants
    (CHUNK_BYTES, MIN_SPLIT_TILES, ...) must not get a layout built before the patch."""
    from trueconv.algorithms import winograd

    winograd.clear_layout_cache()
