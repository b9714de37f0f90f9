"""The algorithm registry: one module per algorithm, one line per registration.

Adding an algorithm is a new module implementing :class:`Algorithm` plus one
entry here; the API layer never changes.
"""

from __future__ import annotations

from ._base import Algorithm
from .direct import Direct
from .fft import FFT
from .im2col import Im2col
from .winograd import Winograd

ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm for algorithm in (Direct(), Im2col(), FFT(), Winograd())
}

__all__ = ["ALGORITHMS", "Algorithm"]
