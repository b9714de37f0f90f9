"""im2col + GEMM: gather the windows into a column matrix, then let BLAS multiply.

The column matrix holds ``C * K`` rows per group and one column per output
position (Chainer ``im2col_nd_cpu``); the convolution is then the product
``(G, O, C*K) @ (G, C*K, P)``, whose result is already the channels-first output,
so no transpose follows. Choices that make it fast and bounded:

* **1x1, stride 1, unpadded** convolutions are a plain GEMM on the input itself,
  ``(G, O, C) @ (N, G, C, P)``: no gather, no workspace.
* **Chunking**: the columns are built for a chunk of images, or for a band of
  output rows of one image, sized to ``COLUMN_BYTES`` (cache-sized, so the
  gather's writes are still cached when BLAS reads them) and never more than a
  quarter of :func:`trueconv.get_memory_limit`. A single huge image therefore
  never needs its whole ``C*K x P`` column matrix; :meth:`Im2col.workspace_bytes`
  reports the chunk actually allocated. Each chunk's product is written straight
  into its slice of the output (``out=``), which BLAS accepts as a strided matrix.
* **Few output positions, many taps** (the weight gradient: ``P`` is the kernel
  size, ``K`` the image): one GEMM per image would be a few columns wide, so the
  images of a chunk share one product ``(G, O, C*K) @ (G, C*K, images*P)``,
  gathered by a single strided copy of ``sliding_window_view`` (measured: the
  weight gradient of 3x3 64->64 @56 batch 8 fell from 127 ms to 55 ms).
* **Exactness**: integers stay integers (NumPy's int64 ``matmul`` is exact; the
  engine has already proven that no sum overflows), complex goes to ``zgemm``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._memory import get_memory_limit
from .._spec import ConvSpec
from ._base import grouped, grouped_weight, output_positions, tap_offsets, tap_view, zero_pad

#: Column-matrix bytes per chunk: big enough for BLAS to run at speed, small enough for L2/L3.
COLUMN_BYTES = 8 * 2**20
#: Below this many output positions per image, one GEMM per image is too thin for BLAS
#: (the weight gradient's problem has P = kernel taps, e.g. 9), so the images of a chunk
#: share one GEMM: ``(G, O, C*K) @ (G, C*K, images*P)``.
THIN_POSITIONS = 256
#: The shared-GEMM layout trades cache locality for a wider product: allow larger chunks.
THIN_COLUMN_BYTES = 64 * 2**20


def is_pointwise(spec: ConvSpec) -> bool:
    """1x1 kernel, stride 1, no padding: the convolution is a GEMM on the input as it is."""
    return spec.kernel_size == 1 and all(s == 1 for s in spec.stride) and \
        not any(lo or hi for lo, hi in spec.pad_widths)


def column_chunk(spec: ConvSpec) -> tuple[int, int]:
    """Return ``(images, rows)`` per chunk of the column matrix.

    Whole images (as many as fit ``COLUMN_BYTES``) when one image's columns fit;
    otherwise one image and a band of output rows along the first spatial axis
    (at least one row).
    """
    target = THIN_COLUMN_BYTES if output_positions(spec) < THIN_POSITIONS else COLUMN_BYTES
    budget = max(1, min(target, get_memory_limit() // 4))
    rows_total = spec.output_shape[0]
    rest = math.prod(spec.output_shape[1:])  # positions per output row
    per_row = spec.in_channels * spec.kernel_size * rest * spec.itemsize
    per_image = per_row * rows_total
    if per_image <= budget:
        return max(1, min(spec.batch, budget // max(per_image, 1))), rows_total
    return 1, max(1, min(rows_total, budget // max(per_row, 1)))


class Im2col:
    """im2col + BLAS GEMM for every dtype and parameter (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> import trueconv
    >>> x = np.arange(12).reshape(1, 1, 3, 4)
    >>> trueconv.conv(x, np.ones((1, 1, 2, 2), dtype=np.int64), algorithm="im2col")
    array([[[[10, 14, 18],
             [26, 30, 34]]]])
    """

    name: ClassVar[str] = "im2col"
    exact: ClassVar[bool] = True

    def supports(self, spec: ConvSpec) -> str | None:
        return None

    def workspace_bytes(self, spec: ConvSpec) -> int:
        if is_pointwise(spec):
            return 0
        images, rows = column_chunk(spec)
        rest = math.prod(spec.output_shape[1:])
        images = min(images, max(spec.batch, 1))
        columns = images * spec.in_channels * spec.kernel_size * rows * rest
        padded = 0
        if any(lo or hi for lo, hi in spec.pad_widths):
            padded = spec.batch * spec.in_channels * math.prod(spec.padded_shape)
        return (columns + padded) * spec.itemsize

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        # Legend (algorithms/_base.py): N batch, G groups, C in / O out channels per group,
        # K taps, P output positions, R output rows of a chunk along the first spatial axis.
        n, g = spec.batch, spec.groups
        c, o = spec.in_channels_per_group, spec.out_channels_per_group
        p, k = output_positions(spec), spec.kernel_size
        w = grouped_weight(weight, spec).reshape(g, o, c * k)
        out = np.empty((n, g, o, p), dtype=np.result_type(x, weight))
        if is_pointwise(spec):
            # (N, G, O, P) = (G, O, C) @ (N, G, C, P)
            np.matmul(w, grouped(x, spec).reshape(n, g, c, p), out=out)
            return out.reshape(spec.full_output_shape)

        x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *padded)
        images, rows = column_chunk(spec)
        if p < THIN_POSITIONS and rows == spec.output_shape[0]:
            return self._run_shared_gemm(x_padded, w, out, images, spec)
        rows_total = spec.output_shape[0]
        rest = p // rows_total  # positions per output row
        buffer = np.empty(min(images, n) * g * c * k * rows * rest, dtype=out.dtype)
        taps = list(enumerate(tap_offsets(spec)))
        for n0 in range(0, n, images):
            nb = min(images, n - n0)
            # one strided (nb, G, C, *out) view per tap
            views = [tap_view(x_padded[n0:n0 + nb], tap, spec) for _, tap in taps]
            for r0 in range(0, rows_total, rows):
                r1 = min(r0 + rows, rows_total)
                cols = buffer[: nb * g * c * k * (r1 - r0) * rest].reshape(
                    nb, g, c, k, r1 - r0, *spec.output_shape[1:])
                for kk, _ in taps:
                    cols[:, :, :, kk] = views[kk][:, :, :, r0:r1]
                # (nb, G, O, R*rest) = (G, O, C*K) @ (nb, G, C*K, R*rest), into the output slice
                np.matmul(w, cols.reshape(nb, g, c * k, (r1 - r0) * rest),
                          out=out[n0:n0 + nb, :, :, r0 * rest:r1 * rest])
        return out.reshape(spec.full_output_shape)

    @staticmethod
    def _run_shared_gemm(x_padded: np.ndarray, w: np.ndarray, out: np.ndarray, images: int,
                         spec: ConvSpec) -> np.ndarray:
        """Few output positions, many taps: the images of a chunk share one wide GEMM."""
        n, g = spec.batch, spec.groups
        c, o, k = spec.in_channels_per_group, spec.out_channels_per_group, spec.kernel_size
        p = output_positions(spec)
        nd = spec.spatial_ndim
        lead = x_padded.ndim - nd  # N, G, C
        # Every window at once as a strided view (N, G, C, *out, *kernel); NumPy's copy loop
        # then gathers them whatever the ratio of taps to positions.
        windows = sliding_window_view(x_padded, spec.effective_kernel_shape, axis=tuple(range(lead, lead + nd)))
        windows = windows[(Ellipsis, *(slice(None, None, s) for s in spec.stride),
                           *(slice(None, None, d) for d in spec.dilation))]
        # -> (G, C, *kernel, N, *out): rows C*K, columns images*P
        order = (1, 2, *range(lead + nd, lead + 2 * nd), 0, *range(lead, lead + nd))
        windows = windows.transpose(order)
        for n0 in range(0, n, images):
            nb = min(images, n - n0)
            cols = np.empty((g, c, *spec.kernel_shape, nb, *spec.output_shape), dtype=out.dtype)
            np.copyto(cols, windows[(slice(None),) * (2 + nd) + (slice(n0, n0 + nb),)])
            # (G, O, nb*P) = (G, O, C*K) @ (G, C*K, nb*P)
            product = np.matmul(w, cols.reshape(g, c * k, nb * p))
            out[n0:n0 + nb] = product.reshape(g, o, nb, p).transpose(2, 0, 1, 3)
        return out.reshape(spec.full_output_shape)
