"""FFT convolution with channel sums in the frequency domain.

Each input plane and each kernel plane is transformed once; the sum over input
channels becomes, per frequency, a complex matrix product ``(O, C) @ (C, N)``
(SciPy ``_freq_domain_conv`` generalized to channels). Dilation is served by
transforming the zero-inserted kernel, stride by subsampling the stride-1
result. Accuracy is normwise, ``|err| <= c * eps * ||x||_2 * ||w||_2`` per output
channel (EDGE_CASES.md section 3), so the planner never picks it for integers
beyond 2**50, for extended precision, or for inputs containing NaN/Inf.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import scipy.fft as sp_fft

from .._spec import ConvSpec
from .._threads import get_num_threads
from ._base import grouped, grouped_weight, zero_pad


def fft_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Transform lengths: the full linear convolution, rounded up to a fast length."""
    return tuple(
        sp_fft.next_fast_len(n + e - 1, True)
        for n, e in zip(spec.padded_shape, spec.effective_kernel_shape)
    )


def dilate_kernel(weight: np.ndarray, dilation: tuple[int, ...]) -> np.ndarray:
    """Insert ``dilation - 1`` zeros between taps of the trailing kernel axes (JAX ``_dilate``)."""
    nd = len(dilation)
    if all(d == 1 for d in dilation):
        return weight
    kernel = weight.shape[-nd:]
    dilated = np.zeros(weight.shape[:-nd] + tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation)),
                       dtype=weight.dtype)
    dilated[(Ellipsis, *(slice(None, None, d) for d in dilation))] = weight
    return dilated


class FFT:
    name: ClassVar[str] = "fft"
    exact: ClassVar[bool] = False

    def supports(self, spec: ConvSpec) -> str | None:
        if np.dtype(spec.dtype) in (np.dtype(np.longdouble), np.dtype(np.clongdouble)) and \
                np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
            return f"dtype {spec.dtype} would lose precision: scipy.fft runs in float64 at most"
        return None

    def workspace_bytes(self, spec: ConvSpec) -> int:
        shape = fft_shape(spec)
        freqs = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
        planes = spec.batch * spec.in_channels + spec.out_channels * spec.in_channels_per_group \
            + spec.batch * spec.out_channels
        complex_itemsize = 16 if spec.itemsize >= 8 else 8
        real = spec.batch * spec.out_channels * math.prod(shape)
        return planes * freqs * complex_itemsize + real * spec.itemsize

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        nd = spec.spatial_ndim
        n, g, c, o = spec.batch, spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
        integer = x.dtype.kind in "iu"
        if integer:
            x, weight = x.astype(np.float64), weight.astype(np.float64)
        is_complex = x.dtype.kind == "c" or weight.dtype.kind == "c"
        fwd, inv = (sp_fft.fftn, sp_fft.ifftn) if is_complex else (sp_fft.rfftn, sp_fft.irfftn)
        shape = fft_shape(spec)
        axes = tuple(range(-nd, 0))
        x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *S)
        # correlation = convolution with the flipped (dilated) kernel
        kernel = dilate_kernel(weight, spec.dilation)[(Ellipsis, *([slice(None, None, -1)] * nd))]
        kernel = kernel.reshape(g, o, c, *kernel.shape[2:])  # (G, O, C, *E)
        x_freq = fwd(x_padded, shape, axes=axes, workers=get_num_threads())  # (N, G, C, *F)
        w_freq = fwd(kernel, shape, axes=axes, workers=get_num_threads())  # (G, O, C, *F)
        # (N, G, O, *F) = sum_C (N, G, C, *F) * (G, O, C, *F)
        y_freq = np.einsum("ngc...,goc...->ngo...", x_freq, w_freq, optimize=True)
        y = inv(y_freq, shape, axes=axes, workers=get_num_threads())
        start = [e - 1 for e in spec.effective_kernel_shape]
        index = tuple(
            slice(b, b + (m - 1) * s + 1, s) for b, m, s in zip(start, spec.output_shape, spec.stride)
        )
        y = y[(Ellipsis, *index)].reshape(spec.full_output_shape)
        if integer:
            return np.rint(y).astype(np.int64)
        return np.ascontiguousarray(y.astype(np.result_type(x, weight), copy=False))
