"""Winograd minimal filtering F(m, 3) for 3-tap kernels, in 1, 2 and 3 dimensions.

Lavin & Gray, *Fast Algorithms for Convolutional Neural Networks*, CVPR 2016
(arXiv:1509.09308). An output tile of ``m`` samples per axis is computed from an
input tile of ``alpha = m + 2`` samples as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (2-D; separable in every axis)

so the ``m**d * 3**d`` multiplies of a tile become ``alpha**d`` per (input,
output) channel pair. Summing over input channels happens in the transform
domain, as one matrix product per transform point ``t``::

    M[t] = U[t] @ V[t]       (T, O, C) @ (T, C, tiles) -> (T, O, tiles)

which is where the time goes (BLAS). The input transform ``V = B^T d B`` and
the output transform ``A^T M A`` are compiled Numba loops that apply the
separable 1-D transforms axis by axis, skip the zero coefficients, and write
straight into the GEMM layout and into the (cropped) output. Ragged borders are
handled by padding the input so that every axis holds a whole number of tiles
and cropping the last tile row.

Transforms (generated exactly by Toom-Cook interpolation with rational
arithmetic; see ``tests/test_algorithms.py::test_winograd_matrices_exact``):

* F(2, 3): points 0, +1, -1, infinity (Lavin & Gray eq. 7).
* F(4, 3): points 0, +1, -1, +2, -2, infinity (Lavin & Gray section 4.2).

Accuracy (measured on this machine with ``python -m trueconv.algorithms.winograd``:
N(0, 1) data, ``max|y - ref| / max|ref|`` against a float64 direct reference,
batch 2, 16x16 (2-D), 256 (1-D), 8x8x8 (3-D)):

========  ==========  ===========  ===========  ===========  ===========
tile      dims        C=4 f32      C=64 f32     C=256 f32    C=64 f64
========  ==========  ===========  ===========  ===========  ===========
F(2, 3)   1-D         1.0e-7       1.5e-7       1.8e-7       2.4e-16
F(4, 3)   1-D         3.4e-7       4.7e-7       5.3e-7       8.8e-16
F(2, 3)   2-D         1.8e-7       2.4e-7       2.7e-7       4.2e-16
F(4, 3)   2-D         1.6e-6       2.3e-6       2.5e-6       4.2e-15
F(2, 3)   3-D         2.5e-7       3.4e-7       3.7e-7       5.7e-16
F(4, 3)   3-D         9.3e-6       1.2e-5       1.4e-5       2.3e-14
========  ==========  ===========  ===========  ===========  ===========

(direct float32 summation, for comparison: about 1e-7 to 2e-7.) The error is
amplified by the transforms, not by the channel sum, so it grows only slowly
with ``C``; :func:`Winograd.error_bound` is a safe envelope of this table, and
the tile is chosen by :func:`Winograd.tile_size`.
"""

from __future__ import annotations

import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, ClassVar, Iterator

import numpy as np

from .._memory import get_memory_limit
from .._spec import ConvSpec
from .._threads import get_num_threads

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

# Measured max-rel float32 error at C=64 (module docstring) per (m, spatial_ndim), rounded up
# by about 2x, and its float64 counterpart; the bound grows like log2(C) past C=64.
_FLOAT32_BOUND = {(2, 1): 3e-7, (4, 1): 1e-6, (2, 2): 5e-7, (4, 2): 5e-6,
                  (2, 3): 7e-7, (4, 3): 3e-5}
#: Tolerance the planner holds float32 results to (tests/references.py, EDGE_CASES 3.3).
FLOAT32_TOLERANCE = 1e-4
#: Workspace per tile chunk (transformed input + GEMM result): a few MiB keeps a chunk in L2/L3.
CHUNK_BYTES = 4 * 2**20


