"""FFT convolution: tiled (overlap-save), channel-summing, batched.

Every input tile and every kernel plane is transformed once; the sum over
input channels is then, per frequency, a complex matrix product
``(O, C) @ (C, N * tiles)`` done as ONE batched matmul with the frequency axis
first, ``(G, F, O, C) @ (G, F, C, N*T)``, instead of a loop (Vasilache et al.,
*Fast convolutional nets with fbfft*, arXiv:1412.7580; SciPy
``_freq_domain_conv`` generalized to channels). When the matrices are too
small for BLAS calls to pay (single-image filtering, a few channels), the sum
is an explicit broadcast multiply-add over C instead.

Large inputs against small kernels are cut into tiles (block convolution, the
idea of SciPy's ``oaconvolve`` and Stockham 1966, "High-speed convolution and
correlation"): transforms stay short (cache-resident, ``log L`` instead of
``log n``), the kernel is transformed at the tile length only, and the
workspace stays bounded because tiles are processed a chunk at a time. We use
the *overlap-save* variant rather than overlap-add: input tiles overlap by
``E - 1`` samples and each tile yields its own block of valid outputs, so there
is no scatter-add, zero padding is folded into the tile gather, and a strided
output is subsampled tile by tile. The transform count equals overlap-add's.
The tile length per axis minimizes a cost model (:func:`tile_plan`).

Correlation is the convolution with the flipped kernel; dilation is served by
the zero-inserted kernel (JAX ``_dilate``); stride by computing the stride-1
outputs of each tile and keeping every ``stride``-th, which wastes up to
``prod(stride)`` times the work (visible to the planner: :func:`tile_plan`
needs more tiles for the same outputs); a polyphase split would avoid it.

Accuracy is normwise, not elementwise (EDGE_CASES.md section 3, #55): see
:func:`error_bound`. Measured max error relative to max|y| on N(0, 1) data:
2e-7 to 4e-7 in float32, 4e-16 to 8e-16 in float64 (tests/test_direct_fft.py,
benchmarks/direct_fft_rows.py). Results are reproducible for a given batch
size; with the matmul channel sum a different batch split can change the last
bits (BLAS picks its kernels by the matrix width), always within the bound.
Integers are transformed in float64 and rounded back, exact only under the
``2**50`` guard the planner checks (``_planner.eligibility``); extended
precision is refused because scipy.fft computes in float64 at most.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.fft as sp_fft
from numpy.lib.stride_tricks import as_strided

from .._spec import ConvSpec
from .._threads import get_num_threads

__all__ = [
    "FFT", "TilePlan", "tile_plan", "error_bound", "fft_shape", "fast_length", "dilate_kernel",
]

#: Normwise constant measured in EDGE_CASES.md 3.2 (c = 0.11 to 0.13), rounded up
#: with a safety factor: tests check that measured errors stay below the bound.
ERROR_CONSTANT = 0.5
#: Bytes of tile buffers processed at once. Small chunks bound the workspace and
#: let malloc reuse the same (cache-warm, already faulted-in) memory chunk after
#: chunk: with 64 MiB chunks a 1-D 1e6-sample call spent more time in page
#: faults than in its transforms.
TILE_CHUNK_BYTES = 4 * 2**20
#: Channel sums with fewer than this many ``O * C`` weights per frequency use a
#: broadcast multiply-add over C instead of a batched matmul: np.matmul pays
#: ~25 ns per frequency in BLAS call overhead (measured: O=C=3 5.7 ms vs 1.1 ms
#: broadcast; O=C=4 with 8 columns 22 ms vs 45 ms). The rule ignores the batch
#: and the tile count on purpose: a batch split never switches formulations.
MATMUL_MIN_WEIGHTS = 16
#: Shortest tile transform considered (shorter transforms are overhead-bound).
MIN_TILE = 16
#: Longest 1-D transform line that stays cache-friendly in pocketfft.
CACHE_LINE_POINTS = 40960


@dataclass(frozen=True)
class TilePlan:
    """How the output is cut into tiles; every tuple has one entry per spatial axis.

    Attributes
    ----------
    transform_shape : tuple of int
        FFT length ``L`` of a tile (a fast length for scipy.fft).
    tile_outputs : tuple of int
        Outputs (after stride) per tile: ``(L - E) // stride + 1``.
    tile_counts : tuple of int
        Tiles per axis; the last one may extend past the output and is cropped.
    tile_steps : tuple of int
        Input samples between the starts of neighbouring tiles,
        ``tile_outputs * stride``; tiles overlap by ``L - tile_steps``.
    chunk_rows : int
        Tiles along the first spatial axis transformed together.
    """

    transform_shape: tuple[int, ...]
    tile_outputs: tuple[int, ...]
    tile_counts: tuple[int, ...]
    tile_steps: tuple[int, ...]
    chunk_rows: int

    @property
    def extended_shape(self) -> tuple[int, ...]:
        """Extent of the zero-extended input that all tiles read."""
        return tuple(
            (t - 1) * step + n
            for t, step, n in zip(self.tile_counts, self.tile_steps, self.transform_shape)
        )


def _is_complex(spec: ConvSpec) -> bool:
    return np.dtype(spec.dtype).kind == "c"


def _work_dtype(spec: ConvSpec) -> np.dtype:
    """Real/complex dtype the transforms run in (float64 for integers)."""
    dtype = np.dtype(spec.dtype)
    return np.dtype(np.float64) if dtype.kind in "iu" else dtype


def _freq_points(shape: tuple[int, ...], is_complex: bool) -> int:
    if is_complex:
        return math.prod(shape)
    return math.prod(shape[:-1]) * (shape[-1] // 2 + 1)


def fast_length(n: int) -> int:
    """Smallest even 5-smooth length >= ``n`` (1 stays 1).

    pocketfft's real transforms of odd lengths run about twice as slow as even
    ones of similar size (measured: 1125 vs 1152 points per axis), so odd
    ``next_fast_len`` results are skipped.
    """
    length = sp_fft.next_fast_len(n, True)
    while length % 2 and length > 1:
        length = sp_fft.next_fast_len(length + 1, True)
    return length


def _candidates(extent: int, effective: int, outputs: int, stride: int) -> list[int]:
    """Tile transform lengths worth trying on one axis.

    Multiples of the kernel's extent, lengths that split the outputs into a
    few equal tiles (no mostly-empty last tile: 1024 outputs of a 63-tap
    kernel take two 576-point tiles, measured 2x faster than one 1152-point
    transform), and the whole axis.
    """
    whole = fast_length(extent)
    found = {whole}
    for factor in (2, 3, 4, 6, 8, 12, 16, 24, 32, 64):
        length = fast_length(max(factor * effective, MIN_TILE))
        if length < whole:
            found.add(length)
    for tiles in (2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64):
        per_tile = -(-outputs // tiles)
        length = fast_length(max((per_tile - 1) * stride + effective, MIN_TILE))
        if length < whole:
            found.add(length)
    return sorted(found)


@functools.lru_cache(maxsize=1024)
def tile_plan(spec: ConvSpec) -> TilePlan:
    """Choose tile lengths minimizing ``tiles * (transforms + channel sums)``.

    Cost per tile, in units of one complex multiply-add: forward and inverse
    transforms of ``G*C + G*O`` planes, ``~L log2 L`` each, plus the channel
    sum ``G*O*C`` per frequency, plus a fixed overhead per tile. The kernel's
    own transform (once, at the tile length) is small next to that.
    """
    nd = spec.spatial_ndim
    effective = spec.effective_kernel_shape
    needed = [(o - 1) * s + e for o, s, e in zip(spec.output_shape, spec.stride, effective)]
    g, c, o = spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
    is_complex = _is_complex(spec)
    best: tuple[float, tuple[int, ...]] | None = None
    per_axis = [_candidates(n, e, m, s)
                for n, e, m, s in zip(needed, effective, spec.output_shape, spec.stride)]
    for lengths in itertools.product(*per_axis):
        outputs = [(n - e) // s + 1 for n, e, s in zip(lengths, effective, spec.stride)]
        tiles = math.prod(-(-m // t) for m, t in zip(spec.output_shape, outputs))
        points = math.prod(lengths)
        freqs = _freq_points(lengths, is_complex)
        transforms = (g * c + g * o) * points * math.log2(max(points, 2)) * 0.5
        # one transform line beyond CACHE_LINE_POINTS runs out of L2: measured ~1.7x
        # slower per point (1-D, 49152 and 65536 vs 16384 to 40960 points)
        slow = 1.7 if max(lengths) > CACHE_LINE_POINTS else 1.0
        cost = tiles * (transforms * slow + g * o * c * freqs + 200.0)
        if best is None or cost < best[0]:
            best = (cost, lengths)
    assert best is not None
    lengths = best[1]
    outputs = tuple((n - e) // s + 1 for n, e, s in zip(lengths, effective, spec.stride))
    counts = tuple(-(-m // t) for m, t in zip(spec.output_shape, outputs))
    per_tile = _tile_bytes(spec, lengths) * max(spec.batch, 1)
    across = math.prod(counts[1:]) if nd > 1 else 1
    rows = max(1, min(counts[0], TILE_CHUNK_BYTES // max(per_tile * across, 1)))
    steps = tuple(m * s for m, s in zip(outputs, spec.stride))
    return TilePlan(lengths, outputs, counts, steps, rows)


def _tile_bytes(spec: ConvSpec, lengths: tuple[int, ...]) -> int:
    """Workspace of one tile of one batch item: real tile, spectra, and the inverse."""
    real = _work_dtype(spec).itemsize
    cplx = 2 * real if not _is_complex(spec) else real
    g, c, o = spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
    points = math.prod(lengths)
    freqs = _freq_points(lengths, _is_complex(spec))
    # gathered tile, its spectrum (and the frequency-first copy for matmul),
    # the product spectrum (and its matmul layout), the inverse transform
    return (g * c * points * real + 2 * g * c * freqs * cplx + 2 * g * o * freqs * cplx
            + g * o * points * real)


def fft_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Transform lengths of one tile (the whole problem when it is not tiled)."""
    return tile_plan(spec).transform_shape


