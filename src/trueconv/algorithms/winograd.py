"""Winograd minimal filtering F(m, 3) for 3-tap kernels, in 1, 2 and 3 dimensions.

Lavin & Gray, *Fast Algorithms for Convolutional Neural Networks*, CVPR 2016
(arXiv:1509.09308). An output tile of ``m`` samples per axis is computed from an
input tile of ``alpha = m + 2`` samples as ::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (2-D; the same on every axis)

so the ``m**d * 3**d`` multiplies of a tile become ``alpha**d`` per (input,
output) channel pair: 2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3).
The sum over input channels happens in the transform domain, as one matrix
product per transform point ``t`` (this is where the time goes, in BLAS)::

    M[t] = V[t] @ U[t]       (T, tiles, C) @ (T, C, O) -> (T, tiles, O)   per group

The input transform ``V = B^T d B`` and the output transform ``A^T M A`` are
compiled (Numba) loops. They apply the 1-D transforms axis by axis (the 4- and
6-point ones written out, each output one fused multiply-add chain), and run
their inner loops over the contiguous channel axis (the input is gathered
channels-last one block at a time, in cache). The work is cut into blocks of
tiles (whole images, bands of tile rows or pieces of a row, see
:func:`tile_blocks`); one compiled driver per call (:func:`_forward`)
computes the weight transform and then hands whole blocks (transform in, GEMM
through BLAS on one thread, transform out) to Numba's parallel threads, so the
workspace is a few blocks whatever the image size, and the fork/join happens
without the GIL between spinning threads (:func:`trueconv.algorithms._pool.compiled_parallel`).
Where there are too few tiles for a block per thread (batch-1 layers on small
images) the threads split the transform points instead, each running every
stage for its points on all tiles (:meth:`Winograd._run`). The weight
transform ``U`` is computed in the GEMMs' layout from the taps read in place.
Ragged borders: tiles past the output's end read implicit zeros
and their extra outputs are dropped.

The weight gradient of a stride-1 3x3 2-D layer runs as a second form of the
same transforms, tiling the output gradient instead of the output (see
:class:`Winograd` and :func:`is_weight_gradient_form`).

Dilation (stride 1): an axis dilated by ``d`` splits into ``d`` interleaved
phases, each an undilated correlation of every ``d``-th padded input sample
(TensorFlow's ``atrous_conv2d`` by ``space_to_batch``). The ``prod(d)`` phases
become batch items of one stride-1 problem (:func:`phase_spec`) that the 2-D and
3-D kernels read from the input and write to the output in place, strided (the
1-D path runs on phase copies, :func:`split_phases` and :func:`merge_phases`),
so a dilated 3x3 layer runs at the speed of the undilated one on images ``d``
times smaller per axis.

Transforms, generated exactly by Toom-Cook interpolation (checked in rational
arithmetic by ``tests/test_algorithms.py::test_winograd_matrices_exact``):

* F(2, 3): points 0, +1, -1 and infinity (Lavin & Gray eq. 7).
* F(4, 3): points 0, +1, -1, +2, -2 and infinity (Lavin & Gray section 4.2).
* F(6, 3), 1-D only: points 0, +-1, +-2, +-1/2 and infinity (the same Toom-Cook
  construction).

1-D problems run their own channels-first kernels (:meth:`Winograd._run_1d`):
``V`` as (T, C, tiles) read from contiguous channel rows, ``M[t] = U[t] @ V[t]``
with no transposed operand, the output written as contiguous rows; F(6, 3)
where its error allows (11% fewer products than F(4, 3)).

Accuracy, measured on this machine (``_measure_errors``): N(0, 1) data,
``max|y - ref| / max|ref|`` against a float64 direct sum, batch 2, 8 output
channels, 1024 samples (1-D), 32x32 (2-D), 10x10x10 (3-D), padding 1:

========  =====  ========  ========  =========  ========  ==================
tile      dims   C=4 f32   C=64 f32  C=256 f32  C=64 f64  direct f32, C=64
========  =====  ========  ========  =========  ========  ==================
F(2, 3)   1-D    1.3e-7    2.3e-7    5.6e-7     7.5e-16   3.1e-7
F(2, 3)   2-D    1.7e-7    3.7e-7    5.0e-7     1.1e-15   4.5e-7
F(2, 3)   3-D    2.1e-7    4.0e-7    7.4e-7     1.4e-15   1.1e-6
F(4, 3)   1-D    5.4e-7    1.3e-6    2.5e-6     2.3e-15   2.5e-7
F(4, 3)   2-D    2.3e-6    5.3e-6    1.1e-5     1.1e-14   5.3e-7
F(4, 3)   3-D    1.3e-5    1.8e-5    4.2e-5     5.2e-14   8.0e-7
F(6, 3)   1-D    7.8e-7    1.0e-6    2.1e-6     3.1e-15   2.5e-7
========  =====  ========  ========  =========  ========  ==================

F(2, 3) is as accurate as direct float32 summation; F(4, 3) loses about one
decimal digit per tiled axis pair (its transforms amplify rounding by the
points +-2), and both grow roughly like ``sqrt(C)``. :func:`error_bound_for`
is an envelope of this table (about twice each entry); :meth:`Winograd.tile_size`
uses it to fall back to F(2, 3) where F(4, 3) would exceed the float32
tolerance.

Speed (float32, padding 1, two threads, ms per call through ``trueconv.conv`` in
``trueconv bench``'s blocks of calls after an idle pause, median of three rounds; torch
2.13 in brackets; the VM's speed drifts by +-20% and more): 3x3 64->64 @56 batch 1 0.83
(0.80), batch 8 6.0 (5.8); 128->128 @28 batch 1 1.07 in F(2x2) (0.86), batch 8 4.7
(5.8); 256->256 @14 batch 8 5.3 in F(2x2) (5.5); dilated 64->64 @56 batch 1 0.90
(0.79); conv1d 64->64 L=4096 batch 8 3.0 (3.3); 3-D 16->16 @16x32x32 batch 1 2.2
(15), batch 8 14 (8.0: 216-point transforms). Per 98-tile block of 64->64 @56 at one
thread: input transform 0.19 ms, products 0.15, output transform 0.16 (the
channels-last copy of the input alone is a third of its transform: a scalar
transpose). Where the weight
transform dominates (512 @7, 256 @14 at batch 1: a 4-9M-entry ``U`` redone per call)
``auto`` takes im2col. README "Performance" has the full table.
"""

from __future__ import annotations

import math
import os
import sys
import types
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._memory import get_memory_limit
from .._spec import ConvSpec
from .._threads import apply_numba_threads, get_num_threads
from ._pool import compiled_parallel, run_parallel, scratch, single_threaded_blas

_F = Fraction

# ---------------------------------------------------------------------------
# Transform matrices as literal data: m -> (A^T (m x alpha), G (alpha x 3), B^T (alpha x alpha)).
# ---------------------------------------------------------------------------
TRANSFORMS: dict[int, tuple[tuple[tuple[Fraction | int, ...], ...], ...]] = {
    2: (
        ((1, 1, 1, 0),
         (0, 1, -1, 1)),
        ((1, 0, 0),
         (_F(1, 2), _F(1, 2), _F(1, 2)),
         (_F(1, 2), _F(-1, 2), _F(1, 2)),
         (0, 0, 1)),
        ((1, 0, -1, 0),
         (0, 1, 1, 0),
         (0, -1, 1, 0),
         (0, -1, 0, 1)),
    ),
    4: (
        ((1, 1, 1, 1, 1, 0),
         (0, 1, -1, 2, -2, 0),
         (0, 1, 1, 4, 4, 0),
         (0, 1, -1, 8, -8, 1)),
        ((_F(1, 4), 0, 0),
         (_F(-1, 6), _F(-1, 6), _F(-1, 6)),
         (_F(-1, 6), _F(1, 6), _F(-1, 6)),
         (_F(1, 24), _F(1, 12), _F(1, 6)),
         (_F(1, 24), _F(-1, 12), _F(1, 6)),
         (0, 0, 1)),
        ((4, 0, -5, 0, 1, 0),
         (0, -4, -4, 1, 1, 0),
         (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0),
         (0, 4, 0, -5, 0, 1)),
    ),
}
TILE_SIZES = tuple(sorted(TRANSFORMS))
#: The transform of an axis that is not tiled (1-D and 2-D run through the 3-D kernels).
_IDENTITY = (((1,),), ((1,),), ((1,),))

# Measured float32 max-rel error at C=64 (module docstring) per (m, spatial_ndim), rounded up
# to about twice the measurement. It grows like sqrt(C / 64) past 64 channels (the float32
# channel sum in the transform domain); float64 scales it by eps64 / eps32.
_FLOAT32_BOUND = {(2, 1): 6e-7, (4, 1): 3e-6, (2, 2): 7e-7, (4, 2): 1.2e-5,
                  (2, 3): 8e-7, (4, 3): 4e-5,
                  # 1-D F(6, 3) (TRANSFORMS_1D): 1.0e-6 to 1.6e-6 measured (_measure_errors_1d)
                  (6, 1): 4e-6}
# The weight-gradient form (see is_weight_gradient_form), measured the same way per m at a
# transform-domain reduction length of 64 (class docstring), about twice the measurement; it
# grows like sqrt(reduction / 64).
_WG_FLOAT32_BOUND = {2: 5e-7, 4: 5e-6}
#: Tolerance the planner holds float32 results to (tests/references.py, EDGE_CASES 3.3).
FLOAT32_TOLERANCE = 1e-4
#: Workspace per tile block (transformed input + GEMM result): about L2-sized blocks keep the
#: transforms in cache, ...
CHUNK_BYTES = 2 * 2**20
#: ... but a block needs enough tiles (GEMM rows) for BLAS to run near its peak.
MIN_BLOCK_TILES = 128
#: The weight-gradient form's blocks hold at least this many tiles (its GEMMs' reduction axis).
WG_MIN_BLOCK_TILES = 128
#: Work is spread over threads only in blocks of at least this many tiles: each block re-reads
#: all of U, runs a skinnier GEMM and pays a thread hand-off (30-120 us on this VM). Batch-1
#: layers of 128 channels @28 and 256 @14 ran about 1.4x slower on 2 threads than on 1 without
#: a minimum; 64->64 @56 batch 1 (196 tiles) ran 1.4-1.6 ms in two blocks and 0.9-1.4 ms
#: in one (`trueconv bench`, 2 threads, two A/B rounds).
MIN_SPLIT_TILES = 256


def error_bound_for(m: int, spatial_ndim: int, in_channels: int, dtype: object) -> float:
    """Expected max error of F(m, 3) relative to the output scale (N(0, 1)-like data)."""
    return _scaled_bound(_FLOAT32_BOUND[(m, spatial_ndim)], in_channels, dtype)


def _scaled_bound(float32_bound: float, reduction: int, dtype: object) -> float:
    """A float32 envelope measured at a reduction length of 64, for ``reduction`` and ``dtype``:
    it grows like ``sqrt(reduction / 64)``, and float64 scales it by ``2 * eps64 / eps32``."""
    bound = float32_bound * math.sqrt(max(reduction, 64) / 64)
    if np.dtype(dtype) == np.float64:
        bound *= 2 * float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
    return bound


def weight_gradient_error_bound(m: int, reduction: int, dtype: object) -> float:
    """Expected max error of the weight-gradient form's F(m, 3), relative to the output scale.

    ``reduction`` is the length of the transform-domain sums: input channels per
    group times tiles per image (each image of the forward batch is one input
    channel of the form, see :func:`is_weight_gradient_form`).
    """
    return _scaled_bound(_WG_FLOAT32_BOUND[m], reduction, dtype)


def _weight_form_shape(spec: ConvSpec) -> bool:
    """A 3-sample output on every axis from a kernel that is not 3 on every axis."""
    nd = spec.spatial_ndim
    return spec.output_shape == (3,) * nd and any(k != 3 for k in spec.kernel_shape)


def is_weight_gradient_form(spec: ConvSpec) -> bool:
    """True if Winograd serves ``spec`` as the weight gradient of a 3x3 convolution.

    That is a 2-D, stride-1, undilated correlation with a 3x3 output and a
    kernel of any other shape: what ``trueconv.conv_grad`` runs for the weight
    gradient of a stride-1 3x3 layer (input ``x`` transposed to ``(C, G*N, H, W)``,
    the output gradient ``(G*O, N, Ho, Wo)`` as the kernel, see
    ``trueconv._grad.weight_gradient_spec``). Its output is computed as
    ``G^T [sum over images and kernel tiles of (A gy A^T) * (B^T x B)] G``.

    Examples
    --------
    >>> from trueconv._spec import ConvSpec
    >>> spec = ConvSpec(64, 8, 64, 1, (56, 56), (56, 56), (1, 1), (1, 1), ((1, 1), (1, 1)),
    ...                 "float32")
    >>> spec.output_shape, is_weight_gradient_form(spec)
    ((3, 3), True)
    """
    return (_weight_form_shape(spec) and spec.spatial_ndim == 2
            and all(s == 1 for s in spec.stride) and all(d == 1 for d in spec.dilation))


