"""Direct convolution: a compiled tiled stencil, or one small GEMM per kernel tap.

Two exact formulations of the same sum, chosen by a pure function of the spec
(:func:`uses_compiled_kernel`: never of the batch or image size, so a batch
split by the engine gives bitwise the same result):

* **Compiled stencil** (``_kernels_numba.py``, Numba): for int64, float32
  and float64 with 1 to 3 spatial dims, when channels per group are few
  (at most 8: depthwise, single-image filtering, RGB input) or the dtype is integer
  (NumPy's integer matmul has no BLAS). Each output tile stays in L1/L2
  while groups of up to 9 taps add ``w * input`` to it in vectorized passes;
  tile interiors read the input in place (small kernels, stride 1) and zero
  padding is materialized per border tile only, never for the whole input.
* **GEMM per tap** (the fallback and the many-channel path): for each tap the
  strided input view it touches is multiplied by that tap's ``(O, C)`` weight
  slice and added to the output ("shift and accumulate"). It needs no
  workspace beyond one tap's view, keeps integer arithmetic exact, and serves
  every dtype NumPy's ``matmul`` does (complex, uint64, longdouble).

Both accumulate in the compute dtype (float32 sums in float32, like torch and
OpenCV; integers in int64) and give a direct sum's NaN/Inf footprint: a NaN or
Inf in ``x`` reaches exactly the outputs whose window holds it (and an
infinite weight tap meeting zero padding gives NaN, ``0 * inf``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .._spec import ConvSpec
from .._threads import get_num_threads
from ._base import (grouped, grouped_weight, numba_kernels, output_positions, tap_offsets,
                    tap_view, zero_pad)
from ._pool import run_parallel, scratch, single_threaded_blas

__all__ = ["Direct", "uses_compiled_kernel", "COMPILED_DTYPES", "COMPILED_MAX_CHANNELS"]

#: Dtypes with a compiled loop (one Numba signature each, compiled on first use).
COMPILED_DTYPES = ("int64", "float32", "float64")
#: Floating-point calls with at most this many input channels per group use the
#: compiled loop; above it the per-tap GEMMs reuse each input row across output
#: channels at BLAS speed. Measured (float32, 1 thread, 56x56 3x3, batch 4):
#: C=4 O=16 0.53 vs 0.93 ms, C=8 O=8 0.51 vs 0.75 ms, C=8 O=32 2.2 vs 2.0 ms,
#: C=16 O=16 1.95 vs 1.84 ms (compiled vs GEMM per tap).
COMPILED_MAX_CHANNELS = 8


def uses_compiled_kernel(spec: ConvSpec) -> bool:
    """Return True when :class:`Direct` runs the compiled loop for ``spec``.

    A pure function of dtype, rank and channels per group, so the planner can
    rely on it and a batch split never changes the summation order.

    Examples
    --------
    >>> from trueconv._spec import ConvSpec
    >>> depthwise = ConvSpec(8, 32, 32, 32, (112, 112), (3, 3), (1, 1), (1, 1),
    ...                      ((1, 1), (1, 1)), "float32")
    >>> uses_compiled_kernel(depthwise)
    True
    >>> uses_compiled_kernel(depthwise.with_dtype("complex64"))
    False
    """
    if spec.dtype not in COMPILED_DTYPES or not 1 <= spec.spatial_ndim <= 3:
        return False
    if spec.dtype != "int64" and spec.in_channels_per_group > COMPILED_MAX_CHANNELS:
        return False
    return numba_kernels() is not None


class Direct:
    """The exact direct sum (see the module docstring for its two formulations)."""

    name: ClassVar[str] = "direct"
    exact: ClassVar[bool] = True

    def supports(self, spec: ConvSpec) -> str | None:
        return None

    def workspace_bytes(self, spec: ConvSpec) -> int:
        if uses_compiled_kernel(spec):
            # contiguous copies of x and weight (when given views), one tile's
            # accumulator and zero-padded window plus the int64 tap offsets per
            # thread, and the 4 KiB that place the output apart from x; never a
            # padded input
            kernels = numba_kernels()
            scratch = kernels.scratch_elements(
                spec.kernel_shape, spec.stride, spec.dilation, spec.output_shape)
            offsets = spec.in_channels_per_group * spec.kernel_size * 8
            return ((spec.batch * spec.in_channels * math.prod(spec.input_shape)
                     + spec.out_channels * spec.in_channels_per_group * spec.kernel_size
                     + get_num_threads() * scratch) * spec.itemsize
                    + get_num_threads() * offsets + kernels.OUTPUT_PLACEMENT_BYTES)
        padded = spec.batch * spec.in_channels * math.prod(spec.padded_shape)
        one_tap = spec.batch * spec.in_channels * output_positions(spec)
        return (padded + 2 * one_tap) * spec.itemsize

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        if uses_compiled_kernel(spec):
            return _run_compiled(x, weight, spec)
        return _run_gemm_per_tap(x, weight, spec)


def _run_compiled(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
    pads = tuple(before for before, _ in spec.pad_widths)
    return numba_kernels().correlate(x, weight, spec.out_channels_per_group, spec.stride,
                                      spec.dilation, pads, spec.output_shape)


def _run_gemm_per_tap(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
    n, g, o = spec.batch, spec.groups, spec.out_channels_per_group
    p = output_positions(spec)
    x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *padded)
    w = grouped_weight(weight, spec)  # (G, O, C, K)
    out = np.empty((n, g, o, p), dtype=np.result_type(x, weight))
    workers = min(get_num_threads(), n)
    if workers <= 1:
        _taps_into(out, x_padded, w, spec, 0, n)
    else:
        # Several images: whole images per thread, one BLAS thread each. OpenBLAS's own
        # threads on these thin per-tap products (O x C with C = 16 in 3-D layers) ran at
        # half the one-thread speed (3x3x3 16->16 @16x32x32 batch 2: 16.6 vs 8.9 ms).
        cuts = [n * i // workers for i in range(workers + 1)]
        with single_threaded_blas():
            run_parallel([lambda a=a, b=b: _taps_into(out, x_padded, w, spec, a, b)
                          for a, b in zip(cuts[:-1], cuts[1:])])
    return out.reshape(spec.full_output_shape)


def _taps_into(out: np.ndarray, x_padded: np.ndarray, w: np.ndarray, spec: ConvSpec,
               first: int, stop: int) -> None:
    """``out[first:stop]`` as the sum over taps of (G, O, C) @ (images, G, C, P) products."""
    n, g, c = stop - first, spec.groups, spec.in_channels_per_group
    o, p = out.shape[2], out.shape[3]
    target = out[first:stop]
    # the per-tap product goes to a reused buffer: a fresh one per tap was page-faulted in
    # every time (8 MB per tap for conv1d k=3 64->64 L=4096 batch 8)
    product = scratch("direct.tap", n * g * o * p, out.dtype).reshape(n, g, o, p)
    for k, tap in enumerate(tap_offsets(spec)):
        window = tap_view(x_padded[first:stop], tap, spec).reshape(n, g, c, p)
        # (n, G, O, P) += (G, O, C) @ (n, G, C, P)
        if k == 0:
            np.matmul(w[..., k], window, out=target)
        else:
            np.matmul(w[..., k], window, out=product)
            target += product