def error_bound(spec: ConvSpec) -> float:
    """Expected max error of :class:`FFT` on ``spec``, relative to the output's scale.

    ``c * eps * sqrt(C * K) * log2(L)``: the normwise FFT bound (EDGE_CASES.md
    section 3, measured ``c`` of 0.11 to 0.13; ``c = 0.5`` here for margin)
    with ``C * K`` summed terms per output and ``L`` points per transform.
    It is relative to ``max|y|``, not elementwise: outputs far smaller than
    the largest (data with a large dynamic range) can be wrong in every digit.
    For integer inputs it is the float64 error before rounding.

    Examples
    --------
    >>> from trueconv._spec import ConvSpec
    >>> spec = ConvSpec(1, 1, 1, 1, (1024, 1024), (63, 63), (1, 1), (1, 1),
    ...                 ((31, 31), (31, 31)), "float32")
    >>> error_bound(spec) < 1e-4
    True
    >>> error_bound(spec.with_dtype("float64")) < 1e-10
    True
    """
    eps = float(np.finfo(_work_dtype(spec)).eps)
    terms = max(spec.in_channels_per_group * spec.kernel_size, 1)
    points = math.prod(tile_plan(spec).transform_shape)
    return ERROR_CONSTANT * eps * math.sqrt(terms) * math.log2(max(points, 2))


