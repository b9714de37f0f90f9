"""Compiled direct-convolution loops (Numba), imported lazily by ``direct.py``.

One rank-3 kernel serves 1-, 2- and 3-D problems: lower ranks are reshaped to
rank 3 with leading singleton spatial axes (a free view), so there is one
compiled loop per dtype instead of one per rank (ARCHITECTURE.md
anti-pattern 5).

The loop is a *row stencil*: each work item owns one output row segment
``out[n, o, od, oh, ow0:ow1]`` and adds ``w[o, c, kd, kh, kw] * x[n, c, id, ih,
ow * sw + kw * dw - pw]`` tap by tap, so the innermost loop is a unit-stride
multiply-add over the row that LLVM vectorizes, and the row segment stays in
L1 while all ``C * KD * KH * KW`` taps pass over it. This is where GEMM
formulations lose: depthwise and few-channel convolutions have no matrix
product worth the gather (OpenCV's ``filter2D`` is the same idea, hand
vectorized).

Zero padding is never materialized: taps whose input row is outside the image
are skipped and the column range is clipped, which equals adding ``0 * w``
only when ``w`` is finite. The caller therefore materializes the padding when
the weight holds NaN/Inf (``0 * inf`` is NaN in a direct sum).

Summation order per output element is fixed (channel, then kd, kh, kw) and
independent of the thread count and of the batch size, so results are bitwise
reproducible. Accumulation is in the compute dtype: int64 (exact; the engine's
overflow guard bounds every partial sum), float64, and float32 like torch and
OpenCV (float64 accumulation would halve the SIMD width). ``fastmath=False``:
no reassociation and no FMA contraction, so the result is the plain
left-to-right direct sum.

Legend: N batch, Ci/Co input/output channels (all groups), C input channels per
group, Og output channels per group, (D, H, W) input, (OD, OH, OW) output,
(KD, KH, KW) kernel, s stride, d dilation, p pad before.
"""

from __future__ import annotations

import numba
import numpy as np

from .._threads import apply_numba_threads

#: Output columns per work item: long rows (1-D signals) are split so both
#: threads get work and the accumulated segment fits L1 (4096 * 8 B = 32 KiB).
ROW_BLOCK = 4096


@numba.njit(cache=True, parallel=True, fastmath=False, nogil=True)
def _correlate3d(x, w, out, stride, dilation, pad, out_channels_per_group, block):  # pragma: no cover
    n_batch, _, in_d, in_h, in_w = x.shape
    out_ch, c_per_group, k_d, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    s_d, s_h, s_w = stride
    d_d, d_h, d_w = dilation
    p_d, p_h, p_w = pad
    n_blocks = (out_w + block - 1) // block
    items = n_batch * out_ch * out_d * out_h * n_blocks
    for item in numba.prange(items):
        # decode (n, o, od, oh, block) from the flat work item
        b = item % n_blocks
        rest = item // n_blocks
        oh = rest % out_h
        rest //= out_h
        od = rest % out_d
        rest //= out_d
        o = rest % out_ch
        n = rest // out_ch
        g = o // out_channels_per_group
        ow0 = b * block
        ow1 = min(ow0 + block, out_w)
        acc = out[n, o, od, oh]
        acc[ow0:ow1] = 0
        for c in range(c_per_group):
            ci = g * c_per_group + c
            for kd in range(k_d):
                i_d = od * s_d + kd * d_d - p_d
                if i_d < 0 or i_d >= in_d:
                    continue
                for kh in range(k_h):
                    i_h = oh * s_h + kh * d_h - p_h
                    if i_h < 0 or i_h >= in_h:
                        continue
                    row = x[n, ci, i_d, i_h]
                    for kw in range(k_w):
                        weight = w[o, c, kd, kh, kw]
                        offset = kw * d_w - p_w
                        # columns with 0 <= ow * s_w + offset < in_w, clipped to the block
                        lo = ow0
                        if offset < 0:
                            lo = max(lo, (-offset + s_w - 1) // s_w)
                        last = in_w - 1 - offset
                        if last < 0:
                            continue
                        hi = min(ow1, last // s_w + 1)
                        if hi <= lo:
                            continue
                        # Zero-based slices: LLVM then proves the indices non-negative,
                        # drops Numba's wraparound branch and vectorizes the loop.
                        segment = acc[lo:hi]
                        if s_w == 1:
                            source = row[lo + offset:hi + offset]
                            # Fixed 16-wide steps (unrolled to full SIMD vectors) and a
                            # short scalar tail: LLVM's own vectorized loop leaves up to
                            # 63 elements to a scalar remainder, which dominated short
                            # rows (a 112-wide depthwise row ran 3x slower per element).
                            m = hi - lo
                            body = m - m % 16
                            for base in range(0, body, 16):
                                for j in range(16):
                                    segment[base + j] += weight * source[base + j]
                            for i in range(body, m):
                                segment[i] += weight * source[i]
                        else:
                            source = row[lo * s_w + offset:]
                            for i in range(hi - lo):
                                segment[i] += weight * source[i * s_w]


def correlate(
    x: np.ndarray,
    weight: np.ndarray,
    out_channels_per_group: int,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pad_before: tuple[int, ...],
    output_shape: tuple[int, ...],
) -> np.ndarray:
    """Cross-correlate ``x (N, Ci, *S)`` with ``weight (Co, C, *K)`` for 1 <= rank <= 3.

    ``pad_before`` are the zero pads before each spatial axis; the pads after
    are implied by ``output_shape``. Every output element is written (each
    belongs to exactly one work item, which zeroes it first), so the output can
    start from ``np.empty``.
    """
    nd = len(output_shape)
    lift = (1,) * (3 - nd)
    x3 = np.ascontiguousarray(x).reshape(*x.shape[:2], *lift, *x.shape[2:])
    w3 = np.ascontiguousarray(weight).reshape(*weight.shape[:2], *lift, *weight.shape[2:])
    out = np.empty((x.shape[0], weight.shape[0], *lift, *output_shape), dtype=x.dtype)
    apply_numba_threads()
    _correlate3d(
        x3, w3, out,
        (*lift, *stride), (*lift, *dilation), ((0,) * (3 - nd) + tuple(pad_before)),
        out_channels_per_group, ROW_BLOCK,
    )
    return out.reshape(x.shape[0], weight.shape[0], *output_shape)
