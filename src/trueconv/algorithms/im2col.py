"""im2col + GEMM: gather the windows into a column matrix, then let BLAS multiply.

The column matrix holds ``C * K`` rows per group and one column per output
position (Chainer ``im2col_nd_cpu``); the convolution is then the product
``(G, O, C*K) @ (G, C*K, P)``, whose result is already the channels-first output,
so no transpose follows. Choices that make it fast and bounded:

* **1x1, stride 1, unpadded** convolutions are a plain GEMM on the input itself,
  ``(G, O, C) @ (N, G, C, P)``: no gather, no workspace.
* **Phase planes, contiguous gathers** (the general path): per image, the
  zero-padded input is split into the phase planes of its stride (plane ``ph``
  holds padded samples ``ph, ph + s, ...`` per axis; one plane for stride 1), so
  that every tap reads a plain stride-1 window of one plane
  (:func:`plane_geometry`). Computed over whole plane rows ("wide": the few extra
  columns per row are multiplied too and dropped when the output is written), the
  window of each (tap, channel) over a band of output rows is one *contiguous* run
  of the flattened plane, so the gather is long contiguous copies instead of
  NumPy's element-wise strided copy, and the padding costs no separate pass.
  Measured (AMD EPYC, float32, 3x3/2 128->128 @56, batch 1): pad + strided gather
  0.08 + 0.39 ms became planes + contiguous gather 0.13 + 0.08 ms, next to a
  0.71 ms GEMM. Where the extra columns would cost more than
  ``WIDE_MAX_OVERHEAD`` (small planes, e.g. 7x7 padded to 9x9) the exact output
  rows are gathered from the planes instead.
* **Chunking and threads**: the columns are built for a band of output rows
  (whole images when they fit) sized to ``COLUMN_BYTES`` (cache-sized, so the
  gather's writes are still cached when BLAS reads them) and never more than an
  eighth of :func:`trueconv.get_memory_limit`: a huge image never needs its
  whole ``C*K x P`` column matrix. One image runs in the calling thread, each
  band's product on OpenBLAS's own threads (on this 2-core machine as fast as
  splitting the bands over workers, and steadier under load); several images are
  shared by worker threads, whole images each, one BLAS thread per worker, every
  worker filling its image's planes right before its gathers read them (3x3/2
  128->128 @56 batch 8: 14 ms before, 11 ms, on a loaded machine).
  :meth:`Im2col.workspace_bytes` reports the planes and bands actually allocated.
* **Few output positions, many taps** (the weight gradient: ``P`` is the kernel
  size, ``K`` the image): one GEMM per image would be a few columns wide, so the
  images of a chunk share one product ``(G, O, C*K) @ (G, C*K, images*P)``,
  gathered by a single strided copy of ``sliding_window_view`` (measured: the
  weight gradient of 3x3 64->64 @56 batch 8 fell from 127 ms to 55 ms).
* **Few output positions, kernel nearly as large as the input** (the weight gradient
  again: ``P`` = 3x3 positions, ``K`` = the 56x56 output gradient): no gather at all,
  the *flat-shift* path. The zero-padded input is laid out as planes
  ``(N, G, C*Q)`` (``Q`` the padded plane, all channels' planes concatenated) and
  the kernel embedded in the same plane geometry, channels-last ``(G, C*Q, O)``,
  with zeros where the plane has no tap. Output position ``t`` then reads the
  input at one flat offset ``s = shift(t)``, so that
  ``out[..., t] = planes[..., s:s+L] @ kernel[:, :L]`` is one BLAS product on a
  strided *view*, ``P`` products in all. The zeros cost
  ``Q / K`` extra multiply-adds (1.07x at 56x56 padded by 1); the path is taken
  only while that ratio stays under ``FLAT_SHIFT_MAX_OVERHEAD``. A kernel dilation
  (the forward stride, for the weight gradient) is a polyphase split: the plane
  of phase ``ph`` holds samples ``ph, ph + d, ...``, so every output position
  still reads one phase plane at one flat offset. The planes are built for a
  chunk of the reduction channels ``C`` at a time (``FLAT_SHIFT_BYTES``, at most
  a quarter of the memory limit), the products accumulated across chunks.
  The products are shared by worker threads, whole positions each, one BLAS
  thread per worker (``FLAT_SHIFT_PARALLEL_MACS``). Workspace: the phase planes
  and the embedded kernel of one chunk (about the padded input plus the
  kernel, capped at ``FLAT_SHIFT_BYTES`` or a quarter of the memory limit), the
  ``(P, G, N, O)`` accumulator and one ``(G, N, O)`` product per worker.
  Measured (AMD EPYC, float32, on a loaded machine): the weight gradient of 3x3
  64->64 @56 batch 8 fell from 42-47 ms (shared GEMM) to 19-22 ms on one thread
  (torch 11-14 ms), from 36 ms to 14 ms (best of 5) on two; the 9 BLAS products
  run at about 110 GFLOP/s, the ceiling of OpenBLAS for this thin shape.
* **Exactness**: integers stay integers (NumPy's int64 ``matmul`` is exact; the
  engine has already proven that no sum overflows), complex goes to ``zgemm``.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import ClassVar, Iterable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from .._memory import get_memory_limit
from .._spec import ConvSpec
from .._threads import get_num_threads
from ._base import (grouped, grouped_weight, numba_kernels, output_positions, tap_offsets,
                    zero_pad)
from ._pool import LockedIterator, drain, run_parallel, scratch, single_threaded_blas

#: Column-matrix bytes per band: big enough for BLAS to run at speed, small enough that the
#: gather's writes are still cached when BLAS reads them (ResNet conv1 at batch 1, one
#: thread: 1.84 ms in 2 MB bands, 2.14 ms in one 7.6 MB band, 2.05 ms in 1 MB bands).
COLUMN_BYTES = 2 * 2**20
#: Below this many output positions per image, one GEMM per image is too thin for BLAS
#: (the weight gradient's problem has P = kernel taps, e.g. 9), so the images of a chunk
#: share one GEMM: ``(G, O, C*K) @ (G, C*K, images*P)``.
THIN_POSITIONS = 256
#: The shared-GEMM layout trades cache locality for a wider product: allow larger chunks.
THIN_COLUMN_BYTES = 64 * 2**20
#: The flat-shift path multiplies the plane's zeros too (``Q / K`` multiply-adds per useful
#: one); beyond this ratio one gather into columns costs less than the wasted products.
FLAT_SHIFT_MAX_OVERHEAD = 2.0
#: Phase planes plus embedded kernel per chunk of reduction channels: the ``P`` products
#: of a chunk re-read the same planes, so a chunk that stays in L3 is read from DRAM once.
FLAT_SHIFT_BYTES = 32 * 2**20
#: The flat-shift products are shared by threads (whole positions, one BLAS thread each)
#: from this many multiply-adds on: OpenBLAS's own threads split each thin (N, L) @ (L, O)
#: product in two and stall when the cores are shared (measured, 3x3 64->64 @56 batch 8
#: weight gradient on a loaded 2-core machine: 35 ms with 2 BLAS threads, 19 ms shared).
FLAT_SHIFT_PARALLEL_MACS = 1 << 24


def _shifted_gather(spec: ConvSpec) -> bool:
    """Whether the shared-GEMM columns come from the compiled shifted-plane gather: 1-D or
    2-D, stride 1, dilation 1, output plane = input plane ("same" pads), Numba present."""
    return (spec.spatial_ndim <= 2 and spec.output_shape == spec.input_shape
            and all(s == 1 for s in spec.stride) and all(d == 1 for d in spec.dilation)
            and numba_kernels() is not None)


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


def flat_shift_plane(spec: ConvSpec) -> tuple[int, ...]:
    """Shape ``Q`` of one phase plane: per axis ``ceil(padded / dilation)``."""
    return tuple(-(-p // d) for p, d in zip(spec.padded_shape, spec.dilation))


def flat_shift_overhead(spec: ConvSpec) -> float | None:
    """Multiply-adds of the flat-shift path per useful one, or None when the path is not taken.

    Taken for few output positions (``P < THIN_POSITIONS``, one BLAS product each) and
    a kernel that covers most of the plane (``Q / K <= FLAT_SHIFT_MAX_OVERHEAD``).
    """
    if is_pointwise(spec) or output_positions(spec) >= THIN_POSITIONS:
        return None
    ratio = math.prod(flat_shift_plane(spec)) / spec.kernel_size
    return ratio if ratio <= FLAT_SHIFT_MAX_OVERHEAD else None


def _flat_shift_phases(spec: ConvSpec) -> tuple[list[tuple[int, ...]], list[int], list[int]]:
    """Return the phases in use, and per output position (C order) its phase index and flat shift.

    Output ``t`` and tap ``m`` read padded sample ``t*s + m*d = d*(u + m) + ph`` with
    ``ph = t*s mod d`` and ``u = t*s // d``: sample ``u + m`` of phase plane ``ph``.
    """
    plane = flat_shift_plane(spec)
    plane_strides = [math.prod(plane[a + 1:]) for a in range(len(plane))]
    phase_of, shift_of = [], []
    for t in itertools.product(*(range(p) for p in spec.output_shape)):
        phase_of.append(tuple(ti * s % d for ti, s, d in zip(t, spec.stride, spec.dilation)))
        shift_of.append(sum(ti * s // d * st for ti, s, d, st
                            in zip(t, spec.stride, spec.dilation, plane_strides)))
    used = sorted(set(phase_of))
    index = {ph: i for i, ph in enumerate(used)}
    return used, [index[ph] for ph in phase_of], shift_of


def flat_shift_chunk(spec: ConvSpec, phases: int) -> int:
    """Reduction channels ``C`` per chunk: planes of ``phases`` phases plus the embedded kernel."""
    per_channel = (spec.batch * phases + spec.out_channels_per_group) * spec.groups * \
        math.prod(flat_shift_plane(spec)) * spec.itemsize
    budget = max(1, min(FLAT_SHIFT_BYTES, get_memory_limit() // 4))
    return max(1, min(spec.in_channels_per_group, budget // max(per_channel, 1)))


def flat_shift_work(spec: ConvSpec) -> tuple[float, float, float] | None:
    """``(multiply-adds, bytes copied into planes, BLAS calls)`` of the flat-shift path, or None.

    For the planner's cost model: the plane's zeros are multiplied too, the input and
    kernel are copied once into planes (no gather), and each output position of each
    chunk of ``C`` is one product per group.
    """
    overhead = flat_shift_overhead(spec)
    if overhead is None:
        return None
    phases = len(_flat_shift_phases(spec)[0])
    n, g = spec.batch, spec.groups
    c, o = spec.in_channels_per_group, spec.out_channels_per_group
    chunks = -(-c // flat_shift_chunk(spec, phases))
    copied = (n * phases + o) * g * c * math.prod(flat_shift_plane(spec)) * spec.itemsize
    return float(spec.macs * overhead), float(copied), float(output_positions(spec) * g * chunks)


def flat_shift_workers(spec: ConvSpec) -> int:
    """Threads that share the flat-shift products: one per position up to the thread count.

    Below ``FLAT_SHIFT_PARALLEL_MACS`` the products run in the calling thread (a thread
    handoff costs tens of microseconds).
    """
    overhead = flat_shift_overhead(spec) or 1.0
    if spec.macs * overhead < FLAT_SHIFT_PARALLEL_MACS:
        return 1
    return max(1, min(get_num_threads(), output_positions(spec)))


def _fill_phase_plane(target: np.ndarray, x: np.ndarray, phase: tuple[int, ...],
                      spec: ConvSpec, period: tuple[int, ...] | None = None,
                      zero_rest: bool = False) -> None:
    """Copy the samples of ``x`` (unpadded) that land on ``phase`` into their plane positions.

    Padded index ``i = before + j`` lies on phase ``i mod d`` at plane position ``i // d``,
    ``d`` the ``period`` per axis (default: the dilation). With ``zero_rest`` the plane
    positions outside the copied box (the padding) are set to zero; otherwise the
    caller has zeroed the plane.
    """
    source, destination = [], []
    sizes = x.shape[-len(phase):]
    period = spec.dilation if period is None else period
    for ph, d, (before, _), size in zip(phase, period, spec.pad_widths, sizes):
        first = (ph - before) % d  # first unpadded sample j on this phase
        if first >= size:
            if zero_rest:
                target[...] = 0
            return  # the phase holds padding only: the plane stays zero
        count = len(range(first, size, d))
        start = (before + first) // d
        source.append(slice(first, size, d))
        destination.append(slice(start, start + count))
    target[(Ellipsis, *destination)] = x[(Ellipsis, *source)]
    if zero_rest:
        lead = target.ndim - len(phase)
        for axis, box in enumerate(destination):
            prefix = (slice(None),) * (lead + axis)
            if box.start:
                target[(*prefix, slice(0, box.start))] = 0
            if box.stop < target.shape[lead + axis]:
                target[(*prefix, slice(box.stop, None))] = 0


#: The phase-plane path computes whole plane rows ("wide" output: the plane's extra
#: columns are multiplied too and dropped) while that costs at most this factor in
#: multiply-adds; beyond it (small planes: 512->512 @7, padded to 9, would cost 9/7)
#: it gathers the exact output rows instead.
WIDE_MAX_OVERHEAD = 1.15
#: Split one image's row bands over worker threads (one BLAS thread each) instead of
#: running each band's product on OpenBLAS's threads. Off: on this 2-core machine the two
#: measured alike in a quiet moment (3x3/2 128->128 @56: 1.12 vs 1.14 ms) and the split
#: slower under load (1.95 vs 1.38 ms: a pool thread's wake-up is late when another
#: process holds the core). Several images always go to workers.
SPLIT_ONE_IMAGE = False


class PlaneGeometry(NamedTuple):
    """How the phase-plane path lays out one image (see :func:`plane_geometry`)."""

    plane: tuple[int, ...]       # phase plane shape Q: ceil(padded / stride) per axis
    flat: int                    # items per (phase, channel) plane, tail slack included
    phases: tuple[tuple[int, ...], ...]  # the phases the taps read
    tap_phase: tuple[int, ...]   # per tap (C order): index into ``phases``
    tap_start: tuple[tuple[int, ...], ...]  # per tap: first plane position read, per axis
    tap_shift: tuple[int, ...]   # per tap: flat offset of ``tap_start`` in the plane
    wide: bool                   # compute whole plane rows (flat columns) or exact rows
    direct: bool                 # stride 1, no padding: the input is its own plane, no copy
    # per phase: (phase index, the kernel slices of its taps, taps per axis, flat step per
    # axis between consecutive taps, flat offset of its first tap) - the taps of one phase
    # form a lattice, so one strided view reads all their columns at once
    groups: tuple[tuple[int, tuple[slice, ...], tuple[int, ...], tuple[int, ...], int], ...]
    row: int                     # columns per output row: prod(Q[1:]) wide, else prod(out[1:])


def plane_geometry(spec: ConvSpec) -> PlaneGeometry:
    """Phase planes of the strided input, and where each tap reads them (cached per spec).

    See :func:`_plane_geometry`.
    """
    return _plane_geometry(spec, WIDE_MAX_OVERHEAD)


@functools.lru_cache(maxsize=1024)
def _plane_geometry(spec: ConvSpec, wide_max_overhead: float) -> PlaneGeometry:
    """Phase planes of the strided input, and where each tap reads them.

    Output ``t`` and tap ``m`` read padded sample ``t*s + m*d`` per axis, which is
    sample ``t + (m*d) // s`` of the phase plane ``(m*d) mod s`` (the padded input
    subsampled by ``s`` from that offset). So in the planes every tap reads a plain
    stride-1 window, and flattened, a *contiguous* run per output row, or per band of
    output rows when the output is computed over whole plane rows (``wide``): the
    gather becomes long contiguous copies instead of a strided one (3x3/2 128->128
    @56: 0.10 ms instead of 0.39 ms), and padding is written into the planes at no
    extra pass.
    """
    plane = tuple(-(-p // s) for p, s in zip(spec.padded_shape, spec.stride))
    strides = [math.prod(plane[a + 1:]) for a in range(len(plane))]
    phase_of = [tuple(m * d % s for m, d, s in zip(tap, spec.dilation, spec.stride))
                for tap in tap_offsets(spec)]
    starts = tuple(tuple(m * d // s for m, d, s in zip(tap, spec.dilation, spec.stride))
                   for tap in tap_offsets(spec))
    phases = tuple(sorted(set(phase_of)))
    index = {ph: i for i, ph in enumerate(phases)}
    shifts = tuple(sum(u * st for u, st in zip(start, strides)) for start in starts)
    out = spec.output_shape
    overhead = math.prod(plane[1:]) / math.prod(out[1:])
    # stride 1 and no padding: the plane is the input itself, gathered from in place (exact
    # rows, any strides), so nothing is copied into planes
    direct = all(s == 1 for s in spec.stride) and not any(lo or hi for lo, hi in spec.pad_widths)
    wide = overhead <= wide_max_overhead and not direct
    row = math.prod(plane[1:]) if wide else math.prod(out[1:])
    # a wide band reads up to ``shift + out[0] * row`` items: the planes carry zeros beyond Q
    flat = max(math.prod(plane), max(shifts) + out[0] * row) if wide else math.prod(plane)
    groups = []
    for i, phase in enumerate(phases):
        # along one axis the taps on phase ``ph`` are m0, m0 + s/g, ... (g = gcd(d, s)),
        # reading plane positions u0, u0 + d/g, ...
        first = [next(m for m in range(k) if m * d % s == ph)
                 for ph, k, d, s in zip(phase, spec.kernel_shape, spec.dilation, spec.stride)]
        steps = [s // math.gcd(d, s) for d, s in zip(spec.dilation, spec.stride)]
        counts = tuple(len(range(m0, k, st)) for m0, k, st in zip(first, spec.kernel_shape, steps))
        flat_steps = tuple(st * d // s * ps for st, d, s, ps
                           in zip(steps, spec.dilation, spec.stride, strides))
        base = sum(m0 * d // s * ps for m0, d, s, ps in zip(first, spec.dilation, spec.stride,
                                                              strides))
        groups.append((i, tuple(slice(m0, None, st) for m0, st in zip(first, steps)), counts,
                       flat_steps, base))
    return PlaneGeometry(plane, flat, phases, tuple(index[ph] for ph in phase_of), starts,
                         shifts, wide, direct, tuple(groups), row)


def plane_items(spec: ConvSpec, geometry: PlaneGeometry) -> list[tuple[int, int, int]]:
    """Work items ``(image, first row, stop row)``: bands of output rows whose columns fit
    ``COLUMN_BYTES`` (whole images when they fit, at least one row) and at most an
    eighth of the memory limit per band."""
    n, rows_total = spec.batch, spec.output_shape[0]
    per_row = spec.in_channels * spec.kernel_size * geometry.row * spec.itemsize
    budget = max(1, min(COLUMN_BYTES, get_memory_limit() // 8))
    rows = max(1, min(rows_total, budget // max(per_row, 1)))
    if SPLIT_ONE_IMAGE and n < get_num_threads():
        rows = min(rows, -(-rows_total // -(-get_num_threads() // max(n, 1))))
    rows = -(-rows_total // -(-rows_total // rows))  # even bands, none larger than before
    return [(i, r0, min(r0 + rows, rows_total))
            for i in range(n) for r0 in range(0, rows_total, rows)]


def plane_workers(spec: ConvSpec, items: list[tuple[int, int, int]]) -> int:
    """Worker threads of the phase-plane path, each running BLAS on one thread; 1 means the
    calling thread does every item and OpenBLAS threads each product itself (one image)."""
    if spec.batch < 2 and not SPLIT_ONE_IMAGE:
        return 1
    return max(1, min(get_num_threads(), len(items)))


def plane_workspace(spec: ConvSpec) -> int:
    """Bytes of the phase-plane path: per worker one image's planes (all images' when the
    workers share one image's bands), its columns and its (wide) product buffer."""
    geometry = plane_geometry(spec)
    image = 0 if geometry.direct else len(geometry.phases) * spec.in_channels * geometry.flat
    items = plane_items(spec, geometry)
    workers = plane_workers(spec, items)
    rows = max((r1 - r0 for _, r0, r1 in items), default=0)
    per_worker = spec.in_channels * spec.kernel_size * rows * geometry.row
    if geometry.wide:
        per_worker += spec.out_channels * rows * geometry.row
    if workers > 1 and spec.batch < workers:
        return (spec.batch * image + workers * per_worker) * spec.itemsize
    return workers * (image + per_worker) * spec.itemsize