def dilate_kernel(weight: np.ndarray, dilation: tuple[int, ...]) -> np.ndarray:
    """Insert ``dilation - 1`` zeros between taps of the trailing kernel axes (JAX ``_dilate``)."""
    nd = len(dilation)
    if all(d == 1 for d in dilation):
        return weight
    kernel = weight.shape[-nd:]
    dilated = np.zeros(
        weight.shape[:-nd] + tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation)),
        dtype=weight.dtype,
    )
    dilated[(Ellipsis, *(slice(None, None, d) for d in dilation))] = weight
    return dilated


class FFT:
    """Tiled FFT convolution with channel sums in the frequency domain."""

    name: ClassVar[str] = "fft"
    exact: ClassVar[bool] = False

    def supports(self, spec: ConvSpec) -> str | None:
        dtype = np.dtype(spec.dtype)
        if dtype in (np.dtype(np.longdouble), np.dtype(np.clongdouble)) and \
                np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
            return (f"dtype {spec.dtype} would lose precision: scipy.fft computes in float64 "
                    f"at most; use algorithm='direct'")
        return None

    def error_bound(self, spec: ConvSpec) -> float:
        """See :func:`error_bound`."""
        return error_bound(spec)

    def workspace_bytes(self, spec: ConvSpec) -> int:
        plan = tile_plan(spec)
        real = _work_dtype(spec).itemsize
        cplx = real if _is_complex(spec) else 2 * real
        g, c, o = spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
        freqs = _freq_points(plan.transform_shape, _is_complex(spec))
        slab_rows = (plan.chunk_rows - 1) * plan.tile_steps[0] + plan.transform_shape[0]
        slab = (spec.batch * spec.in_channels * slab_rows * math.prod(plan.extended_shape[1:])
                * real)
        kernel = (g * o * c * math.prod(spec.effective_kernel_shape) * real  # dilated, flipped
                  + 2 * g * o * c * freqs * cplx)  # spectrum and its matmul layout
        tiles_per_chunk = plan.chunk_rows * math.prod(plan.tile_counts[1:])
        chunk = tiles_per_chunk * spec.batch * _tile_bytes(spec, plan.transform_shape)
        # the assembled tile outputs (before the crop) and, for integers, the float result
        assembled = spec.batch * spec.out_channels * math.prod(
            t * m for t, m in zip(plan.tile_counts, plan.tile_outputs)) * real
        return slab + kernel + chunk + 2 * assembled

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        plan = tile_plan(spec)
        nd = spec.spatial_ndim
        n, g = spec.batch, spec.groups
        c, o = spec.in_channels_per_group, spec.out_channels_per_group
        work = _work_dtype(spec)
        is_complex = _is_complex(spec)
        fwd, inv = (sp_fft.fftn, sp_fft.ifftn) if is_complex else (sp_fft.rfftn, sp_fft.irfftn)
        lengths, outputs, counts = plan.transform_shape, plan.tile_outputs, plan.tile_counts
        axes = tuple(range(-nd, 0))
        workers = get_num_threads()

        kernel_freq = _kernel_spectrum(weight, spec, lengths, fwd, work, workers)  # (G, O, C, F)
        freqs = kernel_freq.shape[-1]
        freq_shape = _spectrum_shape(lengths, is_complex)
        across = math.prod(counts[1:])
        use_matmul = c > 1 and o * c >= MATMUL_MIN_WEIGHTS
        if use_matmul:
            # (G, F, O, C): frequency first, one matrix per frequency
            kernel_freq = np.ascontiguousarray(kernel_freq.transpose(0, 3, 1, 2))

        # (N, G, O, t0, m0, t1, m1, ...): tiles and in-tile outputs interleaved
        assembled = np.empty((n, g, o, *itertools.chain(*zip(counts, outputs))), dtype=work)
        inner = tuple(slice(e - 1, e - 1 + (m - 1) * s + 1, s)
                      for e, m, s in zip(spec.effective_kernel_shape, outputs, spec.stride))
        for r0 in range(0, counts[0], plan.chunk_rows):
            r1 = min(r0 + plan.chunk_rows, counts[0])
            t = (r1 - r0) * across
            tiles = _tiles_view(x, spec, plan, r0, r1, work)  # (N, G, C, tr, *counts[1:], *L)
            x_freq = fwd(tiles, lengths, axes=axes, workers=workers)
            x_freq = x_freq.reshape(n, g, c, t, freqs)  # (N, G, C, T, F)
            if c == 1:
                # (N, G, O, T, F) = (N, G, 1, T, F) * (1, G, O, 1, F)
                y_freq = x_freq * kernel_freq.reshape(1, g, o, 1, freqs)
            elif use_matmul:
                # (G, F, C, N*T): the batched-matmul layout
                x_mat = np.ascontiguousarray(x_freq.transpose(1, 4, 2, 0, 3))
                x_mat = x_mat.reshape(g, freqs, c, n * t)
                # (G, F, O, N*T) = (G, F, O, C) @ (G, F, C, N*T)
                y_mat = np.matmul(kernel_freq, x_mat)
                y_freq = y_mat.reshape(g, freqs, o, n, t).transpose(3, 0, 2, 4, 1)
            else:
                y_freq = np.zeros((n, g, o, t, freqs), dtype=x_freq.dtype)
                term = np.empty_like(y_freq)
                for ci in range(c):
                    # (N, G, O, T, F) += (N, G, 1, T, F) * (1, G, O, 1, F)
                    kernel_c = kernel_freq[:, :, ci].reshape(1, g, o, 1, freqs)
                    np.multiply(x_freq[:, :, ci:ci + 1], kernel_c, out=term)
                    y_freq += term
            y_freq = y_freq.reshape(n, g, o, r1 - r0, *counts[1:], *freq_shape)
            # (N, G, O, tr, *counts[1:], *L); y_freq is ours, so pocketfft may overwrite it
            y = inv(y_freq, lengths, axes=axes, workers=workers, overwrite_x=True)
            valid = y[(Ellipsis, *inner)]  # (N, G, O, tr, *counts[1:], *outputs)
            # move each in-tile axis next to its tile axis: (N, G, O, t0, m0, t1, m1, ...)
            order = (0, 1, 2, *itertools.chain(*((3 + i, 3 + nd + i) for i in range(nd))))
            assembled[:, :, :, r0:r1] = valid.transpose(order)
        full = assembled.reshape(n, g * o, *(t * m for t, m in zip(counts, outputs)))
        out = full[(Ellipsis, *(slice(0, m) for m in spec.output_shape))]
        if np.dtype(spec.dtype).kind in "iu":
            return np.rint(out).astype(spec.dtype)
        return np.ascontiguousarray(out)