def error_bound_for(m: int, spatial_ndim: int, in_channels: int, dtype: object) -> float:
    """Expected max error relative to the output scale of F(m, 3) (N(0, 1)-like data)."""
    base = _FLOAT32_BOUND[(m, spatial_ndim)]
    growth = 1.0 + max(0.0, math.log2(max(in_channels, 1) / 64)) / 4
    if np.dtype(dtype) == np.float64:
        # float64 errors are the float32 ones scaled by the ratio of the epsilons.
        return base * growth * float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
    return base * growth


def transform_arrays(m: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(A^T, G, B^T)`` of F(m, 3); ``G`` in float64 (the weight transform runs once)."""
    at, g, bt = TRANSFORMS[m] if m > 1 else _IDENTITY
    return (np.array(at, dtype=dtype), np.array([[float(v) for v in row] for row in g]),
            np.array(bt, dtype=dtype))


# ---------------------------------------------------------------------------
# Compiled transforms. Written once for three spatial axes; 1-D and 2-D problems
# use 1x1 identity transforms on the leading axes. Plain Python here, compiled
# lazily by _kernels() so that importing trueconv does not import Numba.
# ---------------------------------------------------------------------------
def _input_transform(x, lo_d, lo_h, lo_w, btd, bth, btw, md, mh, mw,
                     n0, n1, d0, d1, h0, h1, w0, w1, v):  # pragma: no cover
    # x: (N, C, D, H, W) unpadded input, zero-padded by (lo_d, lo_h, lo_w) before and as much
    # as the tiles need after; v: (ad*ah*aw, tiles, C) for the tile block [n0:n1, d0:d1,
    # h0:h1, w0:w1], tiles in C order. Per image: copy the block's padded window into a
    # channels-last band (the layout change happens here, in cache, instead of as a pass
    # over the whole input); then per tile stage D, H and W, each one 1-D B^T with its zeros
    # skipped and its inner loop over the contiguous channel axis, which LLVM vectorizes.
    ad, ah, aw = btd.shape[0], bth.shape[0], btw.shape[0]
    nc, dn, hn, wn = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    # the band: padded coordinates [d0*md, (d1-1)*md+ad) x [h0*mh, ...) x [w0*mw, ...)
    bd, bh, bw = (d1 - d0 - 1) * md + ad, (h1 - h0 - 1) * mh + ah, (w1 - w0 - 1) * mw + aw
    pd, ph, pw = d0 * md - lo_d, h0 * mh - lo_h, w0 * mw - lo_w  # band origin in x coordinates
    za, zb = max(0, -pd), min(bd, dn - pd)
    ya, yb = max(0, -ph), min(bh, hn - ph)
    xa, xb = max(0, -pw), min(bw, wn - pw)
    band = np.zeros((bd, bh, bw, nc), dtype=x.dtype)
    t1 = np.empty((ad, ah, aw, nc), dtype=x.dtype)
    t2 = np.empty((ah, aw, nc), dtype=x.dtype)
    tile = 0
    for n in range(n0, n1):
        for c in range(nc):
            for z in range(za, zb):
                for y in range(ya, yb):
                    for xx in range(xa, xb):
                        band[z, y, xx, c] = x[n, c, pd + z, ph + y, pw + xx]
        for td in range(d1 - d0):
            for th in range(h1 - h0):
                for tw in range(w1 - w0):
                    z0, y0, x0 = td * md, th * mh, tw * mw
                    for a in range(ad):
                        for y in range(ah):
                            for xx in range(aw):
                                if ad == 1:
                                    for c in range(nc):
                                        t1[a, y, xx, c] = band[z0, y0 + y, x0 + xx, c]
                                else:
                                    for c in range(nc):
                                        t1[a, y, xx, c] = 0
                                    for j in range(ad):
                                        b = btd[a, j]
                                        if b != 0:
                                            for c in range(nc):
                                                t1[a, y, xx, c] += b * band[z0 + j, y0 + y, x0 + xx, c]
                    for a in range(ad):
                        for bb in range(ah):
                            for xx in range(aw):
                                for c in range(nc):
                                    t2[bb, xx, c] = 0
                                for j in range(ah):
                                    b = bth[bb, j]
                                    if b != 0:
                                        for c in range(nc):
                                            t2[bb, xx, c] += b * t1[a, j, xx, c]
                        for bb in range(ah):
                            for k in range(aw):
                                t = (a * ah + bb) * aw + k
                                for c in range(nc):
                                    v[t, tile, c] = 0
                                for j in range(aw):
                                    b = btw[k, j]
                                    if b != 0:
                                        for c in range(nc):
                                            v[t, tile, c] += b * t2[bb, j, c]
                    tile += 1


def _output_transform(mm, atd, ath, atw, n0, n1, d0, d1, h0, h1, w0, w1, out):  # pragma: no cover
    # mm: (ad*ah*aw, tiles, O) GEMM result of the tile block; out: (N, O, Do, Ho, Wo).
    # Per tile: stage W, H, then D (one 1-D A^T each, vectorized over O), then a
    # cropped store: the parts of ragged-border tiles past the output's end are dropped.
    md, ad = atd.shape
    mh, ah = ath.shape
    mw, aw = atw.shape
    no = out.shape[1]
    dout, hout, wout = out.shape[2], out.shape[3], out.shape[4]
    r1 = np.empty((ad * ah, mw, no), dtype=mm.dtype)
    r2 = np.empty((ad, mh, mw, no), dtype=mm.dtype)
    r3 = np.empty((mh, mw, no), dtype=mm.dtype)
    tile = 0
    for n in range(n0, n1):
        for td in range(d0, d1):
            for th in range(h0, h1):
                for tw in range(w0, w1):
                    for ab in range(ad * ah):
                        for u in range(mw):
                            for o in range(no):
                                r1[ab, u, o] = 0
                            for k in range(aw):
                                b = atw[u, k]
                                if b != 0:
                                    for o in range(no):
                                        r1[ab, u, o] += b * mm[ab * aw + k, tile, o]
                    for a in range(ad):
                        for vv in range(mh):
                            for u in range(mw):
                                for o in range(no):
                                    r2[a, vv, u, o] = 0
                            for bb in range(ah):
                                b = ath[vv, bb]
                                if b != 0:
                                    for u in range(mw):
                                        for o in range(no):
                                            r2[a, vv, u, o] += b * r1[a * ah + bb, u, o]
                    hn = min(mh, hout - th * mh)
                    wn = min(mw, wout - tw * mw)
                    for z in range(min(md, dout - td * md)):
                        for vv in range(mh):
                            for u in range(mw):
                                for o in range(no):
                                    r3[vv, u, o] = 0
                        for a in range(ad):
                            b = atd[z, a]
                            if b != 0:
                                for vv in range(mh):
                                    for u in range(mw):
                                        for o in range(no):
                                            r3[vv, u, o] += b * r2[a, vv, u, o]
                        for o in range(no):
                            for vv in range(hn):
                                for u in range(wn):
                                    out[n, o, td * md + z, th * mh + vv, tw * mw + u] = r3[vv, u, o]
                    tile += 1


_COMPILED: dict[str, Any] = {}
prange = range


def _kernels() -> tuple[Any, Any]:
    """Compile (or load from Numba's on-disk cache) the two transform kernels."""
    if not _COMPILED:
        import numba as nb

        # The kernels' `prange` is plain `range` until Numba compiles them.
        globals()["prange"] = nb.prange
        # Serial kernels that release the GIL: run() parallelizes over tile blocks with threads.
        options = dict(parallel=False, cache=True, fastmath=False, nogil=True, boundscheck=False)
        _COMPILED["input"] = nb.njit(**options)(_input_transform)
        _COMPILED["output"] = nb.njit(**options)(_output_transform)
    return _COMPILED["input"], _COMPILED["output"]


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


def tile_blocks(grid: tuple[int, ...], target: int) -> list[tuple[int, ...]]:
    """Split the tile grid ``(N, TD, TH, TW)`` into C-order blocks of at most ``target`` tiles.

    A block is ``(n0, n1, d0, d1, h0, h1, w0, w1)``: whole images when they are
    small, else bands along the outermost tile axis that keeps the block under
    ``target`` (a single huge image is split into rows, or into pieces of a row).
    """
    sizes = list(grid)
    inner = [math.prod(sizes[k + 1:]) for k in range(4)]
    level = next(k for k in range(4) if inner[k] <= target)
    step = max(1, target // inner[level])
    blocks = []
    for outer in np.ndindex(*sizes[:level]):
        for start in range(0, sizes[level], step):
            stop = min(start + step, sizes[level])
            block = [(i, i + 1) for i in outer] + [(start, stop)] + [(0, s) for s in sizes[level + 1:]]
            blocks.append(tuple(v for pair in block for v in pair))
    return blocks


class Winograd:
    """Winograd F(2, 3) / F(4, 3) for 3-tap kernels in 1, 2 or 3 dimensions.

    Serves stride 1, dilation 1, kernel 3 on every spatial axis, any groups,
    float32 and float64. Its result carries a transform error above the direct
    summation bound (see the module docstring and :meth:`error_bound`).
    """

    name: ClassVar[str] = "winograd"
    exact: ClassVar[bool] = False

    def supports(self, spec: ConvSpec) -> str | None:
        if any(k != 3 for k in spec.kernel_shape):
            return f"kernel shape {spec.kernel_shape} is not 3 on every spatial axis"
        if any(s != 1 for s in spec.stride):
            return f"stride {spec.stride} != 1"
        if any(d != 1 for d in spec.dilation):
            return f"dilation {spec.dilation} != 1"
        if spec.spatial_ndim > 3:
            return f"{spec.spatial_ndim} spatial dims (Winograd serves 1, 2 or 3)"
        if spec.dtype not in ("float32", "float64"):
            return (f"dtype {spec.dtype}: Winograd serves float32 and float64 only (integers would lose "
                    f"exactness in the fractional weight transform; use 'direct', 'im2col' or 'fft')")
        if not numba_available():
            return "Numba is not installed (pip install numba)"
        return None

    # -- choices --------------------------------------------------------------
    def tile_size(self, spec: ConvSpec) -> int:
        """Output tile ``m`` per axis: 4 or 2.

        F(4, 3) multiplies least per output (``(6/4)**d`` vs ``(4/2)**d``), but
        its float32 error is about 10x that of F(2, 3). Rule: take F(2, 3) when
        F(4, 3)'s float32 :meth:`error_bound` exceeds the 1e-4 tolerance (never
        happens below 3-D with huge channel counts), or when the output is so
        small that 4-wide tiles compute no fewer transform-domain products than
        2-wide ones, ``prod(ceil(out/m) * (m + 2))`` (e.g. outputs of 1 or 2).
        """
        nd, c = spec.spatial_ndim, spec.in_channels_per_group
        if error_bound_for(4, nd, c, "float32") > FLOAT32_TOLERANCE:
            return 2
        cost = {m: math.prod(t * (m + 2) for t in tile_grid(spec.output_shape, m)) for m in TILE_SIZES}
        return 4 if cost[4] < cost[2] else 2

    def error_bound(self, spec: ConvSpec) -> float:
        """Expected max error relative to the output scale for ``spec`` and its dtype.

        An envelope of the measurements in the module docstring (N(0, 1)-like
        data; float32 ~2.4e-7 for F(2x2, 3x3) and ~2.3e-6 for F(4x4, 3x3) at
        C=64, float64 about 1e-15), growing with ``log2(C)`` past 64 channels.
        """
        return error_bound_for(self.tile_size(spec), spec.spatial_ndim,
                               spec.in_channels_per_group, spec.dtype)

    # -- memory ---------------------------------------------------------------
    def _geometry(self, spec: ConvSpec, m: int | None = None) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
        m = self.tile_size(spec) if m is None else m
        alpha = m + 2
        grid = tile_grid(spec.output_shape, m)
        padded = tuple(t * m + alpha - m for t in grid)  # whole tiles on every axis
        return m, alpha, grid, padded

    def _block_target(self, spec: ConvSpec, alpha: int) -> int:
        """Tiles per block so that the block's V and M stay under ``CHUNK_BYTES``."""
        per_tile = alpha ** spec.spatial_ndim * (spec.in_channels + spec.out_channels) * spec.itemsize
        budget = min(CHUNK_BYTES, max(get_memory_limit() // 8, per_tile))
        return max(1, budget // per_tile)

    def workspace_bytes(self, spec: ConvSpec) -> int:
        m, alpha, grid, padded = self._geometry(spec)
        nd, t = spec.spatial_ndim, alpha ** spec.spatial_ndim
        tiles = spec.batch * math.prod(grid)
        block = min(tiles, self._block_target(spec, alpha))
        padded_input = spec.batch * spec.in_channels * math.prod(padded)
        weights = t * spec.out_channels * spec.in_channels_per_group
        transformed = t * (spec.in_channels + spec.out_channels) * block
        # per-thread scratch of the input transform: alpha rows by one block's padded extent
        threads = max(1, min(8, spec.batch * spec.in_channels))
        row = block * m + alpha if nd == 1 else min(block, grid[-1]) * m + alpha
        scratch = threads * alpha ** max(nd - 1, 1) * row * (2 if nd >= 2 else 1)
        return (padded_input + weights + transformed + scratch) * spec.itemsize

    # -- compute --------------------------------------------------------------
    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec, tile: int | None = None) -> np.ndarray:
        """Return the cross-correlation; ``tile`` forces F(2, 3) or F(4, 3) (else :meth:`tile_size`)."""
        input_kernel, output_kernel = _kernels()
        dtype = np.dtype(spec.dtype)
        nd = spec.spatial_ndim
        m, alpha, grid, padded = self._geometry(spec, tile)
        n, g = spec.batch, spec.groups
        c, o = spec.in_channels_per_group, spec.out_channels_per_group
        t = alpha**nd

        # The kernels read the unpadded input; pads (and whole-tile rounding) are implicit zeros.
        x5 = np.ascontiguousarray(x, dtype=dtype).reshape(n, spec.in_channels, *_as_3d(spec.input_shape, 1))
        lows = _as_3d(tuple(lo for lo, _ in spec.pad_widths), 0)

        # Per-axis transforms; leading untiled axes of 1-D/2-D problems get 1x1 identities.
        axes = [transform_arrays(1, dtype)] * (3 - nd) + [transform_arrays(m, dtype)] * nd
        (atd, gd, btd), (ath, gh, bth), (atw, gw, btw) = axes
        steps = _as_3d((m,) * nd, 1)

        # U = G g G^T per axis, in float64 once, then (T, G, O, C) in the compute dtype.
        w = weight.astype(np.float64).reshape(g * o, c, *_as_3d(spec.kernel_shape, 1))
        # (T, G*O*C) = kron(Gd, Gh, Gw) (T, 27) @ (27, G*O*C), then (T, G, C, O) for the GEMM.
        kron = np.kron(np.kron(gd, gh), gw)
        u = (kron @ w.reshape(g * o * c, -1).T).reshape(t, g, o, c)
        u = np.ascontiguousarray(u.transpose(0, 1, 3, 2), dtype=dtype)

        out = np.empty((n, g * o, *_as_3d(spec.output_shape, 1)), dtype=dtype)
        full_grid = (n, *_as_3d(grid, 1))
        threads = get_num_threads()
        total = math.prod(full_grid)
        # At least two blocks per thread when there is enough work, for load balance.
        target = min(self._block_target(spec, alpha), max(1, -(-total // (2 * threads))))
        blocks = tile_blocks(full_grid, target)
        block_tiles = max((b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4]) * (b[7] - b[6]) for b in blocks)

        def worker(queue: Iterator[tuple[int, ...]]) -> None:
            # Each worker owns its V and M buffers and runs whole blocks: transform in,
            # GEMM, transform out, while the block is still in its core's cache.
            v_buffer = np.empty(t * g * c * block_tiles, dtype=dtype)
            m_buffer = np.empty(t * g * o * block_tiles, dtype=dtype)
            for block in queue:
                n0, n1, d0, d1, h0, h1, w0, w1 = block
                tiles = (n1 - n0) * (d1 - d0) * (h1 - h0) * (w1 - w0)
                v = v_buffer[: t * tiles * g * c].reshape(t, tiles, g * c)
                input_kernel(x5, *lows, btd, bth, btw, *steps, *block, v)
                mm = m_buffer[: t * tiles * g * o].reshape(t, tiles, g, o)
                vg = v.reshape(t, tiles, g, c)
                if c == 1:
                    # one input channel per group (depthwise): a broadcast product, no GEMM calls
                    np.multiply(vg, u.reshape(t, 1, g, o), out=mm)
                elif g == 1:
                    # (T, tiles, O) = (T, tiles, C) @ (T, C, O)
                    np.matmul(v, u.reshape(t, c, o), out=mm.reshape(t, tiles, o))
                else:
                    # (T, G, tiles, O) = (T, G, tiles, C) @ (T, G, C, O), strided views
                    np.matmul(vg.transpose(0, 2, 1, 3), u, out=mm.transpose(0, 2, 1, 3))
                output_kernel(mm.reshape(t, tiles, g * o), atd, ath, atw, *block, out)

        workers = min(threads, len(blocks))
        with single_threaded_blas():
            if workers == 1:
                worker(iter(blocks))
            else:
                queue = _LockedIterator(blocks)
                with ThreadPoolExecutor(workers, thread_name_prefix="trueconv-winograd") as pool:
                    for future in [pool.submit(worker, queue) for _ in range(workers)]:
                        future.result()
        return out.reshape(spec.full_output_shape)


class _LockedIterator:
    """An iterator several worker threads can pull from."""

    def __init__(self, items: list[tuple[int, ...]]) -> None:
        self._items = iter(items)
        self._lock = threading.Lock()

    def __iter__(self) -> _LockedIterator:
        return self

    def __next__(self) -> tuple[int, ...]:
        with self._lock:
            return next(self._items)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None
_blas_controller: Any = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS single-threaded inside the block (restored afterwards, reentrant across threads).

    The transform-domain GEMMs are small (``O x C`` times ``C x tiles``); OpenBLAS's
    own threads gain little on them and stall badly when the cores are shared, so
    the parallelism is over tile blocks instead, one BLAS thread per worker.
    """
    global _blas_users, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            if _blas_controller is None:  # scanning the loaded libraries takes ~2 ms: once
                from threadpoolctl import ThreadpoolController

                _blas_controller = ThreadpoolController()
            _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _measure_errors() -> None:  # pragma: no cover - documentation helper
    """Print the accuracy table of the module docstring (``python -m trueconv.algorithms.winograd``)."""
    from .direct import Direct

    rng = np.random.default_rng(0)
    shapes = {1: (256,), 2: (16, 16), 3: (8, 8, 8)}
    algo = Winograd()
    for m in TILE_SIZES:
        for nd, shape in shapes.items():
            row = []
            for c, dtype in ((4, "float32"), (64, "float32"), (256, "float32"), (64, "float64")):
                x = rng.standard_normal((2, c, *shape))
                w = rng.standard_normal((8, c, *(3,) * nd))
                spec = ConvSpec(2, c, 8, 1, shape, (3,) * nd, (1,) * nd, (1,) * nd, ((1, 1),) * nd, dtype)
                ref = Direct().run(x, w, spec.with_dtype("float64"))
                y = algo.run(x.astype(dtype), w.astype(dtype), spec, tile=m)
                row.append(float(np.abs(y - ref).max() / np.abs(ref).max()))
            print(f"F({m}, 3) {nd}-D " + "  ".join(f"{e:.1e}" for e in row))


if __name__ == "__main__":  # pragma: no cover
    _measure_errors()
