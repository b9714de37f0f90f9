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

How the tiles run (:func:`convolve_tiles`) is tuned for a 2-core machine
where a page fault costs about 3 us: without the batched matmul, runs of a
few tiles (:func:`tile_runs`) make their whole round trip on one thread each,
threads working on different runs at once, each single-threaded transform
writing into scratch arrays the thread keeps from call to call; each tile
writes straight into the output, and the inverse transform's last pass
touches only the lines that hold valid outputs. For 1024x1024 float64
filtering with a 63x63 kernel on 2 threads this took the best time from 16
to 6.4 ms (cv2.filter2D: 10.3 ms).

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
import inspect
import itertools
import math
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.fft as sp_fft
from numpy.lib.stride_tricks import as_strided

from .._spec import ConvSpec
from .._threads import get_num_threads
from ._pool import LockedIterator, run_parallel, scratch

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
#: Bytes of tile workspace (:func:`_tile_bytes`) per run of tiles (one transform
#: call each way): a run of small tiles amortizes the per-run overhead (1-D tiles
#: of 2048 points: 6 ms in runs of 42 tiles, 14 ms in runs of 8), a large tile
#: goes alone.
TILE_RUN_BYTES = 4 * 2**20
#: Fewest transform lines per run: pocketfft transforms several lines at once in
#: SIMD registers, so two 36000-point lines cost what one does (0.2 ms); 1-D
#: runs of one tile each ran 1.7x slower than runs of two or four.
MIN_RUN_LINES = 4
#: Per-thread scratch arrays up to this size are kept between calls (see :func:`_buffer`).
BUFFER_CACHE_BYTES = 4 * 2**20
#: numpy >= 2.0 transforms into a given array (``out=``); scipy.fft always allocates.
NUMPY_FFT_OUT = "out" in inspect.signature(np.fft.rfftn).parameters
#: Shortest tile transform considered (shorter transforms are overhead-bound).
MIN_TILE = 16
#: Tile planes (real or complex input) above this size pay a cache penalty in :func:`tile_plan`.
TILE_CACHE_BYTES = 2 * 2**20
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
        Tiles along the first spatial axis transformed together when the
        channel sum is a batched matmul (the other path runs
        :func:`tile_runs`).
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
    Transforms are dearer per point when a line outgrows the cache
    (:data:`CACHE_LINE_POINTS`) or a tile plane outgrows a core's L2
    (:data:`TILE_CACHE_BYTES`).
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
        # a tile plane larger than a core's L2 streams from L3 in every pass: 576x576
        # float64 (2.6 MB) ran 7.2 ns per point round trip, 288x288 and 320x320 6.0
        if math.prod(lengths) * _work_dtype(spec).itemsize > TILE_CACHE_BYTES:
            slow *= 1.2
        cost = tiles * (transforms * slow + g * o * c * freqs + 200.0)
        if best is None or cost < best[0]:
            best = (cost, lengths)
    assert best is not None
    return plan_for_lengths(spec, best[1])