def transform_arrays(m: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(A^T, G, B^T)`` of F(m, 3); ``G`` in float64 (the weight transform runs once)."""
    at, g, bt = TRANSFORMS[m] if m > 1 else _IDENTITY
    return (np.array(at, dtype=dtype), np.array([[float(v) for v in row] for row in g]),
            np.array(bt, dtype=dtype))


_CALL_TRANSFORMS: dict[tuple[int, int, str], Any] = {}


def _call_transforms(m: int, nd: int, dtype: np.dtype) -> Any:
    """``((A^T, B^T) per axis D, H, W, kron(Gd, Gh, Gw))`` of an ``nd``-D F(m, 3) run, cached.

    Building them from the Fraction tables costs about 0.1 ms, worth saving on small layers.
    The arrays are shared between calls and threads and never written.
    """
    key = (m, nd, np.dtype(dtype).name)
    found = _CALL_TRANSFORMS.get(key)
    if found is None:
        axes = [transform_arrays(1, dtype)] * (3 - nd) + [transform_arrays(m, dtype)] * nd
        kron = np.kron(np.kron(axes[0][1], axes[1][1]), axes[2][1]).astype(dtype)
        found = _CALL_TRANSFORMS[key] = (*((at, bt) for at, _, bt in axes), kron)
    return found


# ---------------------------------------------------------------------------
# Compiled transforms. Written once for three spatial axes; 1-D and 2-D problems
# use 1x1 identity transforms on the leading axes. Plain Python here, compiled
# lazily by _kernels() so that importing trueconv does not import Numba.
# ---------------------------------------------------------------------------
def _input_transform(x, lo_d, lo_h, lo_w, btd, bth, btw, md, mh, mw,
                     n0, n1, d0, d1, h0, h1, w0, w1, v, p0, p1, dd, dh, dw):  # pragma: no cover
    # x: (N, C, D, H, W) unpadded input, zero-padded by (lo_d, lo_h, lo_w) before and as much
    # as the tiles need after; v: (ad*ah*aw, tiles, C) for the tile block [n0:n1, d0:d1,
    # h0:h1, w0:w1], tiles in C order. Per image: copy the block's padded window into a
    # channels-last band (the layout change happens here, in cache, instead of as a pass
    # over the whole input); then per tile stage D, H and W, each one 1-D B^T with its zeros
    # skipped and its inner loop over the contiguous channel axis, which LLVM vectorizes.
    # [p0, p1) (p1 < 0: all) restricts the output to the transform points whose index on
    # the outermost transformed axis (D in 3-D, H in 2-D; see point_ranges) lies in it: v
    # then holds only those (p1 - p0) * T / alpha points, in the same order.
    # Dilation (dd, dh, dw) (see phase_spec): image i of the tile grid is phase
    # (rd, rh, rw) = unravel(i % (dd*dh*dw)) of image i // (dd*dh*dw) of x, an undilated
    # problem on every d-th zero-padded sample from r, read here in place (strided).
    ad, ah, aw = btd.shape[0], bth.shape[0], btw.shape[0]
    if ad > 1:
        sa0, sa1, sb0, sb1 = p0, ad if p1 < 0 else p1, 0, ah
    else:
        sa0, sa1, sb0, sb1 = 0, 1, p0, ah if p1 < 0 else p1
    toff = (sa0 * ah + sb0) * aw  # index in v of the first point computed
    nc, dn, hn, wn = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    # the band: (phase) padded coordinates [d0*md, (d1-1)*md+ad) x [h0*mh, ...) x [w0*mw, ...)
    bd, bh, bw = (d1 - d0 - 1) * md + ad, (h1 - h0 - 1) * mh + ah, (w1 - w0 - 1) * mw + aw
    od, oh, ow = d0 * md, h0 * mh, w0 * mw  # band origin
    phases = dd * dh * dw
    band = np.zeros((bd, bh, bw, nc), dtype=x.dtype)
    t1 = np.empty((ad if ad > 1 else 0, bh, bw, nc), dtype=x.dtype)
    t2 = np.empty((ah, bw, nc), dtype=x.dtype)
    cw = w1 - w0
    tile = 0
    for i in range(n0, n1):
        n, q = i // phases, i % phases
        rd, rh, rw = q // (dh * dw), (q // dw) % dh, q % dw
        # band sample z reads x at dd * (od + z) + rd - lo_d: inside x for z in [za, zb)
        za, zb = max(0, -((rd - lo_d) // dd) - od), min(bd, (dn - 1 + lo_d - rd) // dd + 1 - od)
        ya, yb = max(0, -((rh - lo_h) // dh) - oh), min(bh, (hn - 1 + lo_h - rh) // dh + 1 - oh)
        xa, xb = max(0, -((rw - lo_w) // dw) - ow), min(bw, (wn - 1 + lo_w - rw) // dw + 1 - ow)
        if phases == 1:  # (the undilated copy written plainly: unit strides for LLVM)
            for z in range(za, zb):
                for y in range(ya, yb):
                    for xx in range(xa, xb):
                        for c in range(nc):
                            band[z, y, xx, c] = x[n, c, od - lo_d + z, oh - lo_h + y,
                                                  ow - lo_w + xx]
        else:
            band[:] = 0  # each phase has pads of its own
            for z in range(za, zb):
                sz = dd * (od + z) + rd - lo_d
                for y in range(ya, yb):
                    sy = dh * (oh + y) + rh - lo_h
                    for xx in range(xa, xb):
                        sx = dw * (ow + xx) + rw - lo_w
                        for c in range(nc):
                            band[z, y, xx, c] = x[n, c, sz, sy, sx]
        for td in range(d1 - d0):
            # stage D over whole band planes (skipped for 1-D and 2-D problems)
            # (alpha 6 and 4 written out, as stages H and W below: a zero-and-accumulate
            # pass per nonzero coefficient through the whole plane made 3-D F(4, 3) input
            # transforms twice as slow)
            z0 = td * md
            for a in range(sa0 if ad > 1 else 0, sa1 if ad > 1 else 0):
                if ad == 6:
                    b0, b1, b2 = btd[a, 0], btd[a, 1], btd[a, 2]
                    b3, b4, b5 = btd[a, 3], btd[a, 4], btd[a, 5]
                    for y in range(bh):
                        for xx in range(bw):
                            for c in range(nc):
                                t1[a, y, xx, c] = (b0 * band[z0, y, xx, c]
                                                   + b1 * band[z0 + 1, y, xx, c]
                                                   + b2 * band[z0 + 2, y, xx, c]
                                                   + b3 * band[z0 + 3, y, xx, c]
                                                   + b4 * band[z0 + 4, y, xx, c]
                                                   + b5 * band[z0 + 5, y, xx, c])
                elif ad == 4:
                    b0, b1, b2, b3 = btd[a, 0], btd[a, 1], btd[a, 2], btd[a, 3]
                    for y in range(bh):
                        for xx in range(bw):
                            for c in range(nc):
                                t1[a, y, xx, c] = (b0 * band[z0, y, xx, c]
                                                   + b1 * band[z0 + 1, y, xx, c]
                                                   + b2 * band[z0 + 2, y, xx, c]
                                                   + b3 * band[z0 + 3, y, xx, c])
                else:
                    for y in range(bh):
                        for xx in range(bw):
                            for c in range(nc):
                                t1[a, y, xx, c] = 0
                    for j in range(ad):
                        b = btd[a, j]
                        if b != 0:
                            for y in range(bh):
                                for xx in range(bw):
                                    for c in range(nc):
                                        t1[a, y, xx, c] += b * band[z0 + j, y, xx, c]
            src = t1 if ad > 1 else band
            for th in range(h1 - h0):
                for a in range(sa0, sa1):
                    # stage H for a whole row of tiles: contiguous (width x channels) loops
                    # (alpha 6 and 4 are written out: one store per output and the
                    # coefficients in registers, instead of a zero-and-accumulate pass
                    # through memory per nonzero coefficient; 0 * d adds nothing to finite data)
                    r0 = th * mh
                    for bb in range(sb0, sb1):
                        if ah == 6:
                            b0, b1, b2 = bth[bb, 0], bth[bb, 1], bth[bb, 2]
                            b3, b4, b5 = bth[bb, 3], bth[bb, 4], bth[bb, 5]
                            for xx in range(bw):
                                for c in range(nc):
                                    t2[bb, xx, c] = (b0 * src[a, r0, xx, c]
                                                     + b1 * src[a, r0 + 1, xx, c]
                                                     + b2 * src[a, r0 + 2, xx, c]
                                                     + b3 * src[a, r0 + 3, xx, c]
                                                     + b4 * src[a, r0 + 4, xx, c]
                                                     + b5 * src[a, r0 + 5, xx, c])
                        elif ah == 4:
                            b0, b1, b2, b3 = bth[bb, 0], bth[bb, 1], bth[bb, 2], bth[bb, 3]
                            for xx in range(bw):
                                for c in range(nc):
                                    t2[bb, xx, c] = (b0 * src[a, r0, xx, c]
                                                     + b1 * src[a, r0 + 1, xx, c]
                                                     + b2 * src[a, r0 + 2, xx, c]
                                                     + b3 * src[a, r0 + 3, xx, c])
                        else:
                            for xx in range(bw):
                                for c in range(nc):
                                    t2[bb, xx, c] = 0
                            for j in range(ah):
                                b = bth[bb, j]
                                if b != 0:
                                    for xx in range(bw):
                                        for c in range(nc):
                                            t2[bb, xx, c] += b * src[a, r0 + j, xx, c]
                    # stage W, tile by tile along the row
                    for bb in range(sb0, sb1):
                        for k in range(aw):
                            t = (a * ah + bb) * aw + k - toff
                            if aw == 6:
                                b0, b1, b2 = btw[k, 0], btw[k, 1], btw[k, 2]
                                b3, b4, b5 = btw[k, 3], btw[k, 4], btw[k, 5]
                                for tw in range(cw):
                                    s0 = tw * mw
                                    for c in range(nc):
                                        v[t, tile + tw, c] = (b0 * t2[bb, s0, c]
                                                              + b1 * t2[bb, s0 + 1, c]
                                                              + b2 * t2[bb, s0 + 2, c]
                                                              + b3 * t2[bb, s0 + 3, c]
                                                              + b4 * t2[bb, s0 + 4, c]
                                                              + b5 * t2[bb, s0 + 5, c])
                            elif aw == 4:
                                b0, b1, b2, b3 = btw[k, 0], btw[k, 1], btw[k, 2], btw[k, 3]
                                for tw in range(cw):
                                    s0 = tw * mw
                                    for c in range(nc):
                                        v[t, tile + tw, c] = (b0 * t2[bb, s0, c]
                                                              + b1 * t2[bb, s0 + 1, c]
                                                              + b2 * t2[bb, s0 + 2, c]
                                                              + b3 * t2[bb, s0 + 3, c])
                            else:
                                for tw in range(cw):
                                    for c in range(nc):
                                        v[t, tile + tw, c] = 0
                                for j in range(aw):
                                    b = btw[k, j]
                                    if b != 0:
                                        for tw in range(cw):
                                            for c in range(nc):
                                                v[t, tile + tw, c] += b * t2[bb, tw * mw + j, c]
                tile += cw


def _output_transform(mm, atd, ath, atw, n0, n1, d0, d1, h0, h1, w0, w1, out,
                      p0, p1, dd, dh, dw):  # pragma: no cover
    # mm: (ad*ah*aw, tiles, O) GEMM result of the tile block; out: (N, O, Do, Ho, Wo).
    # Per row of tiles: stage W, H, then D (one 1-D A^T each, inner loops over the
    # contiguous (tile, column, channel) axes), then a transposing, cropped store: the
    # parts of ragged-border tiles past the output's end are dropped. With [p0, p1) (see
    # _input_transform) mm holds only those points and out receives their share of the sum
    # over the points (the output transform is linear): the shares of all ranges add up to
    # the output.
    md, ad = atd.shape
    mh, ah = ath.shape
    mw, aw = atw.shape
    if ad > 1:
        sa0, sa1, sb0, sb1 = p0, ad if p1 < 0 else p1, 0, ah
    else:
        sa0, sa1, sb0, sb1 = 0, 1, p0, ah if p1 < 0 else p1
    toff = (sa0 * ah + sb0) * aw
    sbn = sb1 - sb0
    no = out.shape[1]
    dout, hout, wout = out.shape[2], out.shape[3], out.shape[4]
    cw = w1 - w0
    r1 = np.empty((ad * ah, cw * mw, no), dtype=mm.dtype)
    r2 = np.empty((ad, mh, cw * mw, no), dtype=mm.dtype)
    r3 = np.empty((mh, cw * mw, no), dtype=mm.dtype)
    phases = dd * dh * dw
    tile = 0
    for i in range(n0, n1):
        # dilation as in _input_transform: grid image i is phase (rd, rh, rw) of image n,
        # whose axis d*j + r outputs it holds, ceil((size - r) / d) of them per axis
        n, q = i // phases, i % phases
        rd, rh, rw = q // (dh * dw), (q // dw) % dh, q % dw
        cd = -((rd - dout) // dd)
        ch = -((rh - hout) // dh)
        wn = min(cw * mw, -((rw - wout) // dw) - w0 * mw)  # output columns this block writes
        for td in range(d0, d1):
            for th in range(h0, h1):
                # (alpha 6 and 4 written out, as in _input_transform)
                for ab in range(sa0 * ah + sb0, (sa1 - 1) * ah + sb1):
                    k0 = ab * aw - toff
                    for u in range(mw):
                        if aw == 6:
                            b0, b1, b2 = atw[u, 0], atw[u, 1], atw[u, 2]
                            b3, b4, b5 = atw[u, 3], atw[u, 4], atw[u, 5]
                            for tw in range(cw):
                                q = tile + tw
                                for o in range(no):
                                    r1[ab, tw * mw + u, o] = (b0 * mm[k0, q, o]
                                                              + b1 * mm[k0 + 1, q, o]
                                                              + b2 * mm[k0 + 2, q, o]
                                                              + b3 * mm[k0 + 3, q, o]
                                                              + b4 * mm[k0 + 4, q, o]
                                                              + b5 * mm[k0 + 5, q, o])
                        elif aw == 4:
                            b0, b1, b2, b3 = atw[u, 0], atw[u, 1], atw[u, 2], atw[u, 3]
                            for tw in range(cw):
                                q = tile + tw
                                for o in range(no):
                                    r1[ab, tw * mw + u, o] = (b0 * mm[k0, q, o]
                                                              + b1 * mm[k0 + 1, q, o]
                                                              + b2 * mm[k0 + 2, q, o]
                                                              + b3 * mm[k0 + 3, q, o])
                        else:
                            for tw in range(cw):
                                for o in range(no):
                                    r1[ab, tw * mw + u, o] = 0
                            for k in range(aw):
                                b = atw[u, k]
                                if b != 0:
                                    for tw in range(cw):
                                        for o in range(no):
                                            r1[ab, tw * mw + u, o] += b * mm[k0 + k, tile + tw, o]
                for a in range(sa0, sa1):
                    j0 = a * ah
                    for vv in range(mh):
                        if sbn == 3:
                            # a 2-D point range: half of F(4, 3)'s rows (two threads)
                            b0, b1, b2 = ath[vv, sb0], ath[vv, sb0 + 1], ath[vv, sb0 + 2]
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = (b0 * r1[sb0, col, o]
                                                         + b1 * r1[sb0 + 1, col, o]
                                                         + b2 * r1[sb0 + 2, col, o])
                        elif sbn == 2:
                            # half of F(2, 3)'s rows, a third of F(4, 3)'s
                            b0, b1 = ath[vv, sb0], ath[vv, sb0 + 1]
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = (b0 * r1[sb0, col, o]
                                                         + b1 * r1[sb0 + 1, col, o])
                        elif sbn != ah:
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = 0
                            for bb in range(sb0, sb1):
                                b = ath[vv, bb]
                                if b != 0:
                                    for col in range(cw * mw):
                                        for o in range(no):
                                            r2[a, vv, col, o] += b * r1[bb, col, o]
                        elif ah == 6:
                            b0, b1, b2 = ath[vv, 0], ath[vv, 1], ath[vv, 2]
                            b3, b4, b5 = ath[vv, 3], ath[vv, 4], ath[vv, 5]
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = (b0 * r1[j0, col, o]
                                                         + b1 * r1[j0 + 1, col, o]
                                                         + b2 * r1[j0 + 2, col, o]
                                                         + b3 * r1[j0 + 3, col, o]
                                                         + b4 * r1[j0 + 4, col, o]
                                                         + b5 * r1[j0 + 5, col, o])
                        elif ah == 4:
                            b0, b1, b2, b3 = ath[vv, 0], ath[vv, 1], ath[vv, 2], ath[vv, 3]
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = (b0 * r1[j0, col, o]
                                                         + b1 * r1[j0 + 1, col, o]
                                                         + b2 * r1[j0 + 2, col, o]
                                                         + b3 * r1[j0 + 3, col, o])
                        else:
                            for col in range(cw * mw):
                                for o in range(no):
                                    r2[a, vv, col, o] = 0
                            for bb in range(ah):
                                b = ath[vv, bb]
                                if b != 0:
                                    for col in range(cw * mw):
                                        for o in range(no):
                                            r2[a, vv, col, o] += b * r1[j0 + bb, col, o]
                hn = min(mh, ch - th * mh)
                for z in range(min(md, cd - td * md)):
                    if ad == 1:
                        res = r2[0]
                    elif sa1 - sa0 == 6:  # (written out, as stage D of _input_transform)
                        b0, b1, b2 = atd[z, 0], atd[z, 1], atd[z, 2]
                        b3, b4, b5 = atd[z, 3], atd[z, 4], atd[z, 5]
                        for vv in range(mh):
                            for col in range(cw * mw):
                                for o in range(no):
                                    r3[vv, col, o] = (b0 * r2[0, vv, col, o]
                                                      + b1 * r2[1, vv, col, o]
                                                      + b2 * r2[2, vv, col, o]
                                                      + b3 * r2[3, vv, col, o]
                                                      + b4 * r2[4, vv, col, o]
                                                      + b5 * r2[5, vv, col, o])
                        res = r3
                    elif sa1 - sa0 == 4 and ad == 4:
                        b0, b1, b2, b3 = atd[z, 0], atd[z, 1], atd[z, 2], atd[z, 3]
                        for vv in range(mh):
                            for col in range(cw * mw):
                                for o in range(no):
                                    r3[vv, col, o] = (b0 * r2[0, vv, col, o]
                                                      + b1 * r2[1, vv, col, o]
                                                      + b2 * r2[2, vv, col, o]
                                                      + b3 * r2[3, vv, col, o])
                        res = r3
                    else:
                        for vv in range(mh):
                            for col in range(cw * mw):
                                for o in range(no):
                                    r3[vv, col, o] = 0
                        for a in range(sa0, sa1):
                            b = atd[z, a]
                            if b != 0:
                                for vv in range(mh):
                                    for col in range(cw * mw):
                                        for o in range(no):
                                            r3[vv, col, o] += b * r2[a, vv, col, o]
                        res = r3
                    c0 = w0 * mw
                    if phases == 1:  # (undilated: a unit-stride store, as LLVM sees it)
                        for o in range(no):
                            for vv in range(hn):
                                # a row view indexed by the loop counter: a computed index
                                # (c0 + col) could be negative to Numba, which then guards
                                # every store against wraparound
                                dst = out[n, o, td * md + z, th * mh + vv, c0:c0 + wn]
                                for col in range(wn):
                                    dst[col] = res[vv, col, o]
                    else:
                        first = np.uint64(dw * c0 + rw)  # unsigned: no wraparound guard
                        step = np.uint64(dw)
                        for o in range(no):
                            for vv in range(hn):
                                dst = out[n, o, dd * (td * md + z) + rd, dh * (th * mh + vv) + rh]
                                for col in range(wn):
                                    dst[first + step * np.uint64(col)] = res[vv, col, o]
                tile += cw


def _gradient_transform(gy, o0, o1, n0, n1, h0, h1, w0, w1, u):  # pragma: no cover
    # Weight-gradient form (2-D): gy (N, O_total, >= h1*m, >= w1*m) the output gradient,
    # zero past its data; u (alpha*alpha, o1-o0, tiles): A gy_tile A^T of every m x m tile of
    # the block [n0:n1, h0:h1, w0:w1] (tiles in C order, as _input_transform numbers them),
    # channels o0:o1. A = (A^T)^T of F(m, 3), written out (rows [1,0], [1,1], [1,-1], [0,1]
    # for m = 2; [1,0,0,0], [1,1,1,1], [1,-1,1,-1], [1,2,4,8], [1,-2,4,-8], [0,0,0,1] for
    # m = 4): stage H into a row of tiles laid out (point, column in tile, tile), then stage
    # W, both inner loops along the row of tiles (a strided read of gy, contiguous writes;
    # a contiguous stage H with strided stage-W reads ran 2.5x slower).
    alpha = 4 if u.shape[0] == 16 else 6
    m = alpha - 2
    cw = w1 - w0
    t2 = np.empty((alpha, m, cw), dtype=gy.dtype)
    for n in range(n0, n1):
        for th in range(h0, h1):
            base = ((n - n0) * (h1 - h0) + (th - h0)) * cw
            r0 = m * th
            for o in range(o0, o1):
                q = o - o0
                if m == 2:
                    for s in range(2):
                        for tw in range(cw):
                            col = 2 * (w0 + tw) + s
                            g0 = gy[n, o, r0, col]
                            g1 = gy[n, o, r0 + 1, col]
                            t2[0, s, tw] = g0
                            t2[1, s, tw] = g0 + g1
                            t2[2, s, tw] = g0 - g1
                            t2[3, s, tw] = g1
                    for a in range(4):
                        for tw in range(cw):
                            h0_ = t2[a, 0, tw]
                            h1_ = t2[a, 1, tw]
                            u[4 * a, q, base + tw] = h0_
                            u[4 * a + 1, q, base + tw] = h0_ + h1_
                            u[4 * a + 2, q, base + tw] = h0_ - h1_
                            u[4 * a + 3, q, base + tw] = h1_
                else:
                    for s in range(4):
                        for tw in range(cw):
                            col = 4 * (w0 + tw) + s
                            g0 = gy[n, o, r0, col]
                            g1 = gy[n, o, r0 + 1, col]
                            g2 = gy[n, o, r0 + 2, col]
                            g3 = gy[n, o, r0 + 3, col]
                            e = g0 + g2
                            f = g1 + g3
                            e4 = g0 + 4 * g2
                            f4 = 2 * g1 + 8 * g3
                            t2[0, s, tw] = g0
                            t2[1, s, tw] = e + f
                            t2[2, s, tw] = e - f
                            t2[3, s, tw] = e4 + f4
                            t2[4, s, tw] = e4 - f4
                            t2[5, s, tw] = g3
                    for a in range(6):
                        for tw in range(cw):
                            h0_ = t2[a, 0, tw]
                            h1_ = t2[a, 1, tw]
                            h2_ = t2[a, 2, tw]
                            h3_ = t2[a, 3, tw]
                            e = h0_ + h2_
                            f = h1_ + h3_
                            e4 = h0_ + 4 * h2_
                            f4 = 2 * h1_ + 8 * h3_
                            u[6 * a, q, base + tw] = h0_
                            u[6 * a + 1, q, base + tw] = e + f
                            u[6 * a + 2, q, base + tw] = e - f
                            u[6 * a + 3, q, base + tw] = e4 + f4
                            u[6 * a + 4, q, base + tw] = e4 - f4
                            u[6 * a + 5, q, base + tw] = h3_

def _input_transform_1d(x, lo, bt, n0, n1, w0, w1, v):  # pragma: no cover
    # x: (N, C, L) unpadded input, zero-padded by lo before and as much as the tiles need
    # after; v: (alpha, C, tiles) for the block of whole tiles [w0, w1) of images [n0, n1),
    # tiles numbered (n - n0) * (w1 - w0) + (w - w0). Channels-first throughout: per
    # channel row, copy the block's padded window (contiguous), split it into its m phases
    # e[k, j] = row[m*j + k] (one interleaved pass that LLVM vectorizes with permutes), and
    # then every transform point is a contiguous loop over the tiles: tile j reads samples
    # m*j .. m*j + alpha - 1, i.e. e[k % m, j + k // m]. Indices are kept provably
    # non-negative (views, loop counters): a possibly negative index makes Numba wrap it,
    # which turns LLVM's vector loads into gathers.
    alpha = bt.shape[0]
    m = alpha - 2
    nc, length = x.shape[1], x.shape[2]
    cw = w1 - w0
    groups = cw + 1  # m-sample groups the block's tiles read (the last one for the halo)
    span = groups * m
    start = w0 * m - lo  # x index of the window's first sample
    a = min(span, max(0, -start))
    b = max(a, min(span, length - start))
    row = np.zeros(span, dtype=x.dtype)  # [0, a) and [b, span) stay zero: the pads
    inside = row[a:b]
    e = np.empty((m, groups), dtype=x.dtype)
    for n in range(n0, n1):
        base = (n - n0) * cw
        for c in range(nc):
            src = x[n, c, start + a:start + b]
            for i in range(b - a):
                inside[i] = src[i]
            if m == 4:
                # F(4, 3), B^T factored: 6 points from 8 multiply-adds; the coefficients in
                # the data's dtype (an integer literal would promote float32 to float64)
                four, five, two = bt[0, 0], -bt[0, 2], bt[4, 1]
                e0, e1, e2, e3 = e[0], e[1], e[2], e[3]
                for j in range(groups):
                    e0[j] = row[4 * j]
                    e1[j] = row[4 * j + 1]
                    e2[j] = row[4 * j + 2]
                    e3[j] = row[4 * j + 3]
                v0 = v[0, c, base:base + cw]
                v1 = v[1, c, base:base + cw]
                v2 = v[2, c, base:base + cw]
                v3 = v[3, c, base:base + cw]
                v4 = v[4, c, base:base + cw]
                v5 = v[5, c, base:base + cw]
                for j in range(cw):
                    d0 = e0[j]
                    d1 = e1[j]
                    d2 = e2[j]
                    d3 = e3[j]
                    d4 = e0[j + 1]
                    d5 = e1[j + 1]
                    p = d4 - four * d2
                    q = d3 - four * d1
                    r = d4 - d2
                    s = two * (d1 - d3)
                    v0[j] = four * d0 - five * d2 + d4
                    v1[j] = p + q
                    v2[j] = p - q
                    v3[j] = r - s
                    v4[j] = r + s
                    v5[j] = four * d1 - five * d3 + d5
            elif m == 6:
                # F(6, 3) (TRANSFORMS_1D), B^T factored: the rows of points +p and -p share
                # their even and odd parts (p +- q); 8 points from 22 adds and multiply-adds,
                # every coefficient a multiple of 1/4 (exact in binary)
                c21, c17 = bt[0, 4], -bt[1, 3]
                cq, c54, ch, c52 = bt[3, 2], -bt[3, 4], bt[3, 1], -bt[3, 3]
                two, four, five = bt[3, 5], bt[5, 2], -bt[5, 4]
                e0, e1, e2, e3, e4, e5 = e[0], e[1], e[2], e[3], e[4], e[5]
                for j in range(groups):
                    e0[j] = row[6 * j]
                    e1[j] = row[6 * j + 1]
                    e2[j] = row[6 * j + 2]
                    e3[j] = row[6 * j + 3]
                    e4[j] = row[6 * j + 4]
                    e5[j] = row[6 * j + 5]
                v0 = v[0, c, base:base + cw]
                v1 = v[1, c, base:base + cw]
                v2 = v[2, c, base:base + cw]
                v3 = v[3, c, base:base + cw]
                v4 = v[4, c, base:base + cw]
                v5 = v[5, c, base:base + cw]
                v6 = v[6, c, base:base + cw]
                v7 = v[7, c, base:base + cw]
                for j in range(cw):
                    d0 = e0[j]
                    d1 = e1[j]
                    d2 = e2[j]
                    d3 = e3[j]
                    d4 = e4[j]
                    d5 = e5[j]
                    d6 = e0[j + 1]
                    d7 = e1[j + 1]
                    p = d2 + d6 - c17 * d4
                    q = d1 + d5 - c17 * d3
                    r = cq * d2 - c54 * d4 + d6
                    s = ch * d1 - c52 * d3 + two * d5
                    f = four * d2 - five * d4 + d6
                    h = two * d1 - c52 * d3 + ch * d5
                    v0[j] = d0 - d6 + c21 * (d4 - d2)
                    v1[j] = p + q
                    v2[j] = p - q
                    v3[j] = r + s
                    v4[j] = r - s
                    v5[j] = f + h
                    v6[j] = f - h
                    v7[j] = d7 - d1 + c21 * (d3 - d5)
            else:
                # any other m (F(2, 3)): generic, one accumulate pass per nonzero coefficient
                for k in range(m):
                    ek = e[k]
                    for j in range(groups):
                        ek[j] = row[m * j + k]
                for t in range(alpha):
                    vt = v[t, c, base:base + cw]
                    for j in range(cw):
                        vt[j] = 0
                    for k in range(alpha):
                        coef = bt[t, k]
                        if coef != 0:
                            ek = e[k % m, k // m:k // m + cw]
                            for j in range(cw):
                                vt[j] += coef * ek[j]


def _output_transform_1d(mm, at, n0, n1, w0, w1, out):  # pragma: no cover
    # mm: (alpha, O, tiles) GEMM result of the block (tiles numbered as in
    # _input_transform_1d); out: (N, O, Lout). Per output row: the m output phases
    # y[u, j] = sum_t A^T[u, t] mm[t, o, j] (contiguous loops over the tiles), then one
    # interleaving store of the block's whole tiles into the contiguous output row; the
    # ragged last tile of an image stores only its samples inside the output.
    m, alpha = at.shape
    no, lout = out.shape[1], out.shape[2]
    cw = w1 - w0
    full = min(cw, max(0, (lout - w0 * m) // m))  # tiles wholly inside the output
    y = np.empty((m, cw), dtype=out.dtype)
    for n in range(n0, n1):
        base = (n - n0) * cw
        for o in range(no):
            dst = out[n, o, w0 * m:]
            if m == 4:
                # F(4, 3), A^T factored: 4 outputs from 10 adds and multiply-adds
                two, four, eight = at[1, 3], at[2, 3], at[3, 3]
                y0, y1, y2, y3 = y[0], y[1], y[2], y[3]
                q0 = mm[0, o, base:base + cw]
                q1 = mm[1, o, base:base + cw]
                q2 = mm[2, o, base:base + cw]
                q3 = mm[3, o, base:base + cw]
                q4 = mm[4, o, base:base + cw]
                q5 = mm[5, o, base:base + cw]
                for j in range(cw):
                    p = q1[j] + q2[j]
                    q = q1[j] - q2[j]
                    r = q3[j] + q4[j]
                    s = q3[j] - q4[j]
                    y0[j] = q0[j] + p + r
                    y1[j] = q + two * s
                    y2[j] = p + four * r
                    y3[j] = q + eight * s + q5[j]
                for j in range(full):
                    dst[4 * j] = y0[j]
                    dst[4 * j + 1] = y1[j]
                    dst[4 * j + 2] = y2[j]
                    dst[4 * j + 3] = y3[j]
            elif m == 6:
                # F(6, 3), A^T factored: 6 outputs from 20 adds and multiply-adds
                two, four, eight = at[1, 3], at[2, 3], at[3, 3]
                c16, c32 = at[4, 3], at[5, 3]
                half, quarter, eighth = at[1, 5], at[2, 5], at[3, 5]
                c1_16, c1_32 = at[4, 5], at[5, 5]
                y0, y1, y2, y3, y4, y5 = y[0], y[1], y[2], y[3], y[4], y[5]
                q0 = mm[0, o, base:base + cw]
                q1 = mm[1, o, base:base + cw]
                q2 = mm[2, o, base:base + cw]
                q3 = mm[3, o, base:base + cw]
                q4 = mm[4, o, base:base + cw]
                q5 = mm[5, o, base:base + cw]
                q6 = mm[6, o, base:base + cw]
                q7 = mm[7, o, base:base + cw]
                for j in range(cw):
                    p = q1[j] + q2[j]
                    q = q1[j] - q2[j]
                    r = q3[j] + q4[j]
                    s = q3[j] - q4[j]
                    a = q5[j] + q6[j]
                    b = q5[j] - q6[j]
                    y0[j] = q0[j] + p + r + a
                    y1[j] = q + two * s + half * b
                    y2[j] = p + four * r + quarter * a
                    y3[j] = q + eight * s + eighth * b
                    y4[j] = p + c16 * r + c1_16 * a
                    y5[j] = q + c32 * s + c1_32 * b + q7[j]
                for j in range(full):
                    dst[6 * j] = y0[j]
                    dst[6 * j + 1] = y1[j]
                    dst[6 * j + 2] = y2[j]
                    dst[6 * j + 3] = y3[j]
                    dst[6 * j + 4] = y4[j]
                    dst[6 * j + 5] = y5[j]
            else:
                for u in range(m):
                    yu = y[u]
                    for j in range(cw):
                        yu[j] = 0
                    for k in range(alpha):
                        coef = at[u, k]
                        if coef != 0:
                            qk = mm[k, o, base:base + cw]
                            for j in range(cw):
                                yu[j] += coef * qk[j]
                for u in range(m):
                    yu = y[u]
                    for j in range(full):
                        dst[m * j + u] = yu[j]
            for j in range(full, cw):
                for u in range(min(m, lout - (w0 + j) * m)):
                    dst[m * j + u] = y[u, j]


# F(6, 3) for the 1-D path only: Toom-Cook points 0, +1, -1, +2, -2, +1/2, -1/2 and
# infinity (Lavin & Gray's construction, section 4; the points of the widely used F(6, 3),
# e.g. Lavin's wincnn generator), the sign of point 0 moved from G into B^T. Checked in
# rational arithmetic by tests/test_winograd_1d.py. Its float32 error is about 1.4x F(4, 3)'s
# in 1-D (_measure_errors_1d).
TRANSFORMS_1D: dict[int, tuple[tuple[tuple[Fraction | int, ...], ...], ...]] = {
    6: (
        ((1, 1, 1, 1, 1, 1, 1, 0),
         (0, 1, -1, 2, -2, _F(1, 2), _F(-1, 2), 0),
         (0, 1, 1, 4, 4, _F(1, 4), _F(1, 4), 0),
         (0, 1, -1, 8, -8, _F(1, 8), _F(-1, 8), 0),
         (0, 1, 1, 16, 16, _F(1, 16), _F(1, 16), 0),
         (0, 1, -1, 32, -32, _F(1, 32), _F(-1, 32), 1)),
        ((1, 0, 0),
         (_F(-2, 9), _F(-2, 9), _F(-2, 9)),
         (_F(-2, 9), _F(2, 9), _F(-2, 9)),
         (_F(1, 90), _F(1, 45), _F(2, 45)),
         (_F(1, 90), _F(-1, 45), _F(2, 45)),
         (_F(32, 45), _F(16, 45), _F(8, 45)),
         (_F(32, 45), _F(-16, 45), _F(8, 45)),
         (0, 0, 1)),
        ((1, 0, _F(-21, 4), 0, _F(21, 4), 0, -1, 0),
         (0, 1, 1, _F(-17, 4), _F(-17, 4), 1, 1, 0),
         (0, -1, 1, _F(17, 4), _F(-17, 4), -1, 1, 0),
         (0, _F(1, 2), _F(1, 4), _F(-5, 2), _F(-5, 4), 2, 1, 0),
         (0, _F(-1, 2), _F(1, 4), _F(5, 2), _F(-5, 4), -2, 1, 0),
         (0, 2, 4, _F(-5, 2), -5, _F(1, 2), 1, 0),
         (0, -2, 4, _F(5, 2), -5, _F(-1, 2), 1, 0),
         (0, -1, 0, _F(21, 4), 0, _F(-21, 4), 0, 1)),
    ),
}
#: Output tile sizes the 1-D path runs.
TILE_SIZES_1D = (*TILE_SIZES, *sorted(TRANSFORMS_1D))

_TRANSFORMS_1D_CACHE: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _transforms_1d(m: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, B^T, G)`` of the 1-D F(m, 3) in ``dtype`` (G rounded once from the exact values)."""
    key = (m, np.dtype(dtype).name)
    found = _TRANSFORMS_1D_CACHE.get(key)
    if found is None:
        table = TRANSFORMS_1D[m] if m in TRANSFORMS_1D else TRANSFORMS[m]
        at, g, bt = ([[float(v) for v in row] for row in matrix] for matrix in table)
        found = _TRANSFORMS_1D_CACHE[key] = (np.array(at, dtype=dtype), np.array(bt, dtype=dtype),
                                             np.array(g, dtype=dtype))
    return found


def blocks_1d(images: int, tiles: int, target: int,
              workers: int = 1) -> list[tuple[int, int, int, int]]:
    """Blocks ``(n0, n1, w0, w1)`` of at most ``target`` tiles over ``images`` rows of ``tiles``.

    Whole images when several fit in a block, else each image cut into equal
    pieces (no runt block at the end of a row), as many as makes the block
    count a multiple of ``workers`` (a batch-1 row in 3 blocks kept one of two
    threads idle for a third of the call). A plain loop: ``tile_blocks`` costs
    about 20 us, 5% of a batch-1 call.

    Examples
    --------
    >>> blocks_1d(2, 10, 4)
    [(0, 1, 0, 3), (0, 1, 3, 6), (0, 1, 6, 10), (1, 2, 0, 3), (1, 2, 3, 6), (1, 2, 6, 10)]
    >>> blocks_1d(1, 10, 4, workers=2)
    [(0, 1, 0, 2), (0, 1, 2, 5), (0, 1, 5, 7), (0, 1, 7, 10)]
    >>> blocks_1d(5, 3, 7)
    [(0, 2, 0, 3), (2, 4, 0, 3), (4, 5, 0, 3)]
    """
    if images <= 0 or tiles <= 0:
        return []
    if tiles <= target:
        step = target // tiles
        return [(n0, min(n0 + step, images), 0, tiles) for n0 in range(0, images, step)]
    pieces = -(-tiles // target)
    while (images * pieces) % max(1, workers) and pieces < tiles:
        pieces += 1
    cuts = [tiles * k // pieces for k in range(pieces + 1)]
    return [(n, n + 1, cuts[k], cuts[k + 1]) for n in range(images) for k in range(pieces)]


def _measure_errors_1d() -> None:  # pragma: no cover - regenerates the 1-D error figures
    """Print the 1-D path's float32/float64 error per tile size and channel count.

    Run ``python -c "from trueconv.algorithms.winograd import _measure_errors_1d as f; f()"``.
    N(0, 1) data, batch 2, 8 output channels, 1024 samples, padding 1;
    ``max|y - ref| / max|ref|`` against a float64 direct sum. Measured on this
    machine (seed 0)::

        C      F(2,3) f32  F(4,3) f32  F(6,3) f32  F(6,3) f64
        4      1.3e-07     6.5e-07     7.8e-07     1.7e-15
        64     2.2e-07     7.4e-07     1.0e-06     3.1e-15
        256    4.8e-07     1.4e-06     2.1e-06     7.2e-15
        1024   3.5e-07     1.4e-06     1.5e-06     3.8e-15

    F(6, 3) is about 1.4x F(4, 3) (its points +-1/2 and +-2), far inside the 1e-4
    float32 tolerance; another seed gave 1.6e-6 at C = 64, hence the 4e-6 envelope
    (``error_bound_for(6, 1, ...)``).
    """
    rng = np.random.default_rng(0)
    algo = Winograd()
    print("C      " + "  ".join(f"F({m},3) f32" for m in TILE_SIZES_1D) + "  F(6,3) f64")
    for c in (4, 64, 256, 1024):
        x = rng.standard_normal((2, c, 1024))
        w = rng.standard_normal((8, c, 3))
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, [(0, 0), (0, 0), (1, 1)]),
                                                           3, axis=2)
        ref = np.einsum("nclk,ock->nol", windows, w)
        row = []
        for m, dtype in [(m, "float32") for m in TILE_SIZES_1D] + [(6, "float64")]:
            spec = ConvSpec(2, c, 8, 1, (1024,), (3,), (1,), (1,), ((1, 1),), dtype)
            y = algo.run(x.astype(dtype), w.astype(dtype), spec, tile=m)
            row.append(f"{float(np.abs(y - ref).max() / np.abs(ref).max()):.1e}")
        print(f"{c:<6d} " + "     ".join(row), flush=True)


#: The 1-D path's tile blocks hold about this much of V and M (256 F(6, 3) tiles at C = O =
#: 64 in float32; this machine's L2 is 1 MiB per core). Swept over 0.4-2 MiB on 64->64
#: channels, L = 4096, batch 1 and 8, one and two threads: 1 MiB was fastest or tied
#: everywhere (0.5 MiB: 5-15% slower: more calls and thread hand-offs per layer; 2 MiB:
#: 5-10% slower: the block falls out of L2 between the three steps).
BLOCK_BYTES_1D = 1024 * 1024
#: ... but a block keeps at least this many tiles (the GEMMs' N axis) when channels are many.
MIN_BLOCK_TILES_1D = 64
#: The 1-D path uses one more thread per this many transform-domain multiply-adds (about
#: 50 us of one core). Through the Python worker pool the threshold had to be 48M (a pool
#: thread took 0.1-0.9 ms to wake); inside the driver's parallel launch, batch 1 of 64->64
#: channels, L = 4096 (22M) ran 0.52 ms on two threads, 0.68-0.73 ms on one (six alternating
#: blocks of calls each).
MIN_SPLIT_MACS_1D = 4 * 2**20

_COMPILED_1D: dict[str, Any] = {}


def _kernels_1d() -> tuple[Any, Any]:
    """Compile (or load from Numba's on-disk cache) the two 1-D transform kernels."""
    if not _COMPILED_1D:
        import numba as nb

        # as in _kernels: serial, GIL-free kernels; fused multiply-adds, no reassociation
        _COMPILED_1D["output"] = nb.njit(**_COMPILE_OPTIONS)(_output_transform_1d)
        _COMPILED_1D["input"] = nb.njit(**_COMPILE_OPTIONS)(_input_transform_1d)
    return _COMPILED_1D["input"], _COMPILED_1D["output"]


# ---------------------------------------------------------------------------
# Compiled drivers: the whole forward pass of a call (weight transform, then per tile
# block: input transform, transform-domain products, output transform) in one GIL-free
# compiled function whose loops over blocks are Numba ``prange`` loops. Numba's OpenMP
# (or TBB) threads take the blocks: a fork/join there costs microseconds, and the
# threads wait spinning between calls, where a Python pool thread had to be woken
# (0.1-0.9 ms on this VM after each call; measured in `trueconv bench`'s blocks of calls:
# 3x3 64->64 @56 batch 1 0.77 ms compiled-parallel against 1.17 ms through the pool).
# Each driver is compiled twice, parallel and serial (see _pool.compiled_parallel).
# ---------------------------------------------------------------------------
def _weight_rows(taps, kron, u, gc0, gc1, t0, t1):  # pragma: no cover - compiled
    # u[t - t0, g, c, :] = sum_k kron[t, k] * taps[g, :, c, k] for the flattened (group,
    # input channel) pairs [gc0, gc1) and the transform points [t0, t1): the weight
    # transform G g G^T of those channels in the GEMMs' (T, G, C, O) layout. taps is the
    # weight (G, O, C, K); one channel's (K, O) column block is gathered first, so that
    # the sums run as contiguous loops over the output channels.
    o, c, k = taps.shape[1], taps.shape[2], taps.shape[3]
    column = np.empty((k, o), dtype=u.dtype)
    for gc in range(gc0, gc1):
        gg, cc = gc // c, gc % c
        for kk in range(k):
            for j in range(o):
                column[kk, j] = taps[gg, j, cc, kk]
        for t in range(t0, t1):
            row = u[t - t0, gg, cc]
            for j in range(o):
                row[j] = 0
            for kk in range(k):
                coef = kron[t, kk]
                if coef != 0:
                    for j in range(o):
                        row[j] += coef * column[kk, j]


def _weight_block_rows(taps, kron, ubuf, ranges, gc0, gc1):  # pragma: no cover - compiled
    # _weight_rows for large weights, for every part k of the transform points (ranges, see
    # _forward) into ubuf[k]. _weight_rows's per-channel gather reads O runs of K values
    # that lie C * K * itemsize apart: from WEIGHT_GATHER_STRIDE bytes on (256 channels of
    # 3x3 float32) they fall into a few cache sets and every read missed L1 and L2 (512 ->
    # 512 F(2x2): 1.4 ns per U entry, 5-6 ms per call). Here the gather takes WEIGHT_BLOCK
    # channels' taps of each output channel as one contiguous run, written transposed into
    # a ((channel, tap) x O) block, used by every part while it is in cache, and each U
    # row is summed in L1 and stored once: 512 -> 512 F(2x2) 3.4-4.5 ms, F(4x4) 7.5-9.2
    # instead of 9.4-10.5, 256 -> 256 equal or better (2.5x slower at 64 -> 64).
    g, o, c, k = taps.shape[0], taps.shape[1], taps.shape[2], taps.shape[3]
    # a row stride off a multiple of 4 KB: the transposed writes spread over the cache sets
    column = np.empty((WEIGHT_BLOCK * k, o + 16), dtype=ubuf.dtype)
    row = np.empty(o, dtype=ubuf.dtype)
    wide = o - o % 16
    gc = gc0
    while gc < gc1:
        gg, c0 = gc // c, gc % c
        cb = min(WEIGHT_BLOCK, gc1 - gc, c - c0)
        flat = taps[gg].reshape(o, c * k)
        base, rows = c0 * k, cb * k
        # 16 output channels at a time: a 64-byte line of each `column` row per pass
        for j0 in range(0, wide, 16):
            for r in range(rows):
                for j in range(16):
                    column[r, j0 + j] = flat[j0 + j, base + r]
        for j in range(wide, o):
            for r in range(rows):
                column[r, j] = flat[j, base + r]
        for part in range(ranges.shape[0]):
            p0, p1, per = ranges[part, 0], ranges[part, 1], ranges[part, 2]
            t0, tk = p0 * per, (p1 - p0) * per
            u = ubuf[part, :tk * g * c * o].reshape(tk, g, c, o)
            for q in range(cb):
                for t in range(t0, t0 + tk):
                    for j in range(o):
                        row[j] = 0
                    for kk in range(k):
                        coef = kron[t, kk]
                        if coef != 0:
                            col = column[q * k + kk]
                            for j in range(o):
                                row[j] += coef * col[j]
                    target = u[t - t0, gg, c0 + q]
                    for j in range(o):
                        target[j] = row[j]
        gc += cb


def _products(v, u, mm, pair):  # pragma: no cover - compiled
    # mm[t] = v[t] @ u[t] per transform point and group (see _point_products): v (T, tiles,
    # G*C), u (T, G, C, O), mm (T, tiles, G*O); pair: scratch for one group's operands.
    t, g, c, o = u.shape
    tiles = v.shape[1]
    for p in range(t):
        if c == 1:  # depthwise: a broadcast product
            for i in range(tiles):
                for gg in range(g):
                    a = v[p, i, gg]
                    for j in range(o):
                        mm[p, i, gg * o + j] = a * u[p, gg, 0, j]
        elif g == 1:
            np.dot(v[p], u[p, 0], mm[p])
        else:  # BLAS wants contiguous operands: one group's columns copied out and back
            vg = pair[:tiles * c].reshape(tiles, c)
            mg = pair[tiles * c:tiles * (c + o)].reshape(tiles, o)
            for gg in range(g):
                vg[:, :] = v[p, :, gg * c:(gg + 1) * c]
                np.dot(vg, u[p, gg], mg)
                mm[p, :, gg * o:(gg + 1) * o] = mg


def _forward(x5, lo_d, lo_h, lo_w, btd, bth, btw, atd, ath, atw, md, mh, mw, dd, dh, dw,
             blocks, taps, kron, ranges, weight_items, work_items, ubuf, vbuf, mbuf, pbuf,
             shares, out):  # pragma: no cover - compiled
    # One call of Winograd._run. ranges (parts, 3): the transform points of each part as
    # (p0, p1, points per index) on the outermost transformed axis (see point_ranges):
    # one part holding every point (the block split), or several (the point split). Part
    # k's U rows live in ubuf[k]; its output transform writes its share of the sum over
    # the points: part 0 into out, part k into shares[k - 1], added at the end in part
    # order. weight_items (gc0, gc1): every part's U rows for the flattened (group,
    # channel) range [gc0, gc1). work_items (k, b0, b1): part k on tile blocks b0:b1
    # (n0, n1, d0, d1, h0, h1, w0, w1), transform in, products, transform out, each block
    # in one thread while it is in that core's cache; vbuf/mbuf/pbuf: a block per thread.
    g, c, o = taps.shape[0], taps.shape[2], taps.shape[1]
    blocked = c * taps.shape[3] * taps.itemsize >= WEIGHT_GATHER_STRIDE
    for i in prange(weight_items.shape[0]):
        gc0, gc1 = weight_items[i, 0], weight_items[i, 1]
        if blocked:
            _weight_block_rows_kernel(taps, kron, ubuf, ranges, gc0, gc1)
        else:
            for k in range(ranges.shape[0]):
                p0, p1, per = ranges[k, 0], ranges[k, 1], ranges[k, 2]
                tk = (p1 - p0) * per
                _weight_rows_kernel(taps, kron, ubuf[k, :tk * g * c * o].reshape(tk, g, c, o),
                                    gc0, gc1, p0 * per, p1 * per)
    for i in prange(work_items.shape[0]):
        slot = _thread_id()
        k, b0, b1 = work_items[i, 0], work_items[i, 1], work_items[i, 2]
        p0, p1, per = ranges[k, 0], ranges[k, 1], ranges[k, 2]
        tk = (p1 - p0) * per
        u = ubuf[k, :tk * g * c * o].reshape(tk, g, c, o)
        share = out if k == 0 else shares[k - 1].reshape(out.shape)
        for b in range(b0, b1):
            n0, n1, d0, d1 = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
            h0, h1, w0, w1 = blocks[b, 4], blocks[b, 5], blocks[b, 6], blocks[b, 7]
            tiles = (n1 - n0) * (d1 - d0) * (h1 - h0) * (w1 - w0)
            v = vbuf[slot, :tk * tiles * g * c].reshape(tk, tiles, g * c)
            _input_kernel(x5, lo_d, lo_h, lo_w, btd, bth, btw, md, mh, mw,
                          n0, n1, d0, d1, h0, h1, w0, w1, v, p0, p1, dd, dh, dw)
            mm = mbuf[slot, :tk * tiles * g * o].reshape(tk, tiles, g * o)
            _products_kernel(v, u, mm, pbuf[slot])
            _output_kernel(mm, atd, ath, atw, n0, n1, d0, d1, h0, h1, w0, w1, share, p0, p1,
                           dd, dh, dw)
    parts = ranges.shape[0]
    if parts > 1:
        flat = out.reshape(-1)
        size = flat.size
        for q in prange(parts):
            for j in range(size * q // parts, size * (q + 1) // parts):
                total = flat[j]
                for k in range(1, parts):
                    total += shares[k - 1, j]
                flat[j] = total


def _products_1d(u, v, mm):  # pragma: no cover - compiled
    # mm[t] = u[t] @ v[t] per transform point and group, channels-first: u (T, G, O, C),
    # v (T, G*C, tiles), mm (T, G*O, tiles); a group's rows are contiguous row ranges.
    t, g, o, c = u.shape
    tiles = v.shape[2]
    for p in range(t):
        for gg in range(g):
            if c == 1:  # depthwise: a broadcast product
                for j in range(o):
                    coef = u[p, gg, j, 0]
                    for i in range(tiles):
                        mm[p, gg * o + j, i] = coef * v[p, gg, i]
            elif g == 1:
                np.dot(u[p, 0], v[p], mm[p])
            else:  # a group's rows: contiguous, but typed as any-layout slices; copied
                vg = np.ascontiguousarray(v[p, gg * c:(gg + 1) * c])
                mg = np.empty((o, tiles), dtype=mm.dtype)
                np.dot(u[p, gg], vg, mg)
                mm[p, gg * o:(gg + 1) * o] = mg


def _forward_1d(x3, lo, bt, at, blocks, u, vbuf, mbuf, out):  # pragma: no cover - compiled
    # The 1-D path (Winograd._run_1d): whole blocks (n0, n1, w0, w1) per thread.
    t, g, o, c = u.shape
    for b in prange(blocks.shape[0]):
        slot = _thread_id()
        n0, n1, w0, w1 = blocks[b, 0], blocks[b, 1], blocks[b, 2], blocks[b, 3]
        tiles = (n1 - n0) * (w1 - w0)
        v = vbuf[slot, :t * g * c * tiles].reshape(t, g * c, tiles)
        mm = mbuf[slot, :t * g * o * tiles].reshape(t, g * o, tiles)
        _input_kernel_1d(x3, lo, bt, n0, n1, w0, w1, v)
        _products_1d_kernel(u, v, mm)
        _output_kernel_1d(mm, at, n0, n1, w0, w1, out)


def _driver_1d(parallel: bool = True) -> Any:
    """The compiled :func:`_forward_1d`, parallel or serial (see :func:`_driver`)."""
    def bindings() -> dict[str, Any]:
        input_kernel, output_kernel = _kernels_1d()
        return dict(_input_kernel_1d=input_kernel, _output_kernel_1d=output_kernel,
                    _products_1d_kernel=_helper("products-1d", _products_1d))

    return _build_driver("driver-1d", _forward_1d, parallel, bindings)


def _weight_form_blocks(x5, lo_h, lo_w, btd, bth, btw, m, gy, blocks, acc, started, vbuf,
                        ubuf, pbuf):  # pragma: no cover - compiled
    # The weight-gradient form (Winograd._run_weight_form): per block (k, n0, n1, d0, d1, h0,
    # h1, w0, w1) of group k's kernel tiles, V = B^T x B over the B images of the form's
    # input x5 (G*N, B, 1, H, W), U = A gy A^T of the output gradient gy (N, G*O, ...), and
    # per transform point M[t] (O x B) += U[t] (O x tiles) @ V[t] (tiles x B) into this
    # thread's accumulators acc[slot] (T, G, O, B); started[slot, k] says whether
    # acc[slot, :, k] holds a sum yet (a thread's first block of a group writes it directly).
    t, g, o, b = acc.shape[1], acc.shape[2], acc.shape[3], acc.shape[4]
    n = x5.shape[0] // g
    for i in prange(blocks.shape[0]):
        slot = _thread_id()
        k = blocks[i, 0]
        n0, n1, d0, d1 = blocks[i, 1], blocks[i, 2], blocks[i, 3], blocks[i, 4]
        h0, h1, w0, w1 = blocks[i, 5], blocks[i, 6], blocks[i, 7], blocks[i, 8]
        tiles = (n1 - n0) * (h1 - h0) * (w1 - w0)
        v = vbuf[slot, :t * tiles * b].reshape(t, tiles, b)
        _input_kernel(x5, 0, lo_h, lo_w, btd, bth, btw, 1, m, m, k * n + n0,
                      k * n + n1, d0, d1, h0, h1, w0, w1, v, 0, -1, 1, 1, 1)
        u = ubuf[slot, :t * o * tiles].reshape(t, o, tiles)
        _gradient_kernel_compiled(gy, k * o, (k + 1) * o, n0, n1, h0, h1, w0, w1, u)
        product = pbuf[slot, :o * b].reshape(o, b)
        for p in range(t):
            if started[slot, k] == 0:
                np.dot(u[p], v[p], acc[slot, p, k])
            else:
                np.dot(u[p], v[p], product)
                acc[slot, p, k] += product
        started[slot, k] = 1


_COMPILED: dict[str, Any] = {}
prange = range
#: Numba options of every kernel and driver here: GIL-free, cached on disk; fastmath only
#: "contract" (fused multiply-adds: as accurate or more, and about 1.4x faster transforms),
#: no reassociation, so the summation order is kept.
_COMPILE_OPTIONS: dict[str, Any] = dict(cache=True, fastmath={"contract"}, nogil=True,
                                        boundscheck=False)


def _kernels() -> tuple[Any, Any]:
    """Compile (or load from Numba's on-disk cache) the two transform kernels."""
    if "input" not in _COMPILED:
        import numba as nb

        # Serial kernels that release the GIL: the drivers below run them on their blocks.
        _COMPILED["input"] = nb.njit(**_COMPILE_OPTIONS)(_input_transform)
        _COMPILED["output"] = nb.njit(**_COMPILE_OPTIONS)(_output_transform)
        _COMPILED["gradient"] = nb.njit(**_COMPILE_OPTIONS)(_gradient_transform)
    return _COMPILED["input"], _COMPILED["output"]


def _driver(parallel: bool = True) -> Any:
    """The compiled :func:`_forward`: parallel (``prange``) or, where Numba cannot launch
    parallel regions safely (:func:`~._pool.compiled_parallel`), serial.

    The parallel build also serves one-thread calls (``numba.set_num_threads(1)``): each
    build takes some 10 s to compile (the transform kernels are optimized again inside
    it), so the serial one is built only where it is needed.
    """
    def bindings() -> dict[str, Any]:
        input_kernel, output_kernel = _kernels()
        return dict(_input_kernel=input_kernel, _output_kernel=output_kernel,
                    _weight_rows_kernel=_helper("weight-rows", _weight_rows),
                    _weight_block_rows_kernel=_helper("weight-block-rows", _weight_block_rows),
                    _products_kernel=_helper("products", _products))

    return _build_driver("driver", _forward, parallel, bindings)


def _helper(name: str, function: Any) -> Any:
    """``function`` compiled (serial), once."""
    if name not in _COMPILED:
        import numba as nb

        _COMPILED[name] = nb.njit(parallel=False, **_COMPILE_OPTIONS)(function)
    return _COMPILED[name]


def _build_driver(name: str, function: Any, parallel: bool, bindings: Any) -> Any:
    """Compile ``function`` (a driver whose loops are ``prange``), parallel or serial, once.

    ``bindings()`` gives the compiled functions its source calls by global name: Numba
    reads a function's globals when it compiles it, so they are bound first.
    """
    key = f"{name}-{'parallel' if parallel else 'serial'}"
    if key not in _COMPILED:
        import numba as nb

        # The drivers call numba.get_thread_id, whose symbol comes from Numba's threading
        # layer: its threads must be started before code loaded from the cache runs (a fresh
        # compilation starts them itself; a cached driver crashed without).
        compiled_parallel()
        globals().update(prange=nb.prange, _thread_id=nb.get_thread_id, **bindings())
        _COMPILED[key] = nb.njit(parallel=parallel, **_COMPILE_OPTIONS)(
            _variant(function, parallel))
    return _COMPILED[key]


def _variant(function: Any, parallel: bool) -> Any:
    """``function`` itself for the parallel compilation, a renamed copy for the serial one.

    Numba's on-disk cache names its entries by the function's qualified name and
    signature, not its compile options: the serial and the parallel compilation of one
    function overwrote each other's cache entry, and loading the other's code crashed.
    """
    if parallel:
        return function
    clone = types.FunctionType(function.__code__, function.__globals__,
                               function.__name__ + "_serial", function.__defaults__,
                               function.__closure__)
    clone.__qualname__ = function.__qualname__ + "_serial"
    return clone


def _gradient_kernel() -> Any:
    """The compiled output-gradient transform of the weight-gradient form."""
    _kernels()
    return _COMPILED["gradient"]


def _driver_weight_form(parallel: bool = True) -> Any:
    """The compiled :func:`_weight_form_blocks`, parallel or serial (see :func:`_driver`)."""
    def bindings() -> dict[str, Any]:
        return dict(_input_kernel=_kernels()[0], _gradient_kernel_compiled=_gradient_kernel())

    return _build_driver("driver-wg", _weight_form_blocks, parallel, bindings)


def numba_available() -> bool:
    if "numba" in sys.modules:
        return True
    try:
        import importlib.util

        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Tiling geometry
# ---------------------------------------------------------------------------
def tile_grid(output_shape: tuple[int, ...], m: int) -> tuple[int, ...]:
    """Tiles per spatial axis: ``ceil(out / m)`` (the last one ragged)."""
    return tuple(-(-o // m) for o in output_shape)


def _as_3d(shape: tuple[int, ...], fill: int) -> tuple[int, ...]:
    return (fill,) * (3 - len(shape)) + tuple(shape)


def _block_level(sizes: list[int], target: int) -> tuple[int, int]:
    """The tile axis blocks are cut along, and the step along it (see :func:`tile_blocks`)."""
    inner = [math.prod(sizes[k + 1:]) for k in range(len(sizes))]
    level = next(k for k in range(len(sizes)) if inner[k] <= target)
    return level, max(1, target // inner[level])


def tile_blocks(grid: tuple[int, ...], target: int) -> list[tuple[int, ...]]:
    """Split the tile grid ``(N, TD, TH, TW)`` into C-order blocks of at most ``target`` tiles.

    A block is ``(n0, n1, d0, d1, h0, h1, w0, w1)``: whole images when they are
    small, else bands along the outermost tile axis that keeps the block under
    ``target`` (a single huge image is split into rows, or into pieces of a row).
    """
    sizes = list(grid)
    level, step = _block_level(sizes, target)
    blocks = []
    for outer in np.ndindex(*sizes[:level]):
        for start in range(0, sizes[level], step):
            stop = min(start + step, sizes[level])
            block = [(i, i + 1) for i in outer] + [(start, stop)]
            block += [(0, s) for s in sizes[level + 1:]]
            blocks.append(tuple(v for pair in block for v in pair))
    return blocks


def block_extent(grid: tuple[int, ...], target: int) -> tuple[int, ...]:
    """The largest block's extent in tiles along each axis of ``grid`` (N, TD, TH, TW)."""
    sizes = list(grid)
    level, step = _block_level(sizes, target)
    return tuple(1 if k < level else min(step, s) if k == level else s
                 for k, s in enumerate(sizes))


# ---------------------------------------------------------------------------
# Dilation as interleaved phases (TensorFlow's atrous_conv2d: space_to_batch, a
# stride-1 convolution, batch_to_space). Along an axis with dilation d, output
# i = d*q + r reads padded inputs d*(q + a) + r only: phase r of the padded input
# (every d-th sample from r) correlated with the undilated kernel gives the
# outputs of phase r. The d**nd phases become batch items of one stride-1,
# dilation-1 problem that Winograd serves at full speed; each phase gets the
# same ceil(out/d) outputs and the surplus of the shorter phases is dropped.
# ---------------------------------------------------------------------------
def is_dilated(spec: ConvSpec) -> bool:
    return any(d != 1 for d in spec.dilation)


def phase_spec(spec: ConvSpec) -> ConvSpec:
    """The stride-1, dilation-1, unpadded problem on the phases of ``spec`` (itself if undilated).

    Examples
    --------
    >>> from trueconv._spec import ConvSpec
    >>> spec = ConvSpec(2, 4, 4, 1, (10, 9), (3, 3), (1, 1), (2, 3), ((2, 2), (3, 3)), "float32")
    >>> phases = phase_spec(spec)
    >>> phases.batch, phases.input_shape, phases.output_shape
    (12, (7, 5), (5, 3))
    """
    if not is_dilated(spec):
        return spec
    outputs = tuple(-(-o // d) for o, d in zip(spec.output_shape, spec.dilation))
    shape = tuple(q + k - 1 for q, k in zip(outputs, spec.kernel_shape))
    nd = spec.spatial_ndim
    return ConvSpec(spec.batch * math.prod(spec.dilation), spec.in_channels, spec.out_channels,
                    spec.groups, shape, spec.kernel_shape, (1,) * nd, (1,) * nd,
                    ((0, 0),) * nd, spec.dtype)


def _phase_slices(r: int, d: int, lo: int, size: int, length: int) -> tuple[slice, slice]:
    """``(target, source)``: where phase ``r`` (every ``d``-th padded sample from ``r``, ``length``
    of them) holds input samples, and which samples of the unpadded axis (``lo`` pad before)."""
    first = max(0, -(-(lo - r) // d))  # first j with d*j + r - lo >= 0
    last = min(length - 1, (size - 1 + lo - r) // d)
    if last < first:
        return slice(0, 0), slice(0, 0)
    start = d * first + r - lo
    return slice(first, last + 1), slice(start, start + d * (last - first) + 1, d)


def split_phases(x: np.ndarray, spec: ConvSpec, phases: ConvSpec) -> np.ndarray:
    """``(N, C, *S)`` -> ``(N * prod(d), C, *P)``: the zero-padded input's phases, phase-major.

    One strided copy per phase straight from ``x`` (the padding is the zeros the
    copies leave), with the images split over the threads.
    """
    n, c = spec.batch, spec.in_channels
    split = np.zeros((n, *spec.dilation, c, *phases.input_shape), dtype=phases.dtype)
    copies = []
    for phase in np.ndindex(*spec.dilation):
        pairs = [_phase_slices(r, d, lo, size, length) for r, d, (lo, _), size, length
                 in zip(phase, spec.dilation, spec.pad_widths, spec.input_shape,
                        phases.input_shape)]
        if all(target.stop > target.start for target, _ in pairs):
            copies.append((phase, tuple(t for t, _ in pairs), tuple(s for _, s in pairs)))

    def copy(first: int, stop: int) -> None:
        for phase, target, source in copies:
            split[(slice(first, stop), *phase, slice(None), *target)] = \
                x[(slice(first, stop), slice(None), *source)]

    _run_split(copy, n)
    return split.reshape(phases.batch, c, *phases.input_shape)


def merge_phases(out: np.ndarray, spec: ConvSpec, phases: ConvSpec) -> np.ndarray:
    """Interleave the phase outputs ``(N * prod(d), O, *Q)`` back into ``(N, O, *out)``."""
    n, o = spec.batch, spec.out_channels
    staged = out.reshape(n, *spec.dilation, o, *phases.output_shape)
    result = np.empty(spec.full_output_shape, dtype=out.dtype)

    def copy(first: int, stop: int) -> None:
        for phase in np.ndindex(*spec.dilation):
            counts = [-(-(size - r) // d) for r, d, size in zip(phase, spec.dilation, spec.output_shape)]
            result[(slice(first, stop), slice(None), *(slice(r, None, d) for r, d in zip(phase, spec.dilation)))] = \
                staged[(slice(first, stop), *phase, slice(None), *(slice(0, k) for k in counts))]

    _run_split(copy, n)
    return result


def _run_split(copy: Any, n: int) -> None:
    """Run ``copy(first, stop)`` over the images, split over the threads (NumPy copies drop the GIL)."""
    parts = max(1, min(get_num_threads(), n))
    cuts = [n * k // parts for k in range(parts + 1)]
    run_parallel([lambda a=a, b=b: copy(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a])


def _weight_taps(weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The kernel taps ``(G, O, C, K)`` (the weight itself, when contiguous in the dtype)."""
    g, o, c = spec.groups, spec.out_channels_per_group, spec.in_channels_per_group
    return np.ascontiguousarray(weight, dtype=spec.dtype).reshape(g, o, c, spec.kernel_size)


def _pair_items(groups: int, channels: int, outputs: int, tiles: int) -> int:
    """Scratch items per thread for one group's GEMM operands (grouped, non-depthwise only)."""
    return tiles * (channels + outputs) if groups > 1 and channels > 1 else 1


def _int_table(rows: list[tuple[int, ...]], width: int) -> np.ndarray:
    """``rows`` as an int64 ``(len(rows), width)`` array, for the compiled drivers."""
    return np.array(rows, dtype=np.int64).reshape(len(rows), width)


def point_ranges(m: int, nd: int, parts: int) -> list[tuple[int, int, int]]:
    """Split the transform points of an ``nd``-D F(m, 3) into ``parts`` ranges.

    The ranges cut the outermost transformed axis (D in 3-D, H in 2-D; a 1-D problem is
    one range over its untransformed H axis) into index ranges ``[p0, p1)``, each index
    holding ``per`` points: a range's points are ``[p0 * per, p1 * per)`` in the C-order
    numbering of the kernels, which take ``p0, p1`` to compute only those.

    Examples
    --------
    >>> point_ranges(4, 2, 2)
    [(0, 3, 6), (3, 6, 6)]
    >>> point_ranges(2, 3, 3), point_ranges(4, 1, 2)
    ([(0, 1, 16), (1, 2, 16), (2, 4, 16)], [(0, 1, 6)])
    """
    alpha = m + 2
    size = alpha if nd >= 2 else 1
    parts = max(1, min(parts, size))
    per = alpha**nd // size
    cuts = [size * k // parts for k in range(parts + 1)]
    return [(a, b, per) for a, b in zip(cuts[:-1], cuts[1:])]


def _point_products(v: np.ndarray, u: np.ndarray, mm: np.ndarray) -> None:
    """``mm[t] = v[t] @ u[t]`` per transform point and group: the sum over input channels.

    ``v`` (T, tiles, G*C), ``u`` (T, G, C, O), ``mm`` (T, tiles, G*O), for all or a
    range of the points.
    """
    t, tiles = v.shape[0], v.shape[1]
    _, g, c, o = u.shape
    vg = v.reshape(t, tiles, g, c)
    if c == 1:
        # one input channel per group (depthwise): a broadcast product, no GEMM calls
        np.multiply(vg, u.reshape(t, 1, g, o), out=mm.reshape(t, tiles, g, o))
    elif g == 1:
        # (T, tiles, O) = (T, tiles, C) @ (T, C, O)
        np.matmul(v, u.reshape(t, c, o), out=mm)
    else:
        # (T, G, tiles, O) = (T, G, tiles, C) @ (T, G, C, O), strided views
        np.matmul(vg.transpose(0, 2, 1, 3), u,
                  out=mm.reshape(t, tiles, g, o).transpose(0, 2, 1, 3))


class _ForwardLayout(NamedTuple):
    """A 2-D/3-D forward call's tiling and the driver's read-only tables (Winograd._layout)."""

    x_shape: tuple[int, ...]  # the input as 3-D (N, C, D, H, W)
    out_shape: tuple[int, ...]
    lows: tuple[int, int, int]  # leading zero pads per axis
    transforms: tuple[np.ndarray, ...]  # B^T per axis D, H, W, then A^T per axis
    kron: np.ndarray  # kron(Gd, Gh, Gw)
    steps: tuple[int, int, int]  # output tile per axis
    dilation: tuple[int, int, int]
    blocks: np.ndarray  # (blocks, 8): n0, n1, d0, d1, h0, h1, w0, w1 in tiles
    ranges: np.ndarray  # (parts, 3): the transform points of each part (point_ranges)
    weight_items: np.ndarray  # (items, 2): first and stop (group, channel) pair
    work: np.ndarray  # (items, 3): part, first and stop block
    parts: int
    threads: int
    parallel: bool
    block_tiles: int  # tiles in the largest block
    points: int  # transform points in the largest part


#: Layouts kept (Winograd._layout and _run_1d's); a model has a few dozen distinct layers.
_LAYOUT_CACHE_SIZE = 256
_LAYOUTS: dict[tuple[Any, ...], Any] = {}


def clear_layout_cache() -> None:
    """Forget the cached call layouts (they follow the module's tiling constants)."""
    _LAYOUTS.clear()


def _cached_layout(key: tuple[Any, ...], build: Any) -> Any:
    """``_LAYOUTS[key]``, built by ``build()`` on a miss (the cache emptied when full)."""
    found = _LAYOUTS.get(key)
    if found is None:
        found = build()
        if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
            _LAYOUTS.clear()
        _LAYOUTS[key] = found
    return found


class Winograd:
    """Winograd F(2, 3) / F(4, 3) for 3-tap kernels in 1, 2 or 3 dimensions.

    Serves stride 1, kernel 3 on every spatial axis, any dilation (split into
    stride-1 problems on interleaved phases, see :func:`phase_spec`), any
    groups, float32 and float64 (``supports()`` names the reason otherwise). Its result
    carries a transform error above the direct summation bound (see the module
    docstring and :meth:`error_bound`), so ``auto`` never picks it for inputs
    containing NaN or Inf, which a transform spreads over whole tiles.

    It also serves a second problem, *the weight-gradient form*
    (:func:`is_weight_gradient_form`): a 2-D correlation with stride 1,
    dilation 1 and a 3x3 output, from a kernel of any other shape, any pads
    (asymmetric too), any groups, float32 or float64. That is the weight
    gradient of a stride-1 3x3 layer as ``trueconv.conv_grad`` runs it (input
    ``(C, G*N, H, W)``, the output gradient ``(G*O, N, Ho, Wo)`` as the
    kernel). The output gradient is tiled instead of the output: per transform
    point ``t`` one GEMM ``M[t] (O x C) += U[t] (O x tiles) @ V[t] (tiles x C)``
    with ``V = B^T x B`` the forward input transform and ``U = A gy A^T`` the
    output-gradient tiles', then ``dW = G^T M G``. Threads split the images and
    tiles (the reduction) into blocks, each worker summing into its own ``M``.
    1-D, 3-D, strided or dilated problems of this shape are refused with that
    reason. Accuracy (``_measure_weight_form_errors``: float32, 8 -> 8
    channels, padding 1, against a float64 direct sum; reduction length =
    batch x tiles in brackets)::

        size  batch  F(2, 3)          F(4, 3)          direct float32
          16      1  2.4e-7 (64)      2.3e-6 (16)      1.6e-7
          32      4  5.5e-7 (1024)    3.7e-6 (256)     2.8e-7
          56      8  5.3e-7 (6272)    5.1e-6 (1568)    5.0e-7
          32     64  3.4e-7 (16384)   3.9e-6 (4096)    9.5e-7
          56     64  4.5e-7 (50176)   4.4e-6 (12544)   1.4e-6

    The error barely grows with the reduction (BLAS sums in blocks); the
    envelope :func:`weight_gradient_error_bound` (5e-7 for F(2, 3), 5e-6 for
    F(4, 3) at a reduction of 64, times ``sqrt(reduction / 64)``) covers it
    with a wide margin and makes :meth:`tile_size` fall back to F(2, 3) past a
    reduction of about 25,000 (e.g. batch 128 at 56x56). 64->64 channels @56
    batch 1/8 is 3x3 F(4, 3); speed (float32 weight gradient, ms, one thread /
    two, busy shared 2-core VM): batch 8 64->64 @56 10.4 / 6.0-6.6 (im2col's
    flat-shift path 28 / 15, torch 13.4 / 7.9); two threads: 128->128 @28 5.8
    (im2col 6.1), 256->256 @14 13.4 (im2col 15.1): many channels on few tiles
    make the ``O x C`` accumulators as costly as the GEMMs; the planner's cost
    model keeps im2col there and at 512 @7.

    Examples
    --------
    >>> import numpy as np
    >>> import trueconv
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> trueconv.conv(x, np.ones((1, 1, 3, 3)), algorithm="winograd")
    array([[[[45., 54.],
             [81., 90.]]]])
    >>> trueconv.conv(x, np.ones((1, 1, 3, 3)), stride=2, algorithm="winograd")
    Traceback (most recent call last):
    ...
    ValueError: conv: algorithm='winograd' cannot serve this call: stride (2, 2) != 1
    """

    name: ClassVar[str] = "winograd"
    exact: ClassVar[bool] = False

    def supports(self, spec: ConvSpec) -> str | None:
        if _weight_form_shape(spec):
            form = (f"a {spec.output_shape} output from a {spec.kernel_shape} kernel (the "
                    f"weight-gradient form)")
            if spec.spatial_ndim != 2:
                return f"{form} needs 2 spatial dims, found {spec.spatial_ndim}"
            if any(s != 1 for s in spec.stride):
                return f"{form} needs stride 1, found {spec.stride}"
            if any(d != 1 for d in spec.dilation):
                return f"{form} needs dilation 1, found {spec.dilation}"
        elif any(k != 3 for k in spec.kernel_shape):
            return (f"kernel shape {spec.kernel_shape} is not 3 on every spatial axis (nor is "
                    f"the output {spec.output_shape} 3x3 for the weight-gradient form)")
        if any(s != 1 for s in spec.stride):
            return f"stride {spec.stride} != 1"
        if spec.spatial_ndim > 3:
            return f"{spec.spatial_ndim} spatial dims (Winograd serves 1, 2 or 3)"
        if spec.dtype not in ("float32", "float64"):
            return (f"dtype {spec.dtype}: Winograd serves float32 and float64 only (integers "
                    f"would lose exactness in the fractional weight transform; use 'direct', "
                    f"'im2col' or 'fft')")
        if not numba_available():
            return "Numba is not installed (pip install numba)"
        return None

    # -- choices --------------------------------------------------------------
    def tile_size(self, spec: ConvSpec) -> int:
        """Output tile ``m`` per axis: 4 or 2 (of the phase problem when dilated).

        F(4, 3) multiplies least per output (``(6/4)**d`` vs ``(4/2)**d``), but
        its float32 error is about 10x that of F(2, 3). Rule: take F(2, 3) when
        F(4, 3)'s float32 :meth:`error_bound` exceeds the 1e-4 tolerance (never
        happens below 3-D with huge channel counts), or when the output is so
        small that 4-wide tiles compute no fewer transform-domain products than
        2-wide ones: ``alpha**d * (batch * tiles + WEIGHT_TRANSFORM_TILES)``, the
        products plus the weight transform redone per call (so 128 @28 at batch 1, 256
        @14 and 512 @7 take F(2, 3)). 1-D problems choose among F(2), F(4) and F(6, 3)
        (:meth:`_tile_size_1d`).
        """
        nd, c = spec.spatial_ndim, spec.in_channels_per_group
        if is_weight_gradient_form(spec):
            # the same rules over the kernel's tiles; the sums run over images times tiles
            if weight_gradient_error_bound(4, c * math.prod(tile_grid(spec.kernel_shape, 4)),
                                           "float32") > FLOAT32_TOLERANCE:
                return 2
            cost = {m: math.prod(t * (m + 2) for t in tile_grid(spec.kernel_shape, m))
                    for m in TILE_SIZES}
            return 4 if cost[4] < cost[2] else 2
        if nd == 1:  # the 1-D path also runs F(6, 3) (_run_1d, TRANSFORMS_1D)
            return self._tile_size_1d(spec)
        if error_bound_for(4, nd, c, "float32") > FLOAT32_TOLERANCE:
            return 2
        spec = phase_spec(spec)
        # transform-domain products, plus the per-call weight transform (alpha**d entries
        # per channel pair, memory-bound: WEIGHT_TRANSFORM_TILES tiles' worth of products)
        cost = {m: (m + 2) ** nd * (spec.batch * math.prod(tile_grid(spec.output_shape, m))
                                    + WEIGHT_TRANSFORM_TILES)
                for m in TILE_SIZES}
        return 4 if cost[4] < cost[2] else 2

    def error_bound(self, spec: ConvSpec) -> float:
        """Expected max error relative to the output scale for ``spec`` and its dtype.

        An envelope (about 2x) of the measurements in the module docstring for
        the tile :meth:`tile_size` picks: in float32 at C <= 64, 7e-7 for
        F(2x2, 3x3) and 1.2e-5 for F(4x4, 3x3) (1-D: 6e-7 / 3e-6; 3-D: 8e-7 /
        4e-5), times ``sqrt(C / 64)`` past 64 input channels per group; float64
        scales these by ``2 * eps64 / eps32`` (about 1e-15 to 1.5e-13). It is a
        statistical envelope for data of one scale (N(0, 1)-like), not a
        worst-case bound: like FFT, Winograd's error is normwise, so outputs
        much smaller than the largest carry a larger relative error.
        """
        m = self.tile_size(spec)
        if is_weight_gradient_form(spec):
            reduction = spec.in_channels_per_group * math.prod(tile_grid(spec.kernel_shape, m))
            return weight_gradient_error_bound(m, reduction, spec.dtype)
        return error_bound_for(m, spec.spatial_ndim, spec.in_channels_per_group, spec.dtype)

    # -- memory ---------------------------------------------------------------
    def _geometry(self, spec: ConvSpec, m: int | None = None) -> tuple[int, int, tuple[int, ...]]:
        """``(m, alpha, tiles per axis)`` of ``spec``: F(m, 3) reads alpha = m + 2 per tile."""
        m = self.tile_size(spec) if m is None else m
        return m, m + 2, tile_grid(spec.output_shape, m)

    def _block_target(self, spec: ConvSpec, alpha: int) -> int:
        """Tiles per block so that the block's V and M stay under ``CHUNK_BYTES``."""
        channels = spec.in_channels + spec.out_channels
        per_tile = alpha**spec.spatial_ndim * channels * spec.itemsize
        tiles = max(CHUNK_BYTES // per_tile, MIN_BLOCK_TILES)
        # a single huge layer must still stay well under the memory limit
        return max(1, min(tiles, get_memory_limit() // (8 * per_tile)))

    def _block_plan(self, spec: ConvSpec, m: int) -> tuple[int, int]:
        """Return ``(target tiles per block, worker threads)`` for a run of ``spec``."""
        total = spec.batch * math.prod(tile_grid(spec.output_shape, m))
        threads = max(1, get_num_threads())
        # at least one block per thread when there is enough work: blocks under
        # MIN_SPLIT_TILES are not worth a thread (each re-reads all of U, runs a skinnier GEMM
        # and pays a thread handoff)
        split = max(MIN_SPLIT_TILES, -(-total // threads))
        target = min(self._block_target(spec, m + 2), split)
        # as many blocks, of even sizes: 196 tiles in blocks of 128 made a 126- and a 70-tile
        # block (9 and 5 rows), and the two threads waited on the larger; 98 makes 7 + 7 rows
        target = max(1, -(-total // -(-total // target)))
        return target, max(1, min(threads, -(-total // target)))

    def _point_plan(self, spec: ConvSpec, m: int) -> tuple[int, int]:
        """Return ``(point ranges, target tiles per block)``; 1 range: split by tile blocks.

        Where the tile blocks would leave threads idle (:meth:`_block_plan`: too few
        tiles, e.g. 49 in a batch-1 layer of 128 channels @28, 16 of 256 @14, 128 of
        256 @14 at batch 8) the threads split the transform points instead
        (:meth:`_run`): the ``alpha`` indices of the outermost transformed axis
        (H in 2-D, D in 3-D; 1-D problems keep the block split). A worker's block holds
        ``1/parts`` of the points per tile, so its blocks are that much larger.

        Measured on the shared 2-core VM (lightly loaded, float32, batch 1, ms per call,
        median of 12-15 alternating blocks, two threads / one): 128->128 @28 0.96-1.14 /
        0.95-1.36 over points; 256->256 @14 2.1-2.2 / 2.4-3.2 (its 2.4M-entry ``U`` is
        split too); 64->64 @56 0.91-0.99 / 0.99-1.25 in two 98-tile blocks, 0.98-1.12
        over points (a point range repeats its images' channels-last copy and the output
        transform's last stages, so where tile blocks keep the threads busy they win).
        """
        threads = max(1, get_num_threads())
        if threads == 1 or spec.spatial_ndim < 2 or self._block_plan(spec, m)[1] >= threads \
                or not compiled_parallel():
            return 1, 0
        parts = min(threads, m + 2)
        return parts, self._block_target(spec, m + 2) * parts

    def workspace_bytes(self, spec: ConvSpec) -> int:
        """Bytes allocated besides ``x``, ``weight`` and the output.

        The transformed weights ``U`` (plus a converted copy of the taps they
        are made from, when the weight is not already contiguous in the compute
        dtype) and, per worker thread, one block's ``V`` and ``M``, the
        compiled kernels' scratch (the block's channels-last input band and
        output rows) and, for grouped layers, one group's GEMM operands.
        Independent of the image size beyond one block, so a
        single huge image stays bounded. A non-contiguous ``x`` is copied once
        more (not counted: the engine passes contiguous arrays).
        """
        if is_weight_gradient_form(spec):
            return self._weight_form_workspace(spec)
        if is_dilated(spec) and spec.spatial_ndim == 1:  # split into phase copies (run)
            phases = phase_spec(spec)
            staged = (phases.batch * phases.in_channels * math.prod(phases.input_shape) +
                      math.prod(phases.full_output_shape)) * spec.itemsize
            return staged + self.workspace_bytes(phases)
        # a dilated problem is tiled as its phases, read and written in place by the kernels
        output_size = math.prod(spec.full_output_shape)
        spec = phase_spec(spec)
        m, alpha, grid = self._geometry(spec)
        t = alpha**spec.spatial_ndim
        c, o, g = spec.in_channels_per_group, spec.out_channels_per_group, spec.groups
        parts, target = self._point_plan(spec, m)
        shares = 0
        if parts > 1:  # per worker its range's points (the largest range), and its share
            workers = parts
            p0, p1, per = point_ranges(m, spec.spatial_ndim, parts)[-1]
            points = (p1 - p0) * per
            weights = (points * parts + spec.kernel_size) * g * c * o
            shares = (parts - 1) * output_size
        else:
            target, workers = self._block_plan(spec, m)
            points = t
            weights = (t + spec.kernel_size) * g * c * o
        v_and_m = points * (spec.in_channels + spec.out_channels) * target
        # the kernels' scratch, per axis (1-D/2-D run as 3-D with 1-wide untiled axes)
        ext = block_extent((spec.batch, *_as_3d(grid, 1)), target)[1:]
        steps = _as_3d((m,) * spec.spatial_ndim, 1)
        alphas = _as_3d((alpha,) * spec.spatial_ndim, 1)
        bd, bh, bw = ((e - 1) * s + a for e, s, a in zip(ext, steps, alphas))
        ad, ah, _ = alphas
        md, mh, mw = steps
        band = (bd * bh * bw + (ad * bh * bw if ad > 1 else 0) + ah * bw) * spec.in_channels
        rows = (ad * ah + ad * mh + mh) * ext[2] * mw * spec.out_channels
        pair = _pair_items(g, c, o, target)  # a grouped GEMM's contiguous operands
        return (weights + shares + workers * (v_and_m + band + rows + pair)) * spec.itemsize

    # -- compute --------------------------------------------------------------
    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec,
            tile: int | None = None) -> np.ndarray:
        """Return the cross-correlation; ``tile`` forces F(2, 3) or F(4, 3)."""
        # Every BLAS call below is small: one BLAS thread per worker (see single_threaded_blas).
        with single_threaded_blas():
            if is_weight_gradient_form(spec):
                return self._run_weight_form(x, weight, spec, tile)
            if not is_dilated(spec) or spec.spatial_ndim > 1:
                return self._run(x, weight, spec, tile)
            phases = phase_spec(spec)  # 1-D: _run_1d runs on phase copies
            out = self._run(split_phases(x, spec, phases), weight, phases, tile)
            return merge_phases(out, spec, phases)

    def _layout(self, spec: ConvSpec, tile: int | None) -> _ForwardLayout:
        """The tiling of a 2-D/3-D forward call (:meth:`_run`), cached per problem and setting.

        Everything here follows from the problem, the thread count, the threading layer
        and the memory limit; built per call it cost 50-80 us of Python, a tenth of a
        batch-1 layer's 0.8 ms.
        """
        key = (spec, tile, get_num_threads(), compiled_parallel(), get_memory_limit())
        return _cached_layout(key, lambda: self._build_layout(spec, tile))

    def _build_layout(self, spec: ConvSpec, tile: int | None) -> _ForwardLayout:
        dtype = np.dtype(spec.dtype)
        nd = spec.spatial_ndim
        # A dilated problem is tiled as its phases (phase_spec: prod(dilation) undilated
        # images per image), which the kernels read from x and write to the output in place.
        phases = phase_spec(spec)
        m, alpha, grid = self._geometry(phases, tile)
        g, c, o = spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
        # Per-axis transforms (leading untiled axes of 1-D/2-D problems get 1x1 identities)
        # and kron(Gd, Gh, Gw), built once per (m, nd, dtype).
        (atd, btd), (ath, bth), (atw, btw), kron = _call_transforms(m, nd, dtype)
        full_grid = (phases.batch, *_as_3d(grid, 1))
        parts, target = self._point_plan(phases, m)
        if parts > 1:  # the point split: one work item per part, all blocks each
            blocks = tile_blocks(full_grid, target)
            ranges = point_ranges(m, nd, parts)
            parts = len(ranges)
            threads = parts
            work = [(k, 0, len(blocks)) for k in range(parts)]
        else:  # the block split: every point in one part, one work item per block
            target, threads = self._block_plan(phases, m)
            blocks = tile_blocks(full_grid, target)
            ranges = point_ranges(m, nd, 1)
            threads = min(threads, len(blocks))
            work = [(0, b, b + 1) for b in range(len(blocks))]
        # U = G g G^T is computed in the GEMMs' (T, G, C, O) layout (which they run markedly
        # faster on than a transposed U), every part's rows at once per channel range (the
        # gather, not the sums, is its cost); large weights split the channels
        entries = alpha**nd * g * c * o
        split = min(threads, g * c) if entries >= _PARALLEL_WEIGHT_ENTRIES else 1
        weight_items = [(g * c * i // split, g * c * (i + 1) // split) for i in range(split)]
        return _ForwardLayout(
            x_shape=(spec.batch, spec.in_channels, *_as_3d(spec.input_shape, 1)),
            out_shape=(spec.batch, g * o, *_as_3d(spec.output_shape, 1)),
            lows=_as_3d(tuple(lo for lo, _ in spec.pad_widths), 0),
            transforms=(btd, bth, btw, atd, ath, atw), kron=kron,
            steps=_as_3d((m,) * nd, 1), dilation=_as_3d(spec.dilation, 1),
            blocks=_int_table(blocks, 8), ranges=_int_table(ranges, 3),
            weight_items=_int_table(weight_items, 2), work=_int_table(work, 3),
            parts=parts, threads=threads, parallel=compiled_parallel(),
            block_tiles=max(math.prod(b[2 * i + 1] - b[2 * i] for i in range(4))
                            for b in blocks),
            points=max((p1 - p0) * per for p0, p1, per in ranges))

    def _run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec,
             tile: int | None) -> np.ndarray:
        """The 2-D/3-D forward pass: one call of the compiled driver :func:`_forward`.

        The threads split the tile blocks (:meth:`_block_plan`) or, where there are too
        few tiles for a block per thread (:meth:`_point_plan`: batch-1 layers on small
        images), the transform points: part ``k`` of the points whose index on the
        outermost transformed axis lies in its range runs, for all tiles, its part of
        every stage: its rows of ``U``, the input transform into its points, its GEMMs
        (full ``(tiles, C) @ (C, O)`` products, not thinner ones) and its share of the
        output transform, a partial sum of the output; the shares are added at the end
        (one pass over the output). Tile-block splitting gave each block a skinnier GEMM
        and a full ``U`` to read, and a batch-1 layer ran slower on two threads than on
        one.
        """
        if spec.spatial_ndim == 1:  # channels-first kernels of its own (_run_1d)
            return self._run_1d(x, weight, spec, tile)
        dtype = np.dtype(spec.dtype)
        lay = self._layout(spec, tile)
        g = spec.groups
        c, o = spec.in_channels_per_group, spec.out_channels_per_group
        # The kernels read the unpadded input; pads (and whole-tile rounding) are implicit zeros.
        x5 = np.ascontiguousarray(x, dtype=dtype).reshape(lay.x_shape)
        slots = apply_numba_threads(lay.threads) if lay.parallel else 1
        out = np.empty(lay.out_shape, dtype=dtype)
        ubuf = scratch("winograd.u", lay.parts * lay.points * g * c * o, dtype)
        per_slot = lay.points * lay.block_tiles  # one block's V and M per thread
        vbuf = scratch("winograd.v", slots * per_slot * g * c, dtype).reshape(slots, -1)
        mbuf = scratch("winograd.m", slots * per_slot * g * o, dtype).reshape(slots, -1)
        pbuf = scratch("winograd.pair", slots * _pair_items(g, c, o, lay.block_tiles),
                       dtype).reshape(slots, -1)
        shares = scratch("winograd.shares", (lay.parts - 1) * out.size, dtype)
        _driver(lay.parallel)(x5, *lay.lows, *lay.transforms, *lay.steps, *lay.dilation,
                              lay.blocks, _weight_taps(weight, spec), lay.kron, lay.ranges,
                              lay.weight_items, lay.work, ubuf.reshape(lay.parts, -1), vbuf,
                              mbuf, pbuf, shares.reshape(lay.parts - 1, out.size), out)
        return out.reshape(spec.full_output_shape)

    # -- the 1-D path ---------------------------------------------------------------
    def _block_plan_1d(self, spec: ConvSpec, m: int) -> tuple[int, int]:
        """Return ``(target tiles per block, worker threads)`` for a 1-D run of ``spec``."""
        per_tile = (m + 2) * (spec.in_channels + spec.out_channels) * spec.itemsize
        tiles = max(BLOCK_BYTES_1D // per_tile, MIN_BLOCK_TILES_1D)
        # never more V and M than workspace_bytes counts per worker (_block_plan's blocks
        # of tile_size's tiles, which also respect the memory limit)
        counted = self.tile_size(spec)
        room = (counted + 2) * self._block_plan(spec, counted)[0] // (m + 2)
        target = max(1, min(tiles, room))
        total = spec.batch * tile_grid(spec.output_shape, m)[0]
        # a second thread only for at least MIN_SPLIT_MACS_1D multiply-adds per extra thread
        macs = total * (m + 2) * spec.groups * spec.in_channels_per_group * (
            spec.out_channels_per_group)
        return target, max(1, min(get_num_threads(), macs // MIN_SPLIT_MACS_1D))

    def _tile_size_1d(self, spec: ConvSpec) -> int:
        """Output tile ``m`` of a 1-D run: 6, 4 or 2 (of the phase problem when dilated).

        The tile with the fewest transform-domain products, ``ceil(out/m) * (m + 2)``
        (ties to the smaller, more accurate tile), among those whose float32
        :func:`error_bound_for` stays within the 1e-4 tolerance. F(6, 3) computes 11%
        fewer products than F(4, 3) and ran 8-15% faster on 64->64 channels, L = 4096
        (float32 and float64, one and two threads); its error is about 1.4x F(4, 3)'s.
        """
        c = spec.in_channels_per_group
        (out,) = phase_spec(spec).output_shape
        sizes = [m for m in TILE_SIZES_1D
                 if error_bound_for(m, 1, c, "float32") <= FLOAT32_TOLERANCE] or [2]
        return min(sizes, key=lambda m: (-(-out // m) * (m + 2), m))

    def _run_1d(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec,
                tile: int | None) -> np.ndarray:
        """The 1-D problem channels-first: ``M[t] (O x tiles) = U[t] (O x C) @ V[t] (C x tiles)``.

        The input transform reads contiguous channel rows of ``x`` (N, C, L) and
        writes ``V`` as (T, C, tiles); the GEMM per (point, group) needs no
        transposed operand; the output transform writes contiguous rows of the
        output (N, O, Lout). Blocks of about ``BLOCK_BYTES_1D`` of ``V`` and
        ``M`` (256 F(6, 3) tiles at C = O = 64 in float32) keep a block in its
        core's L2 between the three steps; the workers pull blocks from a shared
        queue, one BLAS thread each.
        """
        dtype = np.dtype(spec.dtype)
        def build() -> tuple[int, np.ndarray, int, int]:
            m = self._tile_size_1d(spec) if tile is None else tile
            target, workers = self._block_plan_1d(spec, m)
            blocks = blocks_1d(spec.batch, tile_grid(spec.output_shape, m)[0], target, workers)
            block_tiles = max([(b[1] - b[0]) * (b[3] - b[2]) for b in blocks], default=0)
            return m, _int_table(blocks, 4), block_tiles, min(workers, len(blocks))

        # the tiling follows from the problem and the settings: cached (see _layout)
        key = ("1d", spec, tile, get_num_threads(), compiled_parallel(), get_memory_limit())
        m, blocks, block_tiles, workers = _cached_layout(key, build)
        t = m + 2
        n, g = spec.batch, spec.groups
        c, o = spec.in_channels_per_group, spec.out_channels_per_group
        (lo, _), = spec.pad_widths
        x3 = np.ascontiguousarray(x, dtype=dtype).reshape(n, g * c, spec.input_shape[0])
        at, bt, gmat = _transforms_1d(m, dtype)
        out = np.empty(spec.full_output_shape, dtype=dtype)
        if not len(blocks):
            return out

        # U[t] = G g: one (T, 3) @ (3, G*O*C) product, the taps read in place (transposed
        # BLAS operand), laid out (T, G, O, C) for the GEMMs
        taps = np.ascontiguousarray(weight, dtype=dtype).reshape(g * o * c, 3)
        u = scratch("winograd.1d.u", t * g * o * c, dtype).reshape(t, g * o * c)
        np.matmul(gmat, taps.T, out=u)
        u = u.reshape(t, g, o, c)
        parallel = compiled_parallel()
        slots = apply_numba_threads(workers) if parallel else 1
        vbuf = scratch("winograd.1d.v", slots * t * g * c * block_tiles, dtype).reshape(slots, -1)
        mbuf = scratch("winograd.1d.m", slots * t * g * o * block_tiles, dtype).reshape(slots, -1)
        # one compiled launch: the threads take whole blocks (transform in, products,
        # transform out), one BLAS thread each (see _driver)
        _driver_1d(parallel)(x3, lo, bt, at, blocks, u, vbuf, mbuf, out)
        return out

    # -- the weight-gradient form ----------------------------------------------
    # Names as in the forward pass of the layer whose weight gradient this is: the form's
    # batch B is that layer's input channels C, its input channels (per group) the layer's
    # batch N, its kernel the output gradient (G*O, N, Ho, Wo), its output (C, G*O, 3, 3).
    def _weight_form_plan(self, spec: ConvSpec, m: int) -> tuple[int, int]:
        """Return ``(target tiles per block, worker threads)`` of a weight-form run."""
        grid = tile_grid(spec.kernel_shape, m)
        total = spec.groups * spec.in_channels_per_group * math.prod(grid)
        per_tile = (m + 2) ** 2 * (spec.batch + spec.out_channels_per_group) * spec.itemsize
        # the tiles are the GEMMs' reduction axis: long blocks amortize each block's
        # accumulation into M (O x B per point), but a block's V and U must stay in cache
        # between its transforms and its GEMMs: 512-tile blocks (9.4 MB at 64 -> 64) ran
        # 8.1-8.4 ms against 6.0-6.6 for 128-256 tiles (3x3 64->64 @56 batch 8, two threads,
        # blocks of calls; one thread 13.7 vs 9.8-10.4)
        tiles = max(CHUNK_BYTES // per_tile, WG_MIN_BLOCK_TILES)
        tiles = max(1, min(tiles, get_memory_limit() // (8 * per_tile)))
        threads = max(1, get_num_threads())
        split = max(MIN_SPLIT_TILES, -(-total // threads))
        target = min(tiles, split)
        return target, max(1, min(threads, -(-total // target)))

    def weight_form_m_passes(self, spec: ConvSpec) -> int:
        """Passes over the ``M`` accumulators (T x G x O x B) a weight-form run makes.

        A worker's first block writes ``M`` (one pass), each further block writes a
        product and adds it (three); the workers' ``M``s are added (two per extra
        worker) and read once by the final transform. For many channels on few
        tiles (256->256 @14, 512->512 @7) these passes cost as much as the GEMMs;
        the planner counts them (``_planner.cost_features``).
        """
        m = self.tile_size(spec)
        target, workers = self._weight_form_plan(spec, m)
        grid = tile_grid(spec.kernel_shape, m)
        blocks = spec.groups * len(tile_blocks((spec.in_channels_per_group, 1, *grid), target))
        workers = min(workers, blocks)
        return workers + 3 * (blocks - workers) + 2 * (workers - 1) + 1

    def _weight_form_workspace(self, spec: ConvSpec) -> int:
        """Workspace of the weight-gradient form: per worker one block's ``V`` (tiles x B) and
        ``U`` (O x tiles) per transform point, its ``M`` accumulator (O x B per point and
        group) and the input transform's band; the output gradient padded to whole tiles
        (when its shape is not a multiple of the tile) and the sum of the workers' ``M``s.
        """
        m = self.tile_size(spec)
        t = (m + 2) ** 2
        grid = tile_grid(spec.kernel_shape, m)
        b, g = spec.batch, spec.groups
        n, o = spec.in_channels_per_group, spec.out_channels_per_group
        target, workers = self._weight_form_plan(spec, m)
        ext = block_extent((n, 1, *grid), target)
        tiles = math.prod(ext)
        bh, bw = (ext[2] - 1) * m + m + 2, (ext[3] - 1) * m + m + 2
        band = (bh * bw + (m + 2) * bw) * b
        per_worker = t * (tiles * (b + o) + (g + 1) * o * b) + band + (m + 2) * m * ext[3]
        padded = 0
        if any(k % m for k in spec.kernel_shape):
            padded = n * g * o * math.prod(q * m for q in grid)
        return (workers * per_worker + padded + t * g * o * b) * spec.itemsize

    def _run_weight_form(self, x: np.ndarray, weight: np.ndarray,
                         spec: ConvSpec, tile: int | None) -> np.ndarray:
        dtype = np.dtype(spec.dtype)
        m = self.tile_size(spec) if tile is None else tile
        t = (m + 2) ** 2
        b, g = spec.batch, spec.groups
        n, o = spec.in_channels_per_group, spec.out_channels_per_group
        grid = tile_grid(spec.kernel_shape, m)
        # x (B, G*N, H, W) -> (G*N, B, 1, H, W): the images as the input transform's batch
        # and B as its channels (a view of the layer's contiguous input when G == 1)
        x5 = np.ascontiguousarray(x.swapaxes(0, 1), dtype=dtype)
        x5 = x5.reshape(g * n, b, 1, *spec.input_shape)
        lows = (0, *(lo for lo, _ in spec.pad_widths))
        # kernel (G*O, N, Ho, Wo) -> (N, G*O, Ho, Wo), zero-padded to whole tiles if ragged
        gy = weight.swapaxes(0, 1)
        if any(k % m for k in spec.kernel_shape):
            padded = np.zeros((n, g * o, *(q * m for q in grid)), dtype=dtype)
            padded[:, :, : spec.kernel_shape[0], : spec.kernel_shape[1]] = gy
            gy = padded
        else:
            gy = np.ascontiguousarray(gy, dtype=dtype)
        (_, btd), (_, bth), (_, btw), _ = _call_transforms(m, 2, dtype)

        target, workers = self._weight_form_plan(spec, m)
        blocks = [(k, block) for k in range(g) for block in tile_blocks((n, 1, *grid), target)]
        block_tiles = math.prod(block_extent((n, 1, *grid), target))
        workers = min(workers, len(blocks))
        if not blocks or b == 0 or o == 0:  # no images, or an empty output: a zero gradient
            return np.zeros(spec.full_output_shape, dtype=dtype)
        parallel = compiled_parallel()
        slots = apply_numba_threads(workers) if parallel else 1
        # per thread: its M accumulators (T, G, O, B), one block's V and U, one product
        acc = scratch("winograd.wg.m", slots * t * g * o * b, dtype).reshape(slots, t, g, o, b)
        started = np.zeros((slots, g), dtype=np.int64)
        vbuf = scratch("winograd.wg.v", slots * t * block_tiles * b, dtype).reshape(slots, -1)
        ubuf = scratch("winograd.wg.u", slots * t * o * block_tiles, dtype).reshape(slots, -1)
        pbuf = scratch("winograd.wg.p", slots * o * b, dtype).reshape(slots, -1)
        _driver_weight_form(parallel)(x5, lows[1], lows[2], btd, bth, btw, m, gy,
                                      _int_table([(k, *block) for k, block in blocks], 9),
                                      acc, started, vbuf, ubuf, pbuf)
        # the threads' Ms added (one that never started a group holds garbage there)
        total = None
        for slot in range(slots):
            for k in range(g):
                if not started[slot, k]:
                    acc[slot, :, k] = 0
            total = acc[slot].copy() if total is None else np.add(total, acc[slot], out=total)
        # dW = G^T M G per (group, O, B): kron(G, G)^T (9 x T) @ M (T x G*O*B)
        kron = _call_transforms(m, 2, dtype)[3]
        out = (kron.T @ total.reshape(t, g * o * b)).reshape(3, 3, g * o, b)
        return np.ascontiguousarray(out.transpose(3, 2, 0, 1))


#: The per-call weight transform in the tile rule (Winograd.tile_size), in tiles' worth of
#: transform-domain products: each U entry is a 9-term sum written once, about as long as
#: 100 tiles' multiply-adds on it in BLAS. Measured at two threads (blocks of calls after an
#: idle pause, ms): 128->128 @28 b1 F(2) 1.00 vs F(4) 1.19; 256->256 @14 b8 4.5 vs 5.3,
#: b1 1.4 vs 2.2; 64->64 @56 keeps F(4) (rule: up to 274 at batch 1). The earlier 20 was
#: fitted to a batched-BLAS weight transform at one thread.
WEIGHT_TRANSFORM_TILES = 100
#: Input channels per block of the weight transform's gather (_weight_rows), used where one
#: output channel's taps span WEIGHT_GATHER_STRIDE bytes or more.
WEIGHT_BLOCK = 16
WEIGHT_GATHER_STRIDE = 8192
#: From this many U entries (T * G * C * O) on, the weight transform's channels are split
#: over the threads (inside the driver's parallel launch, a split costs microseconds; a
#: 64->64 F(4x4) layer has 147K entries, about 40 us of one core).
_PARALLEL_WEIGHT_ENTRIES = 1 << 16


def _measure_errors() -> None:  # pragma: no cover - regenerates the module docstring's table
    """Print the accuracy table of the module docstring.

    Run ``python -c "from trueconv.algorithms.winograd import _measure_errors as f; f()"``.
    The reference is a float64 direct sum (``numpy.einsum`` over sliding windows).
    """
    rng = np.random.default_rng(0)
    shapes = {1: (1024,), 2: (32, 32), 3: (10, 10, 10)}
    algo = Winograd()

    def reference(x: np.ndarray, w: np.ndarray, nd: int) -> np.ndarray:
        xp = np.pad(x, [(0, 0), (0, 0)] + [(1, 1)] * nd)
        axes = tuple(range(2, 2 + nd))
        windows = np.lib.stride_tricks.sliding_window_view(xp, (3,) * nd, axis=axes)
        letters = "xyz"[:nd]
        taps = letters.upper()
        return np.einsum(f"nc{letters}{taps},oc{taps}->no{letters}", windows, w)

    print("tile     dims  C=4 f32  C=64 f32  C=256 f32  C=64 f64  direct C=64 f32")
    for m in TILE_SIZES:
        for nd, shape in shapes.items():
            row = []
            for c, dtype in ((4, "float32"), (64, "float32"), (256, "float32"), (64, "float64"),
                             (64, "")):
                x = rng.standard_normal((2, c, *shape))
                w = rng.standard_normal((8, c, *(3,) * nd))
                ref = reference(x, w, nd)
                if dtype:
                    spec = ConvSpec(2, c, 8, 1, shape, (3,) * nd, (1,) * nd, (1,) * nd,
                                    ((1, 1),) * nd, dtype)
                    y = algo.run(x.astype(dtype), w.astype(dtype), spec, tile=m)
                else:  # float32 direct summation, for scale
                    y = reference(x.astype(np.float32), w.astype(np.float32), nd)
                row.append(float(np.abs(y - ref).max() / np.abs(ref).max()))
            print(f"F({m}, 3)  {nd}-D   " + "  ".join(f"{e:.1e}" for e in row), flush=True)


def _measure_weight_form_errors() -> None:  # pragma: no cover - regenerates the class table
    """Print the weight-gradient form's accuracy table (:class:`Winograd` docstring).

    Run ``python -c "from trueconv.algorithms.winograd import _measure_weight_form_errors as
    f; f()"``. N(0, 1) data, 8 input and 8 output channels, padding 1, float32 against a
    float64 direct sum; the reduction length is batch times tiles per image.
    """
    rng = np.random.default_rng(0)
    algo = Winograd()
    print("size  batch  F(2,3) err (reduction)  F(4,3) err (reduction)  direct f32")
    for size, batch in ((16, 1), (32, 4), (56, 8), (32, 64), (56, 64)):
        c = o = 8
        x = rng.standard_normal((batch, c, size, size))
        gy = rng.standard_normal((batch, o, size, size))
        spec = ConvSpec(c, batch, o, 1, (size, size), (size, size), (1, 1), (1, 1),
                        ((1, 1), (1, 1)), "float32")
        xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
        windows = np.lib.stride_tricks.sliding_window_view(xp, (size, size), axis=(2, 3))
        ref = np.einsum("ncijxy,noxy->oc" "ij", windows, gy)
        ref32 = np.einsum("ncijxy,noxy->oc" "ij", windows.astype(np.float32),
                          gy.astype(np.float32))
        row = []
        for m in TILE_SIZES:
            got = algo.run(x.transpose(1, 0, 2, 3).astype(np.float32),
                           gy.transpose(1, 0, 2, 3).astype(np.float32), spec, tile=m)
            err = np.abs(got.transpose(1, 0, 2, 3) - ref).max() / np.abs(ref).max()
            row.append(f"{err:.1e} ({batch * math.prod(tile_grid((size, size), m))})")
        direct = np.abs(ref32 - ref).max() / np.abs(ref).max()
        print(f"{size:4d}  {batch:5d}  " + "  ".join(row) + f"  {direct:.1e}", flush=True)


def _measure_speed(threads: int = 2, repeats: int = 9) -> None:  # pragma: no cover - benchmark
    """Time Winograd, im2col and torch (if installed) on the 3x3 layer rows of issue 3.

    Run ``python -c "from trueconv.algorithms.winograd import _measure_speed as f; f()"``.
    Prints the median wall and CPU milliseconds per call (float32, batch 8, padding 1). CPU
    time is the fairer figure on a shared machine: it is what the call costs, load aside.
    """
    import time

    from .._threads import set_num_threads
    from .im2col import Im2col

    set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None

    def timed(fn: Any) -> tuple[float, float]:
        fn()
        fn()
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        return float(np.median(walls)) * 1e3, float(np.median(cpus)) * 1e3

    rng = np.random.default_rng(0)
    algo = Winograd()
    for channels, size in ((64, 56), (128, 28), (256, 14), (512, 7)):
        x = rng.standard_normal((8, channels, size, size)).astype(np.float32)
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
        spec = ConvSpec(8, channels, channels, 1, (size, size), (3, 3), (1, 1), (1, 1),
                        ((1, 1), (1, 1)), "float32")
        rows = {f"winograd F({algo.tile_size(spec)})": timed(lambda: algo.run(x, w, spec)),
                "im2col": timed(lambda: Im2col().run(x, w, spec))}
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            rows["torch"] = timed(lambda: torch.nn.functional.conv2d(xt, wt, padding=1))
        print(f"3x3 {channels}->{channels} @{size} b8, {threads} threads: " +
              ", ".join(f"{k} {wall:.1f} ms wall / {cpu:.1f} ms cpu"
                        for k, (wall, cpu) in rows.items()),
              flush=True)
