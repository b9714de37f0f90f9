"""Compiled direct-convolution loops (Numba), imported lazily by ``direct.py``.

One rank-3 loop nest serves 1-, 2- and 3-D problems: lower ranks are reshaped
to rank 3 with leading singleton spatial axes (a free view), so there is one
compiled loop per dtype instead of one per rank (ARCHITECTURE.md
anti-pattern 5), and three signatures in all (int64, float32, float64).

Each work item owns one output tile, ``rows x cols`` of a plane
``out[n, o, od]``. Every output element is the sum over its taps, in the
order (channel, kd, kh, kw), of ``w * x`` (``w * 0`` where the tap reads
padding), and every tap of every group of taps is one vectorized pass
``target[i] = target[i] + w * source[offset + i]`` (:func:`_taps`: up to 9
taps per pass, the first pass starting from zero instead of loading). Three
ways to present ``source``:

* **in place** (stride 1 in H and W, kernels of at most IN_PLACE_MAX_TAPS
  taps per plane, up to 7x7, or 1-D): the rows and columns of the tile
  whose taps all read input (no padding) are computed straight from ``x``
  into ``out``.
  When input and output rows have the same length ('same' padding), a band
  of rows is ONE flat run: output ``(r, j)`` reads ``x`` at a constant
  offset per tap from its own flat index. The run crosses the band's border
  columns, where those offsets wrap to the neighbouring row: every read is
  still inside the input plane, and :func:`_border_columns` then overwrites
  those few columns with their true sums (the strip's window copied
  transposed, so that a column is a vectorized run down the rows). The
  tile's top and bottom rows that read padding are computed in place too
  when every weight is finite, one run per row over the taps that read
  input (a skipped padded tap would have added ``w * 0 = +-0`` to a sum that
  is never -0: bitwise the same), plus a few scalar border sums; with an
  infinite weight (``0 * inf = NaN`` must appear) they go through the window
  copy below. No copy of the input, no accumulator scratch, no write-back:
  3x3 to 7x7 images, depthwise layers and 1-D signals ran 1.1-1.8x faster
  than through the window copy. (The output is placed 2 KiB from the input modulo
  4 KiB, :func:`_empty_apart`, or every store would falsely alias the next
  loads.)
* **window copy** (the rest with stride 1): the input window the tile reads
  is copied into a zero-padded buffer (padding is materialized per
  cache-resident tile, never for the whole input) and the tile is computed
  "wide", with the buffer's row pitch ``P = cols + (KW - 1) * dw``: tap
  ``(kh, kw)`` is the offset ``kh * dh * P + kw * dw``, so a channel's taps
  are one flat run over ``rows * P`` elements (the ``P - cols`` extra columns
  are dropped when the tile is copied out). Larger kernels (9x9 and up) stay
  here: their windows span many input rows, and input rows whose length is a
  multiple of 4 KiB made the in-place runs slower (15x15: 25%).
* **strided** (stride > 1 in H or W): one strided multiply-add per output row
  and tap over the window copy.

This is where GEMM formulations lose: depthwise and few-channel convolutions
have no matrix product worth a gather (OpenCV's ``filter2D`` is the same idea,
hand vectorized).

Threads: the loops are ``nogil`` and serial; :func:`correlate` runs tile ranges
in one Numba parallel launch (:func:`_correlate_parallel`, ``prange`` with
chunk size 1: a thread that gets its core late takes fewer ranges),
:func:`trueconv.get_num_threads` threads in all, where the threading layer is
thread-safe (:func:`trueconv.algorithms._pool.compiled_parallel`; serially
otherwise). The wrapper is tiny: the tile loops compile once, serially, and
the wrapper calls them.

Padded taps add ``0 * w`` exactly as a direct sum over a zero-padded input
does (or are skipped where that is bitwise the same: finite weights), so
NaN/Inf footprints match it, including ``0 * inf = NaN`` where an infinite
weight meets padding. Summation order per output element is fixed
(channel, kd, kh, kw), starting from zero, in every path, so results are
bitwise reproducible whatever the thread count, the tiling, the batch size
and the path that computed an element. Accumulation is in the compute
dtype: int64 (exact; the engine's overflow guard bounds every partial sum),
float64, and float32 like torch and OpenCV (float64 accumulation would halve
the SIMD width). ``fastmath=False``: no reassociation and no FMA contraction,
so the result is the plain left-to-right direct sum.

Legend: N batch, C input channels per group, (D, H, W) input, (OD, OH, OW)
output, (KD, KH, KW) kernel, s stride, d dilation, p pad before.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._threads import apply_numba_threads, get_num_threads
from ._pool import compiled_parallel

#: Output columns per tile: long rows (1-D signals) are split so that both
#: threads get work and a tile's buffers stay in L1/L2.
TILE_COLS = 2048
#: Target output elements per tile (rows * pitch). Window-copy tiles keep
#: their accumulator and window (128 KiB each in float32) in L2; in-place tiles
#: have neither, and larger tiles only save per-tile border work. Measured
#: against 8192 (1 thread, float32 unless noted): depthwise 3x3 @112 160 -> 138
#: us (whole planes), 1024x1024 3x3 300 -> 248 us, 7x7 float64 through the
#: window copy 3.1 -> 2.7 ms, 15x15 5.7 -> 5.5 ms; strided calls unchanged.
TILE_ELEMENTS = 32768
#: Below this many multiply-adds per thread (about 20 us of one core) a second thread
#: does not pay for its launch. Measured through Numba's parallel launch (2-core VM, 2
#: threads, blocks of 7 calls after an idle pause): depthwise 3x3 C=32 @112 batch 1
#: (3.6M multiply-adds) 0.22 ms with the split, 0.30 ms without; a 3x3 filter on a
#: 1024x1024 float64 image (9.4M) 0.72 vs 1.21 ms. Through the Python worker pool the
#: split had lost below 8M (a pool thread took 0.1-0.9 ms to wake).
MIN_MACS_PER_THREAD = 1 << 19
#: Kernel planes of at most this many taps (and every 1-D kernel) compute tile
#: interiors in place from the input; larger ones through the window copy, whose
#: row pitch is not a multiple of 4 KiB (measured, 1 thread, 1024x1024: 3x3 20%
#: faster in place, 7x7 float32 1.34 -> 1.25 ms and float64 even, 15x15 25%
#: slower: its 15 row streams, 4 KiB apart, overflow an L1 set).
IN_PLACE_MAX_TAPS = 49
#: Extra bytes allocated with each output to place it apart from the input.
OUTPUT_PLACEMENT_BYTES = 4096


@numba.njit(cache=True, fastmath=False, nogil=True)
def _correlate_tiles(x, w, out, stride, dilation, pad, out_channels_per_group,
                     tile_rows, tile_cols, in_place_kernel, skip_padding, first,
                     stop):  # pragma: no cover - compiled
    """Compute output tiles ``first:stop`` (flat tile indices).

    ``in_place_kernel`` (:func:`in_place_eligible`) lets tile interiors read the
    input in place; ``skip_padding`` (all weights finite) lets the rows above
    and below them do so too, skipping the taps that read padding. The
    scratch (accumulator and window buffer) is allocated for the largest
    window-copy call met and grown only when a larger one comes: an
    allocation per tile cost as much as a 16-tap 1-D tile's arithmetic, and
    sizing it for a whole tile when only its border rows are copied cost a
    32-128 KiB fill per call.

    The per-tile logic is written inline rather than as a compiled helper:
    Numba re-optimizes every callee's loops inside each caller that inlines
    them, and one more level cost seconds of first-call compile time per dtype.
    """
    out_ch, c_per_group, k_d, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    row_tiles = (out_h + tile_rows - 1) // tile_rows
    col_tiles = (out_w + tile_cols - 1) // tile_cols
    acc = np.empty(0, dtype=out.dtype)
    buf = np.empty(0, dtype=x.dtype)
    offsets = np.empty(c_per_group * k_d * k_h * k_w, dtype=np.int64)
    weights = np.empty(c_per_group * k_d * k_h * k_w, dtype=w.dtype)  # the taps of one run
    # a zero of the compute dtype (a literal 0 would promote float32 sums to float64)
    zero = np.zeros(1, dtype=out.dtype)[0]
    _, in_c, in_d, in_h, in_w = x.shape
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    s_d, s_h, s_w = stride
    d_d, d_h, d_w = dilation
    p_d, p_h, p_w = pad
    for item in range(first, stop):
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
        # rows [band_lo, band_hi), columns [c0, c1) of the tile read no padding: in place
        band_lo = band_hi = oh0 + rows
        c0 = c1 = ow0
        in_place = in_place_kernel
        for kd in range(k_d):
            i_d = od * s_d + kd * d_d - p_d
            in_place = in_place and 0 <= i_d < in_d
        if in_place:
            r_lo = min(p_h, out_h)
            r_hi = max(r_lo, min(out_h, in_h - (k_h - 1) * d_h + p_h))
            j_lo = min(p_w, out_w)
            j_hi = max(j_lo, min(out_w, in_w - (k_w - 1) * d_w + p_w))
            a, b = max(oh0, r_lo), min(oh0 + rows, r_hi)
            c0, c1 = max(ow0, j_lo), min(ow0 + cols, j_hi)
            if a < b and c0 < c1:
                band_lo, band_hi = a, b
        # With finite weights the rows above and below the band are computed in place
        # too, their padded taps skipped: a padded tap adds w * 0 = +-0, and a sum that
        # starts from +0 is never -0 (round to nearest), so adding +-0 never changes it
        # (bitwise the sum over the zero-padded input). An infinite weight meeting
        # padding must give NaN: then those rows take the window copy below.
        rows_in_place = skip_padding and in_place and c1 > c0
        r = oh0 if rows_in_place else band_lo
        r_end = oh0 + rows if rows_in_place else band_hi
        while r < r_end:
            in_band = band_lo <= r < band_hi
            whole = in_band and out_w == in_w and cols == out_w
            # Tap t of output (r', j) reads the flat input at offsets[t] + (r' - r) * in_w
            # + (j - c0): with equal row pitches, ONE flat run from (r, c0) to
            # (band_hi - 1, c1). The border columns it crosses read the neighbouring row
            # (every read stays in the input plane: rows band_lo - ph to
            # band_hi - 1 + (KH - 1) * dh - ph) and are overwritten below.
            t = np.int64(0)  # (not a literal 0: Numba would compile _taps for Literal[int](0))
            for c in range(c_per_group):
                ci = g * c_per_group + c
                for kd in range(k_d):
                    i_d = od * s_d + kd * d_d - p_d
                    for kh in range(k_h):
                        i_h = r + kh * d_h - p_h
                        if 0 <= i_h < in_h:  # always, in the band
                            row = ((n * in_c + ci) * in_d + i_d) * in_h + i_h
                            for kw in range(k_w):
                                offsets[t] = row * in_w + c0 + kw * d_w - p_w
                                weights[t] = w[o, c, kd, kh, kw]
                                t += 1
            start = (((n * out_ch + o) * out_d + od) * out_h + r) * out_w + c0
            length = ((band_hi - band_lo - 1) * out_w if whole else 0) + c1 - c0
            # (non-literal arguments: one compiled signature)
            _taps(flat_out[start:start + length], flat_x, offsets, weights, t, t >= 0, zero)
            if not in_band:
                # the row's border columns: a few scalar sums over the taps that read input
                # (not for the band's border columns: scalar sums there made a depthwise
                # 3x3 layer @112 2.5x slower than the transposed strips below)
                for jj in range(cols - (c1 - c0)):
                    j = ow0 + jj if ow0 + jj < c0 else c1 + jj - (c0 - ow0)
                    value = zero
                    for c in range(c_per_group):
                        ci = g * c_per_group + c
                        for kd in range(k_d):
                            i_d = od * s_d + kd * d_d - p_d
                            for kh in range(k_h):
                                i_h = r + kh * d_h - p_h
                                if 0 <= i_h < in_h:
                                    for kw in range(k_w):
                                        i_w = j + kw * d_w - p_w
                                        if 0 <= i_w < in_w:
                                            value = value + w[o, c, kd, kh, kw] * x[n, ci, i_d,
                                                                                    i_h, i_w]
                    out[n, o, od, r, j] = value
            r = band_hi if whole else r + 1
        if band_hi > band_lo:
            for part in range(2):
                j0, j1 = (ow0, c0) if part == 0 else (c1, ow0 + cols)
                if j1 > j0:
                    need_buf = (band_hi - band_lo + (k_h - 1) * d_h) * (j1 - j0 + (k_w - 1) * d_w)
                    if acc.shape[0] < band_hi - band_lo or buf.shape[0] < need_buf:
                        acc = np.empty(max(acc.shape[0], band_hi - band_lo), dtype=out.dtype)
                        buf = np.empty(max(buf.shape[0], need_buf), dtype=x.dtype)
                    _border_columns(x, w, out, n, o, od, band_lo, band_hi, j0, j1,
                                    out_channels_per_group, stride, dilation, pad, acc, buf,
                                    zero)
        if rows_in_place:
            continue
        # the rows above and below the band through the window copy (one call site:
        # each is another inlined copy of its loops for LLVM, first-call compile time)
        for part in range(2):
            r0, r1 = (oh0, band_lo) if part == 0 else (band_hi, oh0 + rows)
            if r1 > r0:
                pitch = (cols - 1) * s_w + (k_w - 1) * d_w + 1
                # (KW - 1) * dw spare elements: the last wide row of a dense tile reads past
                # its window (_tile_buffered zeroes them)
                need_buf = ((r1 - r0 - 1) * s_h + (k_h - 1) * d_h + 1) * pitch + (k_w - 1) * d_w
                if acc.shape[0] < (r1 - r0) * pitch or buf.shape[0] < need_buf:
                    acc = np.empty(max(acc.shape[0], (r1 - r0) * pitch), dtype=out.dtype)
                    buf = np.empty(max(buf.shape[0], need_buf), dtype=x.dtype)
                _tile_buffered(x, w, out, n, o, od, r0, r1 - r0, ow0, cols,
                               out_channels_per_group, stride, dilation, pad, acc, buf,
                               offsets, zero)


@numba.njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _correlate_parallel(x, w, out, stride, dilation, pad, out_channels_per_group, tile_rows,
                        tile_cols, in_place_kernel, skip_padding,
                        bounds):  # pragma: no cover - compiled
    """:func:`_correlate_tiles` over the tile ranges ``bounds[i]:bounds[i + 1]`` in parallel."""
    for i in numba.prange(bounds.size - 1):
        _correlate_tiles(x, w, out, stride, dilation, pad, out_channels_per_group, tile_rows,
                         tile_cols, in_place_kernel, skip_padding, bounds[i], bounds[i + 1])


@numba.njit(cache=True, fastmath=False, nogil=True)
def _border_columns(x, w, out, n, o, od, r0, r1, j0, j1, out_channels_per_group, stride,
                    dilation, pad, acc, buf, zero):  # pragma: no cover - compiled
    """Output columns ``j0:j1`` of rows ``r0:r1`` whose rows and depth slices read no padding.

    Stride 1 in H and W. The window of the strip is copied TRANSPOSED into
    ``buf``: window column ``q`` becomes the contiguous run
    ``buf[q * win:(q + 1) * win]`` (zeros where it lies in the padding).
    Output column ``j0 + jj`` over the rows is then a vectorized pass per
    tap ``(kh, kw)`` from offset ``(jj + kw * dw) * win + kh * dh`` (a scalar
    pass per tap down the strided column was slower, and so was a window
    copy per strip).
    """
    _, in_c, in_d, in_h, in_w = x.shape
    out_ch, c_per_group, k_d, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    d_d, d_h, d_w = dilation
    p_d, p_h, p_w = pad
    g = o // out_channels_per_group
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    rows = r1 - r0
    win = rows + (k_h - 1) * d_h
    width = j1 - j0 + (k_w - 1) * d_w
    column = acc[:rows]
    for j in range(j0, j1):
        for c in range(c_per_group):
            ci = g * c_per_group + c
            for kd in range(k_d):
                if j == j0 or c_per_group * k_d > 1:  # one slice: the copy serves every column
                    i_d = od * stride[0] + kd * d_d - p_d
                    plane = ((n * in_c + ci) * in_d + i_d) * in_h + r0 - p_h
                    for q in range(width):
                        i_w = j0 - p_w + q
                        if 0 <= i_w < in_w:
                            for r in range(win):
                                buf[q * win + r] = flat_x[(plane + r) * in_w + i_w]
                        else:
                            for r in range(win):
                                buf[q * win + r] = 0
                # one pass per tap (not _taps: another inlined copy of its loops would
                # cost more first-call compile time than the few border columns gain)
                for kh in range(k_h):
                    for kw in range(k_w):
                        weight = w[o, c, kd, kh, kw]
                        source = buf[(j - j0 + kw * d_w) * win + kh * d_h:]
                        if c == 0 and kd == 0 and kh == 0 and kw == 0:
                            for r in range(rows):
                                column[r] = zero + weight * source[r]
                        else:
                            for r in range(rows):
                                column[r] = column[r] + weight * source[r]
        start = (((n * out_ch + o) * out_d + od) * out_h + r0) * out_w + j
        for r in range(rows):
            flat_out[start + r * out_w] = column[r]


@numba.njit(cache=True, fastmath=False, nogil=True)
def _taps(target, source, offsets, weights, taps, first, zero):  # pragma: no cover - compiled
    """``target[i] (+)= sum_t weights[t] * source[offsets[t] + i]``, t in order.

    From ``zero`` when ``first``, else onto ``target``. Taps go in groups of
    9 or 8, then 4, 2 and 1 per pass over ``target``: each element still
    receives ``a = a + w * s`` tap after tap in the same order (bitwise the
    same sums as one pass per tap), but ``target`` is loaded and stored once
    per group, and not loaded at all by a first group of 8 or 9. Nine source
    streams still vectorize (LLVM's runtime alias checks, one per stream), so a
    3x3 kernel is one pass and 5x5 / 7x7 / 15x15 take 3 / 6 / 25.

    The first group has loops of its own rather than ``zero if first else
    target[i]`` inside the loop: that select compiled to a masked load per
    vector and made the 8-tap pass 2.1x slower (float32, measured). A short
    first group (fewer than 8 taps) zero-fills ``target`` instead, which gives
    bitwise the same ``zero + w * s``. (One function, not one per group size:
    every compiled function costs first-call compile time.)
    """
    size = target.shape[0]
    t = 0
    if first and taps < 8:
        for i in range(size):
            target[i] = zero
        first = False
    while t < taps:
        left = taps - t
        s0, w0 = source[offsets[t]:], weights[t]
        if left >= 8:
            s1, s2, s3 = source[offsets[t + 1]:], source[offsets[t + 2]:], source[offsets[t + 3]:]
            s4, s5, s6 = source[offsets[t + 4]:], source[offsets[t + 5]:], source[offsets[t + 6]:]
            s7 = source[offsets[t + 7]:]
            w1, w2, w3, w4 = weights[t + 1], weights[t + 2], weights[t + 3], weights[t + 4]
            w5, w6, w7 = weights[t + 5], weights[t + 6], weights[t + 7]
            # nine taps when that leaves fewer passes (3x3, 5x5, 7x7, 15x15), else eight
            if left >= 9 and (left % 9 == 0 or left % 8 != 0):
                s8, w8 = source[offsets[t + 8]:], weights[t + 8]
                if first and t == 0:
                    for i in range(size):
                        a = zero + w0 * s0[i]
                        a = a + w1 * s1[i]
                        a = a + w2 * s2[i]
                        a = a + w3 * s3[i]
                        a = a + w4 * s4[i]
                        a = a + w5 * s5[i]
                        a = a + w6 * s6[i]
                        a = a + w7 * s7[i]
                        target[i] = a + w8 * s8[i]
                else:
                    for i in range(size):
                        a = target[i] + w0 * s0[i]
                        a = a + w1 * s1[i]
                        a = a + w2 * s2[i]
                        a = a + w3 * s3[i]
                        a = a + w4 * s4[i]
                        a = a + w5 * s5[i]
                        a = a + w6 * s6[i]
                        a = a + w7 * s7[i]
                        target[i] = a + w8 * s8[i]
                t += 9
            elif first and t == 0:
                for i in range(size):
                    a = zero + w0 * s0[i]
                    a = a + w1 * s1[i]
                    a = a + w2 * s2[i]
                    a = a + w3 * s3[i]
                    a = a + w4 * s4[i]
                    a = a + w5 * s5[i]
                    a = a + w6 * s6[i]
                    target[i] = a + w7 * s7[i]
                t += 8
            else:
                for i in range(size):
                    a = target[i] + w0 * s0[i]
                    a = a + w1 * s1[i]
                    a = a + w2 * s2[i]
                    a = a + w3 * s3[i]
                    a = a + w4 * s4[i]
                    a = a + w5 * s5[i]
                    a = a + w6 * s6[i]
                    target[i] = a + w7 * s7[i]
                t += 8
        elif left >= 4:
            s1, s2, s3 = source[offsets[t + 1]:], source[offsets[t + 2]:], source[offsets[t + 3]:]
            w1, w2, w3 = weights[t + 1], weights[t + 2], weights[t + 3]
            for i in range(size):
                a = target[i] + w0 * s0[i]
                a = a + w1 * s1[i]
                a = a + w2 * s2[i]
                target[i] = a + w3 * s3[i]
            t += 4
        elif left >= 2:
            s1, w1 = source[offsets[t + 1]:], weights[t + 1]
            for i in range(size):
                target[i] = (target[i] + w0 * s0[i]) + w1 * s1[i]
            t += 2
        else:
            for i in range(size):
                target[i] = target[i] + w0 * s0[i]
            t += 1


@numba.njit(cache=True, fastmath=False, nogil=True)
def _tile_buffered(x, w, out, n, o, od, oh0, rows, ow0, cols, out_channels_per_group, stride,
                   dilation, pad, acc_scratch, buf, offsets, zero):  # pragma: no cover - compiled
    """Output rows ``oh0:oh0+rows``, columns ``ow0:ow0+cols`` through a zero-padded window copy."""
    _, in_c, in_d, in_h, in_w = x.shape
    out_ch, c_per_group, k_d, k_h, k_w = w.shape
    _, _, out_d, out_h, out_w = out.shape
    s_d, s_h, s_w = stride
    d_d, d_h, d_w = dilation
    p_d, p_h, p_w = pad
    dense = s_h == 1 and s_w == 1
    g = o // out_channels_per_group
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
    if dense:
        # one flat run over the wide window: tap (kh, kw) reads at kh * dh * pitch + kw * dw
        for kh in range(k_h):
            for kw in range(k_w):
                offsets[kh * k_w + kw] = kh * d_h * pitch + kw * d_w
    else:
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
            if dense:
                first = c == 0 and kd == 0  # the tile's first taps start from zero
                _taps(acc, buf, offsets, w[o, c, kd].reshape(-1), k_h * k_w, first, zero)
                continue
            for kh in range(k_h):
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
    checking) loop, which cost more than the taps of a 3x3 kernel; flat
    indices that may be negative (wraparound checks) were 2x slower still.
    """
    for j in range(target.shape[0]):
        target[j] = source[j]


@numba.njit(cache=True, fastmath=False, nogil=True)
def _gather_shifted(x, cols, n0, pad_top, pad_left):  # pragma: no cover - compiled
    # im2col's columns of images n0 : n0 + NB for stride 1, dilation 1 and an output plane
    # the shape of the input's (H x W, "same" pads): cols (C, KH, KW, NB, H, W)[c, i, j, n]
    # is plane x[n0 + n, c] shifted by (i - pad_top, j - pad_left), zero where that reads
    # outside it. Flat, that is one contiguous copy at offset (i - pad_top) * W + (j -
    # pad_left), then the columns that wrapped into the neighbouring row set to zero.
    nc, kh, kw, nb, h, w = cols.shape
    plane = h * w
    nx = x.shape[1]
    cf = cols.reshape(cols.size)
    xf = x.reshape(x.size)
    for c in range(nc):
        for i in range(kh):
            for j in range(kw):
                dy, dx = i - pad_top, j - pad_left
                shift = dy * w + dx
                lo = min(plane, max(0, -shift))
                hi = max(lo, min(plane, plane - shift))
                for n in range(nb):
                    # flat, non-negative offsets (no negative-index wraparound in the loops)
                    d0 = np.uint64((((c * kh + i) * kw + j) * nb + n) * plane)
                    s0 = np.uint64(((n0 + n) * nx + c) * plane + lo + shift)
                    for q in range(lo):
                        cf[d0 + np.uint64(q)] = 0
                    dl = d0 + np.uint64(lo)
                    for q in range(hi - lo):
                        cf[dl + np.uint64(q)] = xf[s0 + np.uint64(q)]
                    for q in range(hi, plane):
                        cf[d0 + np.uint64(q)] = 0
                    if dx > 0:
                        for y in range(h):
                            for z in range(max(0, w - dx), w):
                                cf[d0 + np.uint64(y * w + z)] = 0
                    elif dx < 0:
                        for y in range(h):
                            for z in range(min(w, -dx)):
                                cf[d0 + np.uint64(y * w + z)] = 0


def gather_windows(x: np.ndarray, cols: np.ndarray, n0: int,
                   pad_before: tuple[int, ...]) -> None:
    """im2col's columns ``cols (C, *K, NB, *S)`` of images ``n0 : n0 + NB`` of a contiguous
    ``x (N, C, *S)``, 1-D or 2-D, for stride 1, dilation 1 and an output plane the shape
    of the input's (the zero pads ``pad_before`` and those after implicit): every column
    row is the input plane shifted, one contiguous copy per plane and tap
    (:func:`_gather_shifted`).

    NumPy's copy of the strided window view ran its inner loop over one output row (7
    elements at 7x7) after a zero-padded copy of the input: 512->512 @7 batch 8 spent
    1.9 + 0.3 ms of its 8.7 there, 0.6 ms in this gather. (Its indices are unsigned: with
    signed ones Numba guards every access against negative wraparound, and the first
    version of this loop ran 4x slower than NumPy.)
    """
    if x.ndim == 3:  # 1-D as 2-D with one row
        x, cols = x[:, :, np.newaxis], cols[:, np.newaxis, :, :, np.newaxis]
        pad_before = (0, *pad_before)
    _gather_shifted(x, cols, n0, pad_before[0], pad_before[1])


def in_place_eligible(kernel_shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether tile interiors are computed in place: stride 1 in H and W, a small kernel plane."""
    k_h = kernel_shape[-2] if len(kernel_shape) > 1 else 1
    s_h = stride[-2] if len(stride) > 1 else 1
    small = k_h == 1 or k_h * kernel_shape[-1] <= IN_PLACE_MAX_TAPS
    return s_h == 1 and stride[-1] == 1 and small


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




def _empty_apart(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``np.empty(shape, x.dtype)`` placed 2 KiB away from ``x`` modulo 4 KiB.

    The in-place interiors load ``x`` and store the output at the same offsets
    within their planes; when both arrays start at the same address modulo
    4 KiB (as large allocations do), every store falsely aliases the next
    loads ("4K aliasing"), which cost 20% on a 3x3 image.
    """
    itemsize = x.dtype.itemsize
    size = math.prod(shape)
    raw = np.empty(size + OUTPUT_PLACEMENT_BYTES // itemsize, dtype=x.dtype)
    gap = (raw.ctypes.data - x.ctypes.data) % 4096
    shift = ((2048 - gap) % 4096) // itemsize
    return raw[shift:shift + size].reshape(shape)


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
    tiles partition the output), so the output starts uninitialized
    (:func:`_empty_apart`: a C-contiguous view into a slightly larger buffer).
    """
    nd = len(output_shape)
    lift = (1,) * (3 - nd)
    x3 = np.ascontiguousarray(x).reshape(*x.shape[:2], *lift, *x.shape[2:])
    w3 = np.ascontiguousarray(weight).reshape(*weight.shape[:2], *lift, *weight.shape[2:])
    out = _empty_apart(x3, (x.shape[0], weight.shape[0], *lift, *output_shape))
    stride3, dilation3 = (*lift, *stride), (*lift, *dilation)
    pad3 = (0,) * (3 - nd) + tuple(pad_before)
    tile_rows, tile_cols = tile_shape(w3.shape[2:], stride3, dilation3, output_shape)
    items = tile_count(out.shape[2:], out.shape[0], out.shape[1], tile_rows, tile_cols)
    macs = out.size * w3[0].size
    threads = min(get_num_threads(), items, max(1, macs // MIN_MACS_PER_THREAD))
    # padded taps may be skipped when every weight is finite (w * 0 = +-0 then)
    skip_padding = w3.dtype.kind in "iu" or bool(np.isfinite(w3).all())
    args = (x3, w3, out, stride3, dilation3, pad3, out_channels_per_group, tile_rows, tile_cols,
            in_place_eligible(w3.shape[2:], stride3), skip_padding)
    if threads > 1 and compiled_parallel():
        # A few tasks per thread, handed out one at a time by Numba's scheduler (chunk size
        # 1): a thread that gets its core late takes fewer. One GIL-free launch whose
        # threads wait spinning between calls, where a Python pool thread had to be woken
        # per call (measured in blocks of back-to-back calls after an idle pause, 3x3 on a
        # 1024x1024 float32 image: 0.23 ms in two threads, 0.42 in one, 0.7-1.0 through
        # the pool).
        tasks = min(items, 4 * threads)
        bounds = np.array([items * i // tasks for i in range(tasks + 1)], dtype=np.int64)
        apply_numba_threads(threads)
        with numba.parallel_chunksize(1):
            _correlate_parallel(*args, bounds)
    else:
        _correlate_tiles(*args, 0, items)
    return out.reshape(x.shape[0], weight.shape[0], *output_shape)