def _spectrum_shape(lengths: tuple[int, ...], is_complex: bool) -> tuple[int, ...]:
    return lengths if is_complex else (*lengths[:-1], lengths[-1] // 2 + 1)


def _tiles_view(x: np.ndarray, spec: ConvSpec, plan: TilePlan, first: int, stop: int,
                work: np.dtype) -> np.ndarray:
    """Tiles ``first:stop`` along the first axis (all along the others), as a strided view.

    Copies the input slab those tiles read into a zero-filled buffer (zero
    padding and the extension past the input come free), then views it as
    overlapping tiles ``(N, G, C, stop - first, *tile_counts[1:],
    *transform_shape)``; tile ``j`` on an axis starts ``j * tile_steps``
    samples after the previous one (overlap-save).
    """
    start = first * plan.tile_steps[0]
    extent = ((stop - first - 1) * plan.tile_steps[0] + plan.transform_shape[0],
              *plan.extended_shape[1:])
    slab = np.zeros((spec.batch, spec.in_channels, *extent), dtype=work)
    source, target = [], []
    axes = zip(spec.input_shape, spec.pad_widths, extent)
    for axis, (size, (before, _), length) in enumerate(axes):
        offset = start if axis == 0 else 0  # slab coordinate 0 is padded coordinate `offset`
        lo = max(before, offset)
        hi = min(before + size, offset + length)
        if hi <= lo:  # the slab reads only padding
            return _as_tiles(slab, spec, plan, stop - first)
        source.append(slice(lo - before, hi - before))
        target.append(slice(lo - offset, hi - offset))
    slab[(Ellipsis, *target)] = x[(Ellipsis, *source)]
    return _as_tiles(slab, spec, plan, stop - first)


def _as_tiles(slab: np.ndarray, spec: ConvSpec, plan: TilePlan, rows: int) -> np.ndarray:
    slab = slab.reshape(spec.batch, spec.groups, spec.in_channels_per_group, *slab.shape[2:])
    spatial = slab.strides[3:]
    return as_strided(
        slab,
        shape=(*slab.shape[:3], rows, *plan.tile_counts[1:], *plan.transform_shape),
        strides=(*slab.strides[:3], *(st * k for st, k in zip(spatial, plan.tile_steps)),
                 *spatial),
        writeable=False,
    )


def _kernel_spectrum(weight: np.ndarray, spec: ConvSpec, lengths: tuple[int, ...], fwd,
                     work: np.dtype, workers: int) -> np.ndarray:
    """Spectrum ``(G, O, C, F)`` of the flipped, dilated kernel at the tile length."""
    nd = spec.spatial_ndim
    kernel = dilate_kernel(weight.astype(work, copy=False), spec.dilation)
    # correlation = convolution with the kernel flipped on every spatial axis
    kernel = kernel[(Ellipsis, *([slice(None, None, -1)] * nd))]
    kernel = kernel.reshape(spec.groups, spec.out_channels_per_group, spec.in_channels_per_group,
                            *kernel.shape[2:])
    # Transform the last axis first, then the others one at a time: each pass
    # then skips the rows that are all zero padding (E instead of L per axis).
    freq = fwd(kernel, lengths[-1:], axes=(-1,), workers=workers)
    for axis in range(nd - 2, -1, -1):
        freq = sp_fft.fft(freq, lengths[axis], axis=axis - nd, workers=workers, overwrite_x=True)
    return freq.reshape(*freq.shape[:3], -1)
