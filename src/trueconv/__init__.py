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
from ._autotune import TrueconvCacheWarning, get_autotune, set_autotune
from ._grad import conv_grad, conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d
from ._memory import get_memory_limit, memory_limit, set_memory_limit
from ._planner import Plan
from ._signal import convolve, convolve2d, correlate, correlate2d, fftconvolve
from ._threads import get_num_threads, set_num_threads
from .algorithms import ALGORITHMS

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "Plan",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_grad",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "convolve",
    "convolve2d",
    "correlate",
    "correlate2d",
    "fftconvolve",
    "TrueconvCacheWarning",
    "get_autotune",
    "get_memory_limit",
    "get_num_threads",
    "memory_limit",
    "plan",
    "set_autotune",
    "set_memory_limit",
    "set_num_threads",
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
