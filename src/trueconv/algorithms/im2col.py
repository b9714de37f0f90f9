"""im2col + GEMM: gather every window into a column matrix, then one BLAS call.

The column matrix holds ``C * K`` rows per group and one column per output
position (Chainer ``im2col_nd_cpu``), so the whole convolution is a single
batched matrix product that OpenBLAS runs at GEMM speed. The price is the
workspace, ``N * G * C * K * P`` elements; the engine splits the batch to keep
it under the memory limit.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._spec import ConvSpec
from ._base import grouped, grouped_weight, output_positions, tap_offsets, tap_view, zero_pad


def im2col(x_padded: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Return the columns ``(N, G, C, K, P)`` of a zero-padded, grouped input ``(N, G, C, *S)``."""
    n, g, c = x_padded.shape[:3]
    p = output_positions(spec)
    cols = np.empty((n, g, c, spec.kernel_size, *spec.output_shape), dtype=x_padded.dtype)
    for k, tap in enumerate(tap_offsets(spec)):
        cols[:, :, :, k] = tap_view(x_padded, tap, spec)
    return cols.reshape(n, g, c, spec.kernel_size, p)


class Im2col:
    name: ClassVar[str] = "im2col"
    exact: ClassVar[bool] = True

    def supports(self, spec: ConvSpec) -> str | None:
        return None

    def workspace_bytes(self, spec: ConvSpec) -> int:
        cols = spec.batch * spec.in_channels * spec.kernel_size * output_positions(spec)
        padded = spec.batch * spec.in_channels * int(np.prod(spec.padded_shape))
        return (cols + padded) * spec.itemsize

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        n, g, c, o = spec.batch, spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
        p, k = output_positions(spec), spec.kernel_size
        cols = im2col(grouped(zero_pad(x, spec), spec), spec).reshape(n, g, c * k, p)
        w = grouped_weight(weight, spec).reshape(g, o, c * k)
        # (N, G, O, P) = (G, O, C*K) @ (N, G, C*K, P)
        out = np.matmul(w, cols)
        return out.reshape(spec.full_output_shape)
