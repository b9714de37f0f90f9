"""The one interface every algorithm implements, and the helpers they share.

An algorithm receives the canonical problem only (see ``trueconv._spec``):
``x`` of shape ``(N, C, *input_shape)`` and ``weight`` of shape
``(O, C/G, *kernel_shape)``, both already in the compute dtype, the weight
already flipped for a true convolution, and ``spec.pad_widths`` zero pads to
apply. It returns the cross-correlation ``(N, O, *output_shape)`` in the
compute dtype, without bias.

Legend used in kernels and shape comments:
N batch, G groups, C input channels per group, O output channels per group,
K kernel taps (prod of kernel_shape), P output positions (prod of output_shape).
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar, Iterator, Protocol, runtime_checkable

import numpy as np

from .._padding import pad_spatial
from .._spec import ConvSpec


@runtime_checkable
class Algorithm(Protocol):
    """What the planner needs from an algorithm (NNPACK's query/compute split)."""

    name: ClassVar[str]
    #: True when results follow the direct summation bound (direct, im2col);
    #: transform algorithms (FFT, Winograd) carry a normwise bound instead.
    exact: ClassVar[bool]

    def supports(self, spec: ConvSpec) -> str | None:
        """Return None if this algorithm can serve ``spec``, else the reason it cannot."""

    def workspace_bytes(self, spec: ConvSpec) -> int:
        """Bytes allocated besides the input, weight and output."""

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        """Return the cross-correlation of ``x`` with ``weight`` as ``spec`` describes."""


def numba_kernels():  # noqa: ANN201
    """The compiled kernels module (``_kernels_numba``), or None when Numba is not installed
    (the algorithms then take their NumPy paths). Imported on first use: Numba is slow to
    import."""
    try:
        from . import _kernels_numba
    except ImportError:  # pragma: no cover - numba is a dependency, but stay usable without it
        return None
    return _kernels_numba


def zero_pad(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Apply ``spec.pad_widths`` (zeros) to the spatial axes of ``x``."""
    return pad_spatial(x, spec.pad_widths, "zeros")


def tap_offsets(spec: ConvSpec) -> Iterator[tuple[int, ...]]:
    """Kernel taps in C order, matching ``weight.reshape(..., K)``."""
    return itertools.product(*(range(k) for k in spec.kernel_shape))


def tap_view(x_padded: np.ndarray, tap: tuple[int, ...], spec: ConvSpec) -> np.ndarray:
    """The strided view of ``x_padded`` that kernel tap ``tap`` multiplies.

    ``out[..., o] += w[..., tap] * x_padded[..., o * stride + tap * dilation]``:
    this is Chainer's im2col slice, shared by the direct and im2col algorithms
    (and their adjoints).
    """
    index = tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, d, s, o in zip(tap, spec.dilation, spec.stride, spec.output_shape)
    )
    return x_padded[(Ellipsis, *index)]


def grouped(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Reshape ``(N, G*C, *S)`` to ``(N, G, C, *S)``."""
    return x.reshape(x.shape[0], spec.groups, spec.in_channels_per_group, *x.shape[2:])


def grouped_weight(weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Reshape ``(G*O, C, *K)`` to ``(G, O, C, K)``."""
    return weight.reshape(spec.groups, spec.out_channels_per_group, spec.in_channels_per_group, spec.kernel_size)


def output_positions(spec: ConvSpec) -> int:
    return math.prod(spec.output_shape)