def plan_for_lengths(spec: ConvSpec, lengths: tuple[int, ...]) -> TilePlan:
    """The :class:`TilePlan` with tile transform lengths ``lengths`` (one per spatial axis).

    Each length must be at least the kernel's effective extent on its axis.
    """
    effective = spec.effective_kernel_shape
    if len(lengths) != spec.spatial_ndim or any(n < e for n, e in zip(lengths, effective)):
        raise ValueError(f"plan_for_lengths: lengths must hold one length >= the kernel's "
                         f"effective extent {effective} per axis, got {lengths}")
    lengths = tuple(int(n) for n in lengths)
    outputs = tuple((n - e) // s + 1 for n, e, s in zip(lengths, effective, spec.stride))
    counts = tuple(-(-m // t) for m, t in zip(spec.output_shape, outputs))
    per_tile = _tile_bytes(spec, lengths) * max(spec.batch, 1)
    across = math.prod(counts[1:])
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
        kernel = (g * o * c * math.prod(spec.effective_kernel_shape) * real  # dilated, flipped
                  + 2 * g * o * c * freqs * cplx)  # spectrum and its matmul layout
        lengths, steps = plan.transform_shape, plan.tile_steps
        if c > 1 and o * c >= MATMUL_MIN_WEIGHTS:
            # one chunk of tile rows at a time: its slab and all its tiles
            slab_rows = (plan.chunk_rows - 1) * steps[0] + lengths[0]
            slab = (spec.batch * spec.in_channels * slab_rows * math.prod(plan.extended_shape[1:])
                    * real)
            tiles = plan.chunk_rows * math.prod(plan.tile_counts[1:])
            work = slab + tiles * spec.batch * _tile_bytes(spec, lengths)
        else:
            # one run per busy thread: its slab and its tiles
            runs = tile_runs(spec, plan)
            size = max(stop - first for _, first, stop in runs)
            slab = (spec.batch * spec.in_channels * math.prod(lengths[:-1])
                    * ((size - 1) * steps[-1] + lengths[-1]) * real)
            per_run = slab + size * spec.batch * _tile_bytes(spec, lengths)
            work = min(get_num_threads(), len(runs)) * per_run
        # integers: the float result before rounding (floats return it as the output)
        result = (spec.batch * spec.out_channels * math.prod(spec.output_shape) * real
                  if np.dtype(spec.dtype).kind in "iu" else 0)
        return kernel + work + result

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        return convolve_tiles(x, weight, spec, tile_plan(spec), get_num_threads())


def convolve_tiles(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, plan: TilePlan,
                   threads: int) -> np.ndarray:
    """Run :class:`FFT` on ``spec`` with an explicit tiling ``plan`` and thread count.

    Without the batched matmul (single-channel filtering, few channels, 1-D
    signals), the tiles are cut into *runs* along the last tile axis, a few
    tiles of cache size each, and each run makes its whole round trip on one
    thread: gather, forward transform, channel sum, inverse transform, store
    into its block of the output. Runs go to ``threads`` threads at once, each
    transform single-threaded and written into buffers the thread reuses from
    run to run (``numpy.fft`` ``out=``). Reused buffers matter more than the
    transforms' speed on some machines: a fresh page costs a page fault on
    first touch (measured 3 us here: 12 MiB of fresh temporaries cost 10 ms,
    as long as the 63x63 float64 filtering itself), and a tile stays in one
    core's cache between its passes. With many channels, the channel sum is a
    batched matmul over all tiles of a chunk of tile rows (see the module
    docstring); chunks then run one after the other, multithreaded inside.
    """
    n, g = spec.batch, spec.groups
    c, o = spec.in_channels_per_group, spec.out_channels_per_group
    work = _work_dtype(spec)
    fwd = sp_fft.fftn if _is_complex(spec) else sp_fft.rfftn
    use_matmul = c > 1 and o * c >= MATMUL_MIN_WEIGHTS
    # every output element is written by exactly one tile
    out = np.empty((n, g, o, *spec.output_shape), dtype=work)
    if use_matmul:
        kernel_freq = _kernel_spectrum(weight, spec, plan.transform_shape, fwd, work, threads)
        # (G, F, O, C): frequency first, one matrix per frequency
        kernel_freq = np.ascontiguousarray(kernel_freq.transpose(0, 3, 1, 2))
        counts = plan.tile_counts
        for r0 in range(0, counts[0], plan.chunk_rows):
            _matmul_chunk(x, kernel_freq, spec, plan, out, threads,
                          (r0, min(r0 + plan.chunk_rows, counts[0])))
    else:
        runs = tile_runs(spec, plan)
        parallel = threads > 1 and len(runs) > 1
        workers = 1 if parallel else threads
        spectrum = functools.partial(_kernel_spectrum, weight, spec, plan.transform_shape, fwd,
                                     work, workers, _buffered(spec, workers))
        if parallel:
            # the calling thread transforms the kernel while the others start on their
            # tiles' forward transforms; they wait for it before the product
            kernel_freq = _Pending()
            task = functools.partial(_run_tiles, x, kernel_freq, spec, plan, out, workers)
            _run_items(task, runs, threads, first=functools.partial(kernel_freq.compute, spectrum))
        else:
            task = functools.partial(_run_tiles, x, spectrum(), spec, plan, out, workers)
            for run in runs:
                task(run)
    out = out.reshape(n, g * o, *spec.output_shape)
    if np.dtype(spec.dtype).kind in "iu":
        return np.rint(out).astype(spec.dtype)
    return out


def tile_runs(spec: ConvSpec, plan: TilePlan) -> list[tuple[tuple[int, ...], int, int]]:
    """Work items of the non-matmul path: ``(lead, first, stop)`` per run of tiles.

    ``lead`` is the tile index on every axis but the last; the run holds tiles
    ``first:stop`` along the last. A run's workspace stays under
    :data:`TILE_RUN_BYTES` (one tile if a tile is larger) unless it needs more
    tiles for :data:`MIN_RUN_LINES` transform lines, and the runs of a line of
    tiles are as even as possible, so threads get equal shares.
    """
    counts = plan.tile_counts
    per_tile = _tile_bytes(spec, plan.transform_shape) * max(spec.batch, 1)
    size = max(1, min(counts[-1], TILE_RUN_BYTES // max(per_tile, 1)))
    lines = max(spec.batch * spec.in_channels * math.prod(plan.transform_shape[:-1]), 1)
    size = max(size, min(counts[-1], -(-MIN_RUN_LINES // lines)))
    pieces = -(-counts[-1] // size)
    bounds = [i * counts[-1] // pieces for i in range(pieces + 1)]
    return [(lead, first, stop)
            for lead in itertools.product(*(range(t) for t in counts[:-1]))
            for first, stop in zip(bounds, bounds[1:])]


def _buffered(spec: ConvSpec, workers: int) -> bool:
    """Transform into reused per-thread buffers (numpy.fft ``out=``), or allocate (scipy.fft)?

    Only single-threaded double-precision transforms: numpy.fft has no
    ``workers``, and its single-precision transforms run several times slower
    than scipy.fft's (measured 7.5 vs 0.8 ms for a 576x576 float32 rfftn;
    float64: 1.0 vs 1.1 ms).
    """
    return (workers == 1 and NUMPY_FFT_OUT
            and _work_dtype(spec) in (np.dtype(np.float64), np.dtype(np.complex128)))


def _run_tiles(x: np.ndarray, kernel_freq: np.ndarray | _Pending, spec: ConvSpec, plan: TilePlan,
               out: np.ndarray, workers: int, run: tuple[tuple[int, ...], int, int]) -> None:
    """Convolve one run of tiles (see :func:`tile_runs`) into its block of ``out``."""
    nd = spec.spatial_ndim
    lead, first, stop = run
    buffered = _buffered(spec, workers)
    lengths = plan.transform_shape
    freq_shape = _spectrum_shape(lengths, _is_complex(spec))
    axes = tuple(range(-nd, 0))
    block = _gather_run(x, spec, plan, run, buffered)  # (N, G, C, s, *L)
    if buffered:
        spectrum = _buffer("spectrum", (*block.shape[:-nd], *freq_shape), _complex_dtype(spec))
        forward = np.fft.fftn if _is_complex(spec) else np.fft.rfftn
        x_freq = forward(block, lengths, axes=axes, out=spectrum)
    else:
        forward = sp_fft.fftn if _is_complex(spec) else sp_fft.rfftn
        x_freq = forward(block, lengths, axes=axes, workers=workers)
    n, g, c, s = block.shape[:4]
    if isinstance(kernel_freq, _Pending):
        kernel_freq = kernel_freq.get()
    y_freq = _channel_sum(x_freq.reshape(n, g, c, s, -1), kernel_freq, buffered)
    y_freq = y_freq.reshape(*y_freq.shape[:4], *freq_shape)
    valid = _inverse_valid(y_freq, spec, plan, workers, buffered)  # (N, G, O, s, *outputs)
    _store(out, valid, lead, first, plan, spec.output_shape)


def _gather_run(x: np.ndarray, spec: ConvSpec, plan: TilePlan,
                run: tuple[tuple[int, ...], int, int], buffered: bool) -> np.ndarray:
    """The tiles of ``run`` as an overlapping view ``(N, G, C, s, *L)`` of a zero-extended slab.

    The slab spans the run's tiles (``L`` on the leading axes, ``(s - 1) *
    step + L`` on the last); what lies outside the input is zero padding.
    """
    lead, first, stop = run
    lengths, steps = plan.transform_shape, plan.tile_steps
    starts = [t * step for t, step in zip(lead, steps[:-1])] + [first * steps[-1]]
    extent = (*lengths[:-1], (stop - first - 1) * steps[-1] + lengths[-1])
    shape = (spec.batch, spec.in_channels, *extent)
    work = _work_dtype(spec)
    source, target = [], []
    for size, (before, _), start, length in zip(spec.input_shape, spec.pad_widths, starts, extent):
        lo, hi = max(before, start), min(before + size, start + length)
        source.append(slice(lo - before, max(hi, lo) - before))
        target.append(slice(lo - start, max(hi, lo) - start))
    inside = all(t.start == 0 and t.stop == length for t, length in zip(target, extent))
    if inside and x.dtype == work:
        # the run lies within the input: view it in place, no copy
        slab = x[(Ellipsis, *source)]
    else:
        slab = _buffer("slab", shape, work) if buffered else np.empty(shape, dtype=work)
        if any(t.stop <= t.start for t in target):
            slab.fill(0)
        else:
            _zero_outside(slab, target)
            slab[(Ellipsis, *target)] = x[(Ellipsis, *source)]
    # (N, G, C, *extent): splitting the channel axis is always a view
    st = slab.strides
    slab = as_strided(slab, (spec.batch, spec.groups, spec.in_channels_per_group, *extent),
                      (st[0], st[1] * spec.in_channels_per_group, st[1], *st[2:]))
    st = slab.strides
    return as_strided(slab, (*slab.shape[:3], stop - first, *lengths),
                      (*st[:3], st[-1] * steps[-1], *st[3:]), writeable=False)


def _zero_outside(slab: np.ndarray, target: list[slice]) -> None:
    """Zero ``slab`` outside the box ``target`` on its trailing axes (not inside it)."""
    nd = len(target)
    for axis, box in enumerate(target):
        before = (slice(None),) * axis
        after = (slice(None),) * (nd - axis - 1)
        slab[(Ellipsis, *before, slice(0, box.start), *after)] = 0
        slab[(Ellipsis, *before, slice(box.stop, None), *after)] = 0


def _matmul_chunk(x: np.ndarray, kernel_freq: np.ndarray, spec: ConvSpec, plan: TilePlan,
                  out: np.ndarray, workers: int, rows: tuple[int, int]) -> None:
    """Tile rows ``rows[0]:rows[1]`` with the channel sum as one batched matmul."""
    nd = spec.spatial_ndim
    n, g = spec.batch, spec.groups
    c, o = spec.in_channels_per_group, spec.out_channels_per_group
    is_complex = _is_complex(spec)
    fwd = sp_fft.fftn if is_complex else sp_fft.rfftn
    lengths = plan.transform_shape
    freq_shape = _spectrum_shape(lengths, is_complex)
    freqs = math.prod(freq_shape)
    r0, r1 = rows
    grid = (r1 - r0, *plan.tile_counts[1:])
    t = math.prod(grid)
    tiles = _tiles_view(x, spec, plan, r0, r1, _work_dtype(spec))  # (N, G, C, *grid, *L)
    x_freq = fwd(tiles, lengths, axes=tuple(range(-nd, 0)), workers=workers)
    # (G, F, C, N*T): the batched-matmul layout
    x_mat = np.ascontiguousarray(x_freq.reshape(n, g, c, t, freqs).transpose(1, 4, 2, 0, 3))
    # (G, F, O, N*T) = (G, F, O, C) @ (G, F, C, N*T)
    y_mat = np.matmul(kernel_freq, x_mat.reshape(g, freqs, c, n * t))
    y_freq = y_mat.reshape(g, freqs, o, n, t).transpose(3, 0, 2, 4, 1)
    y_freq = y_freq.reshape(n, g, o, t, *freq_shape)  # a view: the axes split, never merge
    valid = _inverse_valid(y_freq, spec, plan, workers, False, prune=False)  # (N, G, O, T, *m)
    valid = valid.reshape(n, g, o, *grid, *valid.shape[4:])
    for lead in itertools.product(*(range(k) for k in grid[:-1])):
        # (N, G, O, s, *outputs): one line of tiles along the last tile axis
        line = valid[(slice(None),) * 3 + lead]
        if nd == 1:
            _store(out, line, (), r0, plan, spec.output_shape)
        else:
            _store(out, line, (r0 + lead[0], *lead[1:]), 0, plan, spec.output_shape)


def _complex_dtype(spec: ConvSpec) -> np.dtype:
    return np.result_type(_work_dtype(spec), np.complex64)


def _buffer(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch array ``name`` of ``shape``, reused from call to call.

    Storage up to :data:`BUFFER_CACHE_BYTES` per name stays with the thread (its
    pages are faulted in once); larger requests are plain allocations. Callers
    never hand these arrays out.
    """
    return scratch(f"fft.{name}", math.prod(shape), dtype, keep=BUFFER_CACHE_BYTES).reshape(shape)


def _channel_sum(x_freq: np.ndarray, kernel_freq: np.ndarray, buffered: bool) -> np.ndarray:
    """Output spectra ``(N, G, O, s, F)``: ``sum_c x_freq[:, :, c] * kernel_freq[:, :, c]``.

    ``x_freq`` is ``(N, G, C, s, F)`` and ours (it may be overwritten);
    ``kernel_freq`` is ``(G, O, C, F)``.
    """
    n, g, c, s, freqs = x_freq.shape
    o = kernel_freq.shape[1]
    if c == 1 and o == 1:  # single-channel filtering: multiply in place
        return np.multiply(x_freq, kernel_freq.reshape(1, g, 1, 1, freqs), out=x_freq)
    shape = (n, g, o, s, freqs)
    y_freq = _buffer("product", shape, x_freq.dtype) if buffered else np.empty(shape, x_freq.dtype)
    # (N, G, O, s, F) = (N, G, 1, s, F) * (1, G, O, 1, F), then += for the other channels
    np.multiply(x_freq[:, :, :1], kernel_freq[:, :, 0].reshape(1, g, o, 1, freqs), out=y_freq)
    if c > 1:
        term = _buffer("term", shape, x_freq.dtype) if buffered else np.empty_like(y_freq)
        for ci in range(1, c):
            kernel_c = kernel_freq[:, :, ci].reshape(1, g, o, 1, freqs)
            np.multiply(x_freq[:, :, ci:ci + 1], kernel_c, out=term)
            y_freq += term
    return y_freq


def _inverse_valid(y_freq: np.ndarray, spec: ConvSpec, plan: TilePlan, workers: int,
                   buffered: bool, prune: bool = True) -> np.ndarray:
    """Inverse transform of tile spectra ``(..., *freq_shape)``, only where outputs are valid.

    ``y_freq`` is ours: it is overwritten. Overlap-save keeps samples
    ``E - 1, E - 1 + stride, ...`` of each tile axis. The last axis is
    transformed last (a complex-to-real pass for real data), and only on the
    lines that hold valid outputs of the axes before it: ``tile_outputs`` of
    ``L`` lines (514 of 576 for a 63-tap kernel). Without ``prune``, one
    scipy.fft call transforms everything (cheaper for many small tiles: the
    3x3 64->64 layer ran 10% slower pruned).
    """
    nd = spec.spatial_ndim
    lengths = plan.transform_shape
    is_complex = _is_complex(spec)
    inner = tuple(slice(e - 1, e - 1 + (m - 1) * s + 1, s)
                  for e, m, s in zip(spec.effective_kernel_shape, plan.tile_outputs, spec.stride))
    y = y_freq
    if not prune:
        inverse = sp_fft.ifftn if is_complex else sp_fft.irfftn
        y = inverse(y, lengths, axes=tuple(range(-nd, 0)), workers=workers, overwrite_x=True)
        return y[(Ellipsis, *inner)]
    if nd > 1:
        if buffered:
            for axis in range(-nd, -1):
                np.fft.ifft(y, axis=axis, out=y)  # in place
        else:
            y = sp_fft.ifftn(y, lengths[:-1], axes=tuple(range(-nd, -1)), workers=workers,
                             overwrite_x=True)
        y = y[(Ellipsis, *inner[:-1], slice(None))]
    if buffered:
        dtype = _complex_dtype(spec) if is_complex else _work_dtype(spec)
        lines = _buffer("lines", (*y.shape[:-1], lengths[-1]), dtype)
        y = (np.fft.ifft if is_complex else np.fft.irfft)(y, lengths[-1], axis=-1, out=lines)
    else:
        inverse = sp_fft.ifft if is_complex else sp_fft.irfft
        y = inverse(y, lengths[-1], axis=-1, workers=workers, overwrite_x=True)
    return y[..., inner[-1]]


def _store(out: np.ndarray, valid: np.ndarray, lead: tuple[int, ...], first: int,
           plan: TilePlan, output_shape: tuple[int, ...]) -> None:
    """Write the outputs ``valid (N, G, O, s, *tile_outputs)`` of ``s`` tiles into ``out``.

    The tiles sit at tile index ``lead`` on every axis but the last and at
    ``first, ..., first + s - 1`` on the last; ``out`` is ``(N, G, O,
    *output_shape)``. Tiles past the output's end are cropped.
    """
    m, size = plan.tile_outputs, output_shape
    s = valid.shape[3]
    # block of `out` along the leading axes, and the part of the tiles that lands in it
    target_lead = tuple(slice(t * mi, min((t + 1) * mi, si)) for t, mi, si in zip(lead, m, size))
    source_lead = tuple(slice(0, sl.stop - sl.start) for sl in target_lead)
    # (N, G, O, *m[:-1], s, m[-1]): the tile run next to the in-tile offset it extends
    valid = np.moveaxis(valid, 3, -2)[(slice(None),) * 3 + source_lead]
    step, stop = m[-1], size[-1]
    whole = max(0, min(first + s, stop // step) - first)  # tiles that fit entirely
    if whole:
        span = slice(first * step, (first + whole) * step)
        region = out[(slice(None),) * 3 + (*target_lead, span)]
        # split the last axis into (tiles, outputs per tile): always a view
        region = as_strided(region, (*region.shape[:-1], whole, step),
                            (*region.strides[:-1], region.strides[-1] * step, region.strides[-1]))
        region[...] = valid[..., :whole, :]
    for j in range(whole, s):  # a last tile that runs past the output's end
        start = (first + j) * step
        if start < stop:
            out[(slice(None),) * 3 + (*target_lead, slice(start, stop))] = \
                valid[..., j, :stop - start]


def _run_items(task, items: list, threads: int, first=None) -> None:
    """Call ``task(item)`` for every item on up to ``threads`` threads; re-raise errors.

    ``first()``, if given, runs on the calling thread before it takes items. The
    calling thread works too, on the shared pool of ``_pool.run_parallel``; items are
    handed out one at a time, so uneven items balance themselves.
    """
    queue = LockedIterator(items)

    def drain() -> None:
        for item in queue:
            task(item)

    def lead() -> None:
        if first is not None:
            first()
        drain()

    helpers = max(0, min(threads, len(items)) - 1)
    run_parallel([lead] + [drain] * helpers)




class _Pending:
    """A value that one thread computes while others may already wait for it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value = None
        self._error: BaseException | None = None

    def compute(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._done.set()

    def get(self):
        self._done.wait()
        if self._error is not None:
            raise RuntimeError("the kernel spectrum failed in another thread") from self._error
        return self._value


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
                     work: np.dtype, workers: int, buffered: bool = False) -> np.ndarray:
    """Spectrum ``(G, O, C, F)`` of the flipped, dilated kernel at the tile length.

    With ``buffered``, single-threaded into the calling thread's scratch
    arrays: the result is valid until this thread's next call.
    """
    nd = spec.spatial_ndim
    kernel = dilate_kernel(weight.astype(work, copy=False), spec.dilation)
    # correlation = convolution with the kernel flipped on every spatial axis
    kernel = kernel[(Ellipsis, *([slice(None, None, -1)] * nd))]
    kernel = kernel.reshape(spec.groups, spec.out_channels_per_group, spec.in_channels_per_group,
                            *kernel.shape[2:])
    # Transform the last axis first, then the others one at a time: each pass
    # then skips the rows that are all zero padding (E instead of L per axis).
    if buffered:
        last = (np.fft.fft if _is_complex(spec) else np.fft.rfft)
        shape = (*kernel.shape[:-1], _spectrum_shape(lengths, _is_complex(spec))[-1])
        target = _buffer("kernel", shape, _complex_dtype(spec))
        freq = last(kernel, lengths[-1], axis=-1, out=target)
        for axis in range(nd - 2, -1, -1):
            shape = (*freq.shape[:3 + axis], lengths[axis], *freq.shape[4 + axis:])
            target = _buffer(f"kernel{axis}", shape, freq.dtype)
            freq = np.fft.fft(freq, lengths[axis], axis=axis - nd, out=target)
    else:
        freq = fwd(kernel, lengths[-1:], axes=(-1,), workers=workers)
        for axis in range(nd - 2, -1, -1):
            freq = sp_fft.fft(freq, lengths[axis], axis=axis - nd, workers=workers,
                              overwrite_x=True)
    return freq.reshape(*freq.shape[:3], -1)
