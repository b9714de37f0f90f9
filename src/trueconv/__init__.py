"""trueconv: convolution AND cross-correlation for NumPy, with PyTorch and SciPy semantics.

Deep-learning style (``torch.nn.functional.conv*d`` semantics, ``kind=`` chooses
cross-correlation or true convolution): :func:`conv`, :func:`conv1d`,
:func:`conv2d`, :func:`conv3d`, :func:`plan`.

Signal-processing style (``scipy.signal`` semantics): :func:`convolve`,
:func:`correlate`, :func:`convolve2d`, :func:`correlate2d`, :func:`fftconvolve`.

Adapters ``trueconv.torch`` and ``trueconv.dask`` import lazily, only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._api import conv, conv1d, conv2d, conv3d, plan
from ._memory import get_memory_limit, memory_limit, set_memory_limit
from ._planner import Plan
from ._signal import convolve, convolve2d, correlate, correlate2d, fftconvolve
from .algorithms import ALGORITHMS

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "Plan",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "convolve",
    "convolve2d",
    "correlate",
    "correlate2d",
    "fftconvolve",
    "get_memory_limit",
    "memory_limit",
    "plan",
    "set_memory_limit",
]

_EXTRAS = {"torch": "torch", "dask": "dask"}


def __getattr__(name: str) -> Any:
    # PEP 562: the adapters need optional dependencies, so import them on first use.
    if name in _EXTRAS:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == _EXTRAS[name]:
                raise ImportError(
                    f"trueconv.{name} needs {_EXTRAS[name]}: pip install 'trueconv[{name}]'"
                ) from exc
            raise
    raise AttributeError(f"module 'trueconv' has no attribute {name!r}")