def plane_work(spec: ConvSpec) -> tuple[float, float, float] | None:
    """``(multiply-adds, bytes copied, BLAS calls)`` of the phase-plane path, or None when
    another path serves ``spec`` (pointwise, flat-shift, shared GEMM).

    For the planner's cost model: a wide band multiplies the plane's extra columns too;
    the copies are the planes (about the padded input, strided reads) plus the gathered
    columns (contiguous runs); one product per band.
    """
    if is_pointwise(spec) or flat_shift_overhead(spec) is not None:
        return None
    images, rows = column_chunk(spec)
    if output_positions(spec) < THIN_POSITIONS and rows == spec.output_shape[0]:
        return None
    geometry = plane_geometry(spec)
    computed = spec.output_shape[0] * geometry.row  # columns per image
    macs = spec.macs * computed / output_positions(spec)
    planes = 0 if geometry.direct else \
        spec.batch * len(geometry.phases) * spec.in_channels * math.prod(geometry.plane)
    columns = spec.batch * spec.in_channels * spec.kernel_size * computed
    calls = len(plane_items(spec, geometry)) * spec.groups
    return float(macs), float((planes + columns) * spec.itemsize), float(calls)


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
        if flat_shift_overhead(spec) is not None:
            # phase planes + embedded kernel for one chunk of C, the (P, G, N, O) accumulator
            # and one (G, N, O) product buffer per worker (the final transpose is the output)
            phases = len(_flat_shift_phases(spec)[0])
            chunk = flat_shift_chunk(spec, phases)
            planes = (spec.batch * phases + spec.out_channels_per_group) * spec.groups * chunk * \
                math.prod(flat_shift_plane(spec))
            product = spec.groups * spec.batch * spec.out_channels_per_group
            accumulator = output_positions(spec) * product
            return (planes + accumulator + flat_shift_workers(spec) * product) * spec.itemsize
        images, rows = column_chunk(spec)
        if output_positions(spec) < THIN_POSITIONS and rows == spec.output_shape[0]:
            # the shared GEMM: one chunk of columns, its product, and the padded input
            images = min(images, max(spec.batch, 1))
            columns = images * spec.in_channels * spec.kernel_size * output_positions(spec)
            product = images * spec.out_channels * output_positions(spec) if images > 1 else 0
            padded = 0
            if any(lo or hi for lo, hi in spec.pad_widths):
                padded = spec.batch * spec.in_channels * math.prod(spec.padded_shape)
            return (columns + product + padded) * spec.itemsize
        return plane_workspace(spec)

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

        if flat_shift_overhead(spec) is not None:
            return self._run_flat_shift(x, weight, spec)
        images, rows = column_chunk(spec)
        if p < THIN_POSITIONS and rows == spec.output_shape[0]:
            if _shifted_gather(spec):
                return self._run_shared_gemm(x, w, out, images, spec, compiled=True)
            x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *padded)
            return self._run_shared_gemm(x_padded, w, out, images, spec)
        if n and p:
            self._run_planes(x, w, out, spec)
        return out.reshape(spec.full_output_shape)

    @staticmethod
    def _run_planes(x: np.ndarray, w: np.ndarray, out: np.ndarray, spec: ConvSpec) -> None:
        """The phase-plane path (see :func:`plane_geometry`): per image its phase planes, then
        per band of output rows a gather of contiguous runs and one product."""
        # Legend: F phases, Q plane positions (flat), W columns per output row of a band.
        n, g = spec.batch, spec.groups
        c, o, k = spec.in_channels_per_group, spec.out_channels_per_group, spec.kernel_size
        geo = plane_geometry(spec)
        f, q, row = len(geo.phases), math.prod(geo.plane), geo.row
        cin = spec.in_channels
        items = plane_items(spec, geo)
        workers = plane_workers(spec, items)
        # One image's bands split over the workers share one set of planes, filled first by
        # all of them; otherwise each worker takes whole images and fills their planes
        # itself, right before its gathers read them (still in its L2: 3x3/2 128->128 @56
        # batch 8 spent 1.25 ms in a separate fill pass over the batch's planes).
        shared = workers > 1 and n < workers and not geo.direct
        rows_max = max(r1 - r0 for _, r0, r1 in items)
        out_nd = out.reshape(n, g, o, *spec.output_shape)
        keep = (Ellipsis, *(slice(0, m) for m in spec.output_shape[1:]))

        def fill(planes: np.ndarray, i: int, c0: int, c1: int) -> None:
            """Phase planes ``(F, c1 - c0, flat)`` of channels ``c0:c1`` of image ``i``."""
            planes[..., q:] = 0  # the tail that wide bands read past the plane
            planes_nd = planes[..., :q].reshape(f, c1 - c0, *geo.plane)
            for index, phase in enumerate(geo.phases):
                _fill_phase_plane(planes_nd[index], x[i, c0:c1], phase, spec, spec.stride,
                                  zero_rest=True)

        def source(planes: np.ndarray, i: int) -> np.ndarray:
            """What :func:`gather` reads for image ``i``: its flat planes (F, Cin, flat) when
            wide, else (F, Cin, *Q) planes; the input itself when it is its own plane."""
            if geo.direct:
                return x[i][np.newaxis]
            return planes if geo.wide else planes[..., :q].reshape(f, cin, *geo.plane)

        def gather(planes: np.ndarray, cols: np.ndarray, r0: int, r1: int, c0: int,
                   c1: int) -> None:
            """Columns ``cols`` (Cin, K, R*W) of channels ``c0:c1`` for output rows ``r0:r1``
            from one image's planes (as :func:`source` returns them)."""
            if geo.wide:
                # each tap's rows are one contiguous run of every (phase, channel) plane, and
                # the runs of one phase's taps are one strided view: one copy per phase, not
                # per tap (ResNet conv1: 4 copies instead of 49 per band)
                span = (r1 - r0) * row
                cols_k = cols.reshape(cin, *spec.kernel_shape, span)
                item = planes.itemsize
                for index, taps, counts, flat_steps, base in geo.groups:
                    start = planes[index, c0:c1, base + r0 * row:]
                    runs = as_strided(start, (c1 - c0, *counts, span),
                                      (start.strides[0], *(fs * item for fs in flat_steps), item),
                                      writeable=False)
                    cols_k[(slice(c0, c1), *taps)] = runs
                return
            planes_nd = planes  # (F, Cin, *Q), see source()
            cols_nd = cols.reshape(cin, k, r1 - r0, *spec.output_shape[1:])
            for kk in range(k):
                start = geo.tap_start[kk]
                window = (slice(start[0] + r0, start[0] + r1),
                          *(slice(u, u + m) for u, m in zip(start[1:], spec.output_shape[1:])))
                cols_nd[c0:c1, kk] = planes_nd[(geo.tap_phase[kk], slice(c0, c1), *window)]

        def multiply(cols: np.ndarray, wide: np.ndarray | None, i: int, r0: int, r1: int) -> None:
            """The band's product, written into rows ``r0:r1`` of image ``i``'s output."""
            span = (r1 - r0) * row
            if wide is None:
                # (G, O, R*W) = (G, O, C*K) @ (G, C*K, R*W), into the output's band
                np.matmul(w, cols.reshape(g, c * k, span), out=out[i, :, :, r0 * row:r1 * row])
                return
            product = wide[: g * o * span].reshape(g, o, span)
            # (G, O, R*W) = (G, O, C*K) @ (G, C*K, R*W); the plane's extra columns dropped
            np.matmul(w, cols.reshape(g, c * k, span), out=product)
            out_nd[i, :, :, r0:r1] = product.reshape(g, o, r1 - r0, *geo.plane[1:])[keep]

        def buffers() -> tuple[np.ndarray, np.ndarray | None]:
            columns = scratch("im2col.columns", cin * k * rows_max * row, out.dtype)
            wide = scratch("im2col.wide", g * o * rows_max * row, out.dtype) if geo.wide else None
            return columns, wide

        def band_columns(columns: np.ndarray, r0: int, r1: int) -> np.ndarray:
            return columns[: cin * k * (r1 - r0) * row].reshape(cin, k, (r1 - r0) * row)

        if shared:
            planes = scratch("im2col.planes", n * f * cin * geo.flat, out.dtype).reshape(
                n, f, cin, geo.flat)
            step = -(-cin // max(1, min(cin, -(-workers // n))))
            fills = LockedIterator([(i, c0, min(c0 + step, cin))
                                    for i in range(n) for c0 in range(0, cin, step)])
            drain(lambda: [fill(planes[i, :, c0:c1], i, c0, c1) for i, c0, c1 in fills],
                   workers)
            bands = LockedIterator(items)

            def shared_work() -> None:
                columns, wide = buffers()
                for i, r0, r1 in bands:
                    cols = band_columns(columns, r0, r1)
                    gather(source(planes[i], i), cols, r0, r1, 0, cin)
                    multiply(cols, wide, i, r0, r1)

            with single_threaded_blas():  # one BLAS thread per worker
                drain(shared_work, workers)
            return

        if workers == 1:
            # One image at a time in this thread, each band's product on OpenBLAS's threads.
            # The copies stay in this thread too: sharing them with pool threads measured
            # slower (3x3/2 128->128 @56: 1.63 vs 1.32 ms): OpenBLAS's threads spin-wait
            # for some 0.1 s after each product and take the core the helper needs.
            planes = scratch("im2col.planes", 0 if geo.direct else f * cin * geo.flat,
                             out.dtype).reshape(0 if geo.direct else f, cin, geo.flat)
            columns, wide = buffers()
            for index, (i, r0, r1) in enumerate(items):
                cols = band_columns(columns, r0, r1)
                if index % (len(items) // n) == 0 and not geo.direct:
                    fill(planes, i, 0, cin)
                gather(source(planes, i), cols, r0, r1, 0, cin)
                multiply(cols, wide, i, r0, r1)
            return

        # Several images: the workers take whole images, one BLAS thread each, and fill
        # each image's planes right before their gathers read them.
        images = LockedIterator([(i,) for i in range(n)])

        def work() -> None:
            planes = scratch("im2col.planes", 0 if geo.direct else f * cin * geo.flat,
                             out.dtype).reshape(0 if geo.direct else f, cin, geo.flat)
            columns, wide = buffers()
            for (i,) in images:
                if not geo.direct:
                    fill(planes, i, 0, cin)
                for _, r0, r1 in items[i * len(items) // n:(i + 1) * len(items) // n]:
                    cols = band_columns(columns, r0, r1)
                    gather(source(planes, i), cols, r0, r1, 0, cin)
                    multiply(cols, wide, i, r0, r1)

        with single_threaded_blas():  # one BLAS thread per worker
            drain(work, workers)

    @staticmethod
    def _run_shared_gemm(x: np.ndarray, w: np.ndarray, out: np.ndarray, images: int,
                         spec: ConvSpec, compiled: bool = False) -> np.ndarray:
        """Few output positions, many taps: the images of a chunk share one wide GEMM.

        ``x`` is the zero-padded input grouped (N, G, C, *padded), or with ``compiled``
        the input itself, whose columns the compiled gather copies, pads implicit.
        """
        n, g = spec.batch, spec.groups
        c, o, k = spec.in_channels_per_group, spec.out_channels_per_group, spec.kernel_size
        p = output_positions(spec)
        nd = spec.spatial_ndim
        if not compiled:
            lead = x.ndim - nd  # N, G, C
            # Every window at once as a strided view (N, G, C, *out, *kernel); NumPy's copy
            # loop then gathers them whatever the ratio of taps to positions.
            windows = sliding_window_view(x, spec.effective_kernel_shape,
                                          axis=tuple(range(lead, lead + nd)))
            windows = windows[(Ellipsis, *(slice(None, None, s) for s in spec.stride),
                               *(slice(None, None, d) for d in spec.dilation))]
            # -> (G, C, *kernel, N, *out): rows C*K, columns images*P
            order = (1, 2, *range(lead + nd, lead + 2 * nd), 0, *range(lead, lead + nd))
            windows = windows.transpose(order)
        else:
            x = np.ascontiguousarray(x)
            pads = tuple(lo for lo, _ in spec.pad_widths)
        # One product per chunk on OpenBLAS's threads: splitting the images over workers,
        # one BLAS thread each, measured slower (3x3 512->512 @7 batch 8: 15 vs 9 ms; each
        # worker streams the whole 9 MB weight from L3 for its thin product).
        for n0 in range(0, n, images):
            nb = min(images, n - n0)
            cols = scratch("im2col.columns", g * c * k * nb * p, out.dtype).reshape(
                g, c, *spec.kernel_shape, nb, *spec.output_shape)
            if compiled:
                numba_kernels().gather_windows(x, cols.reshape(g * c, *cols.shape[2:]), n0,
                                               pads)
            else:
                np.copyto(cols, windows[(slice(None),) * (2 + nd) + (slice(n0, n0 + nb),)])
            # (G, O, nb*P) = (G, O, C*K) @ (G, C*K, nb*P); one image's product is its output
            if nb == 1:
                np.matmul(w, cols.reshape(g, c * k, p), out=out[n0])
                continue
            product = scratch("im2col.product", g * o * nb * p, out.dtype).reshape(g, o, nb * p)
            np.matmul(w, cols.reshape(g, c * k, nb * p), out=product)
            out[n0:n0 + nb] = product.reshape(g, o, nb, p).transpose(2, 0, 1, 3)
        return out.reshape(spec.full_output_shape)

    @staticmethod
    def _run_flat_shift(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        """Few output positions, kernel nearly the plane: one GEMM per position on a flat view."""
        # Legend: Q plane positions (flat), L the flat span of the kernel over a chunk of C.
        n, g = spec.batch, spec.groups
        c, o, p = spec.in_channels_per_group, spec.out_channels_per_group, output_positions(spec)
        plane = flat_shift_plane(spec)
        q = math.prod(plane)
        used, phase_index, shifts = _flat_shift_phases(spec)
        chunk = flat_shift_chunk(spec, len(used))
        # flat offset of the kernel's last tap within one plane, plus one
        kernel_span = 1 + sum((m - 1) * math.prod(plane[a + 1:])
                              for a, m in enumerate(spec.kernel_shape))
        dtype = np.result_type(x, weight)
        x_grouped = grouped(x, spec)  # (N, G, C, *S)
        w_grouped = weight.reshape(g, o, c, *spec.kernel_shape)
        kernel_region = (slice(None), slice(None), *(slice(0, m) for m in spec.kernel_shape))
        unpadded = all(d == 1 for d in spec.dilation) and \
            not any(lo or hi for lo, hi in spec.pad_widths)
        result = np.empty((p, g, n, o), dtype=dtype)  # per position, (G, N, O)
        workers = flat_shift_workers(spec)
        for c0 in range(0, c, chunk):
            cb = min(chunk, c - c0)
            span = (cb - 1) * q + kernel_span
            if unpadded and cb == c and x.flags.c_contiguous:
                planes = x.reshape(1, n, g, c * q)  # the input is its own plane: no copy
            else:
                planes = np.zeros((len(used), n, g, cb, *plane), dtype=dtype)
                for i, phase in enumerate(used):
                    _fill_phase_plane(planes[i], x_grouped[:, :, c0:c0 + cb], phase, spec)
                planes = planes.reshape(len(used), n, g, cb * q)
            # The kernel channels-last, (G, C*Q, O): BLAS runs the (N, L) @ (L, O) product at
            # 1.3-1.6x the speed it reaches with the (O, L) kernel read transposed (measured,
            # float32, 64x64 outputs, L = 25k), for one transposing copy (~1 ms at 6 MB).
            kernel = np.zeros((g, cb, *plane, o), dtype=dtype)
            kernel[kernel_region] = np.moveaxis(w_grouped[:, :, c0:c0 + cb], 1, -1)
            kernel_flat = kernel.reshape(g, cb * q, o)[:, :span]  # (G, L, O)

            def products(positions: Iterable[int], planes: np.ndarray = planes,
                         kernel_flat: np.ndarray = kernel_flat, span: int = span,
                         first: bool = c0 == 0) -> None:
                product = None if first else np.empty((g, n, o), dtype=dtype)
                for t in positions:
                    shift = shifts[t]
                    # (G, N, L) strided view of phase plane phase_index[t] at the position's offset
                    view = planes[phase_index[t], :, :, shift:shift + span].transpose(1, 0, 2)
                    # (G, N, O) = (G, N, L) @ (G, L, O)
                    if first:
                        np.matmul(view, kernel_flat, out=result[t])
                    else:
                        np.matmul(view, kernel_flat, out=product)
                        result[t] += product

            if workers == 1:
                products(range(p))
            else:
                # The positions shared by the workers, one BLAS thread each (see _pool.py).
                queue = LockedIterator(list(range(p)))
                with single_threaded_blas():
                    run_parallel([lambda: products(queue)] * workers)
        # (P, G, N, O) -> (N, G, O, P)
        return np.ascontiguousarray(result.transpose(2, 1, 3, 0)).reshape(spec.full_output_shape)
