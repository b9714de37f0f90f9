"""Compiled direct-convolution loops (Numba), imported lazily by ``direct.py``.

One rank-3 loop nest serves 1-, 2- and 3-D problems: lower ranks are reshaped
to rank 3 with leading singleton spatial axes (a free view), so there is one
compiled loop per dtype instead of one per rank (ARCHITECTURE.md
anti-pattern 5), and three signatures in all (int64, float32, float64).

Each work item owns one output tile, ``rows x cols`` of a plane
``out[n, o, od]``. For every input channel of its group and every depth tap it
copies the input window the tile reads into a small zero-padded buffer (so
padding is never materialized for the whole input, only per cache-resident
tile), then adds ``w[o, c, kd, kh, kw] * window`` tap by tap:

* stride 1 in H and W: the tile is computed "wide", with the buffer's row
  pitch ``P = cols + (KW - 1) * dw``, so each tap is ONE unit-stride
  multiply-add over ``rows * P`` elements at offset ``kh * dh * P + kw * dw``
  (the ``P - cols`` extra columns are dropped), and up to four taps of a
  kernel row share one pass over the accumulator. Per-row loops spent most of
  a 112-wide depthwise row in LLVM's scalar remainder (measured 2x slower).
* otherwise: one strided multiply-add per output row and tap.

This is where GEMM formulations lose: depthwise and few-channel convolutions
have no matrix product worth a gather (OpenCV's ``filter2D`` is the same idea,
hand vectorized).

Threads: the loops are ``nogil`` and serial; :func:`correlate` hands tile
ranges to a small thread pool (plus the calling thread) from a shared
counter, :func:`trueconv.get_num_threads` threads in all. Not
``parallel=True``/``prange``: the parallel wrapper doubled the first-call
compile time (measured; CI compiles from a clean clone), and a static prange
split waits for the slowest thread when another process holds a core, while a
shared counter lets whichever thread runs take the next tiles.

Padded taps add ``0 * w`` exactly as a direct sum over a zero-padded input
does, so NaN/Inf footprints match it, including ``0 * inf = NaN`` where an
infinite weight meets padding. Summation order per output element is fixed
(channel, kd, kh, kw) and independent of the thread count, the tiling and the
batch size, so results are bitwise reproducible. Accumulation is in the compute
dtype: int64 (exact; the engine's overflow guard bounds every partial sum),
float64, and float32 like torch and OpenCV (float64 accumulation would halve
the SIMD width). ``fastmath=False``: no reassociation and no FMA contraction,
so the result is the plain left-to-right direct sum.

Legend: N batch, C input channels per group, (D, H, W) input, (OD, OH, OW)
output, (KD, KH, KW) kernel, s stride, d dilation, p pad before.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .._threads import get_num_threads

#: Output columns per tile: long rows (1-D signals) are split so that both
#: threads get work and a tile's buffers stay in L1/L2.
TILE_COLS = 2048
#: Target elements per tile (rows * pitch): 32-64 KiB of accumulator (L1/L2);
#: measured a few percent faster than 4096 or 16384 on 15x15 and 1-D rows.
TILE_ELEMENTS = 8192
#: Below this many multiply-adds per thread, waking another thread costs more
#: than it saves.
MIN_MACS_PER_THREAD = 1 << 18


@numba.njit(cache=True, fastmath=False, nogil=True)
def _correlate_tiles(x, w, out, stride, dilation, pad, out_channels_per_group,
                     tile_rows, tile_cols, first, stop):  # pragma: no cover - compiled
    """Compute output tiles ``first:stop`` (flat tile indices) with one scratch allocation."""
    n_batch = x.shape[0]
    out_ch, _, _, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    row_tiles = (out_h + tile_rows - 1) // tile_rows
    col_tiles = (out_w + tile_cols - 1) // tile_cols
    # The largest tile sets the scratch sizes; an allocation per tile cost as much
    # as a 16-tap 1-D tile's arithmetic.
    max_rows, max_cols = min(tile_rows, out_h), min(tile_cols, out_w)
    pitch_max = (max_cols - 1) * stride[2] + (k_w - 1) * dilation[2] + 1
    win_rows_max = (max_rows - 1) * stride[1] + (k_h - 1) * dilation[1] + 1
    acc = np.empty(max_rows * pitch_max, dtype=out.dtype)
    # (KW - 1) * dw spare zeros: the last wide row of a dense tile reads past its end
    buf = np.zeros(win_rows_max * pitch_max + (k_w - 1) * dilation[2], dtype=x.dtype)
    for item in range(first, stop):
        _tile(x, w, out, item, row_tiles, col_tiles, out_channels_per_group,
              tile_rows, tile_cols, stride, dilation, pad, acc, buf)


@numba.njit(cache=True, fastmath=False, nogil=True)
def _tile(x, w, out, item, row_tiles, col_tiles, out_channels_per_group,
          tile_rows, tile_cols, stride, dilation, pad, acc_scratch, buf):  # pragma: no cover
    """Compute one output tile (see the module docstring)."""
    _, _, in_d, in_h, in_w = x.shape
    out_ch, c_per_group, k_d, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    s_d, s_h, s_w = stride
    d_d, d_h, d_w = dilation
    p_d, p_h, p_w = pad
    dense = s_h == 1 and s_w == 1
    # decode (n, o, od, row tile, column tile) from the flat work item
    ct = item % col_tiles
    rest = item // col_tiles
    rt = rest % row_tiles
    rest //= row_tiles
    od = rest % out_d
    rest //= out_d
    o = rest % out_ch
    n = rest // out_ch
    g = o // out_channels_per_group
    oh0 = rt * tile_rows
    ow0 = ct * tile_cols
    rows = min(tile_rows, out_h - oh0)
    cols = min(tile_cols, out_w - ow0)
    # the input window of this tile, in input coordinates (may start in padding)
    win_rows = (rows - 1) * s_h + (k_h - 1) * d_h + 1
    win_cols = (cols - 1) * s_w + (k_w - 1) * d_w + 1
    ih0 = oh0 * s_h - p_h
    iw0 = ow0 * s_w - p_w
    col_lo = min(max(0, -iw0), win_cols)  # window columns [col_lo, col_hi) hold input
    col_hi = max(col_lo, min(win_cols, in_w - iw0))
    pitch = win_cols
    acc_pitch = pitch if dense else cols
    acc = acc_scratch[:rows * acc_pitch]
    acc[:] = 0
    # an edge tile's wide rows read up to (KW - 1) * dw past its window: zero
    # them (stale values could only reach dropped columns, but keep it clean)
    buf[win_rows * pitch:win_rows * pitch + (k_w - 1) * d_w] = 0
    for c in range(c_per_group):
        ci = g * c_per_group + c
        for kd in range(k_d):
            i_d = od * s_d + kd * d_d - p_d
            # a depth slice of padding still adds 0 * w (NaN for an infinite w)
            padded_slice = i_d < 0 or i_d >= in_d
            for r in range(win_rows):
                line = buf[r * pitch:(r + 1) * pitch]
                i_h = ih0 + r
                if padded_slice or i_h < 0 or i_h >= in_h:
                    line[:] = 0
                else:
                    line[:col_lo] = 0
                    _copy(line[col_lo:col_hi], x[n, ci, i_d, i_h, iw0 + col_lo:iw0 + col_hi])
                    line[col_hi:] = 0
            for kh in range(k_h):
                if dense:
                    _dense_row_taps(acc, buf, w[o, c, kd, kh], kh * d_h * pitch, d_w, rows * pitch)
                    continue
                for kw in range(k_w):
                    weight = w[o, c, kd, kh, kw]
                    for r in range(rows):
                        source = buf[(r * s_h + kh * d_h) * pitch + kw * d_w:]
                        target = acc[r * cols:(r + 1) * cols]
                        for i in range(cols):
                            target[i] += weight * source[i * s_w]
    for r in range(rows):
        _copy(out[n, o, od, oh0 + r, ow0:ow0 + cols], acc[r * acc_pitch:r * acc_pitch + cols])


@numba.njit(cache=True, fastmath=False, nogil=True)
def _copy(target, source):  # pragma: no cover - compiled
    """``target[:] = source`` as a zero-based loop that LLVM turns into vector moves.

    Numba's slice assignment between arrays runs a generic (scalar, overlap
    checking) loop, which cost more than the taps of a 3x3 kernel.
    """
    for j in range(target.shape[0]):
        target[j] = source[j]


@numba.njit(cache=True, fastmath=False, nogil=True)
def _dense_row_taps(acc, buf, weights, base, d_w, length):  # pragma: no cover - compiled
    """``acc[i] += weights[kw] * buf[base + kw * d_w + i]`` for every kw, in kw order.

    Taps go in groups of up to four per pass over ``acc``: each element still
    receives ``a = a + w * s`` tap after tap in the same order (bitwise the
    same sums as one pass per tap), but ``acc`` is loaded and stored once per
    group instead of once per tap, which was the bottleneck of small kernels.
    """
    k_w = weights.shape[0]
    kw = 0
    while kw < k_w:
        group = min(4, k_w - kw)
        s0 = buf[base + kw * d_w:]
        w0 = weights[kw]
        if group == 1:
            for i in range(length):
                acc[i] += w0 * s0[i]
        elif group == 2:
            s1, w1 = buf[base + (kw + 1) * d_w:], weights[kw + 1]
            for i in range(length):
                a = acc[i] + w0 * s0[i]
                acc[i] = a + w1 * s1[i]
        elif group == 3:
            s1, w1 = buf[base + (kw + 1) * d_w:], weights[kw + 1]
            s2, w2 = buf[base + (kw + 2) * d_w:], weights[kw + 2]
            for i in range(length):
                a = acc[i] + w0 * s0[i]
                a = a + w1 * s1[i]
                acc[i] = a + w2 * s2[i]
        else:
            s1, w1 = buf[base + (kw + 1) * d_w:], weights[kw + 1]
            s2, w2 = buf[base + (kw + 2) * d_w:], weights[kw + 2]
            s3, w3 = buf[base + (kw + 3) * d_w:], weights[kw + 3]
            for i in range(length):
                a = acc[i] + w0 * s0[i]
                a = a + w1 * s1[i]
                a = a + w2 * s2[i]
                acc[i] = a + w3 * s3[i]
        kw += group


def tile_shape(kernel_shape: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
               output_shape: tuple[int, ...]) -> tuple[int, int]:
    """Output ``(rows, cols)`` per tile: up to TILE_COLS columns, rows to fill TILE_ELEMENTS."""
    cols = min(output_shape[-1], TILE_COLS)
    pitch = (cols - 1) * stride[-1] + (kernel_shape[-1] - 1) * dilation[-1] + 1
    out_h = output_shape[-2] if len(output_shape) > 1 else 1
    return max(1, min(out_h, TILE_ELEMENTS // pitch)), cols


def scratch_elements(kernel_shape: tuple[int, ...], stride: tuple[int, ...],
                     dilation: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """Elements of the accumulator and window buffer one task allocates (any rank 1-3)."""
    rows, cols = tile_shape(kernel_shape, stride, dilation, output_shape)
    k_h, s_h, d_h = (1, 1, 1)
    if len(kernel_shape) > 1:
        k_h, s_h, d_h = kernel_shape[-2], stride[-2], dilation[-2]
    k_w, s_w, d_w = kernel_shape[-1], stride[-1], dilation[-1]
    pitch = (cols - 1) * s_w + (k_w - 1) * d_w + 1
    window_rows = (rows - 1) * s_h + (k_h - 1) * d_h + 1
    return rows * pitch + window_rows * pitch + (k_w - 1) * d_w


def tile_count(output_shape3: tuple[int, ...], batch: int, out_channels: int,
               tile_rows: int, tile_cols: int) -> int:
    """Number of output tiles (work items) of a rank-3-lifted call."""
    out_d, out_h, out_w = output_shape3
    return batch * out_channels * out_d * -(-out_h // tile_rows) * -(-out_w // tile_cols)


class _Pool:
    """Worker threads for the nogil loops (the calling thread works too).

    Sized by :func:`get_num_threads`; replaced, never shut down, when that
    changes (a call in flight keeps its executor alive; idle workers of a
    dropped executor exit once it is garbage collected), and reset after a
    fork (a forked child has no workers).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._workers = 0

    def executor(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._workers != workers:
                self._executor = ThreadPoolExecutor(workers, thread_name_prefix="trueconv")
                self._workers = workers
            return self._executor

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._executor, self._workers = None, 0


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.reset_after_fork)


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
    are implied by ``output_shape``. Every output element is written (the
    tiles partition the output), so the output starts from ``np.empty``.
    """
    nd = len(output_shape)
    lift = (1,) * (3 - nd)
    x3 = np.ascontiguousarray(x).reshape(*x.shape[:2], *lift, *x.shape[2:])
    w3 = np.ascontiguousarray(weight).reshape(*weight.shape[:2], *lift, *weight.shape[2:])
    out = np.empty((x.shape[0], weight.shape[0], *lift, *output_shape), dtype=x.dtype)
    stride3, dilation3 = (*lift, *stride), (*lift, *dilation)
    pad3 = (0,) * (3 - nd) + tuple(pad_before)
    tile_rows, tile_cols = tile_shape(w3.shape[2:], stride3, dilation3, output_shape)
    items = tile_count(out.shape[2:], out.shape[0], out.shape[1], tile_rows, tile_cols)
    macs = out.size * w3[0].size
    threads = min(get_num_threads(), items, max(1, macs // MIN_MACS_PER_THREAD))
    args = (x3, w3, out, stride3, dilation3, pad3, out_channels_per_group, tile_rows, tile_cols)
    if threads <= 1:
        _correlate_tiles(*args, 0, items)
    else:
        # A few tasks per thread, handed out by a shared counter (next() on
        # itertools.count is atomic under the GIL): a thread that gets a core late
        # takes fewer, and the calling thread works until none are left.
        tasks = min(items, 4 * threads)
        bounds = [items * i // tasks for i in range(tasks + 1)]
        counter = itertools.count()

        def work() -> None:
            for task in iter(counter.__next__, None):
                if task >= tasks:
                    return
                _correlate_tiles(*args, bounds[task], bounds[task + 1])

        pool = _POOL.executor(max(get_num_threads() - 1, 1))
        futures = [pool.submit(work) for _ in range(threads - 1)]
        work()
        for future in futures:
            if not future.cancel():  # a worker that never started has nothing left to do
                future.result()
    return out.reshape(x.shape[0], weight.shape[0], *output_shape)
