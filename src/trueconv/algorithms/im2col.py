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

import itertools
import math
from typing import ClassVar, Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._memory import get_memory_limit
from .._spec import ConvSpec
from .._threads import get_num_threads
from ._base import grouped, grouped_weight, output_positions, tap_offsets, tap_view, zero_pad
from ._pool import LockedIterator, run_parallel, scratch, single_threaded_blas

#: Column-matrix bytes per chunk: big enough for BLAS to run at speed, small enough for L2/L3.
COLUMN_BYTES = 8 * 2**20
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
                      spec: ConvSpec) -> None:
    """Copy the samples of ``x`` (unpadded) that land on ``phase`` into their plane positions.

    Padded index ``i = before + j`` lies on phase ``i mod d`` at plane position ``i // d``.
    """
    source, destination = [], []
    sizes = x.shape[-len(phase):]
    for ph, d, (before, _), size in zip(phase, spec.dilation, spec.pad_widths, sizes):
        first = (ph - before) % d  # first unpadded sample j on this phase
        if first >= size:
            return  # the phase holds padding only: the plane stays zero
        count = len(range(first, size, d))
        start = (before + first) // d
        source.append(slice(first, size, d))
        destination.append(slice(start, start + count))
    target[(Ellipsis, *destination)] = x[(Ellipsis, *source)]


def column_items(spec: ConvSpec, images: int, rows: int) -> list[tuple[int, int, int, int]]:
    """Chunks ``(first image, images, first row, stop row)`` of the column matrix.

    Strided convolutions get at least one chunk of whole images per thread where the
    batch allows: their gather (a strided NumPy copy, single-threaded) is slow enough
    that running it on every core pays (3x3/2 128->128 @56 batch 8: 11.5 -> 10.3 ms on
    2 threads). Elsewhere, and for row bands of one image, OpenBLAS's own threads on
    one larger product measured faster (conv1d k=3 batch 8: 3.8 vs 4.1-4.5 ms; ResNet
    conv1 and 3x3/2 at batch 1: 1.3-1.6 vs 1.5-2.1 ms).
    """
    threads = max(1, get_num_threads())
    n, rows_total = spec.batch, spec.output_shape[0]
    if any(s > 1 for s in spec.stride) and rows == rows_total and -(-n // images) < threads:
        images = max(1, min(images, -(-n // threads)))
    return [(n0, min(images, n - n0), r0, min(r0 + rows, rows_total))
            for n0 in range(0, n, images) for r0 in range(0, rows_total, rows)]


def column_workers(spec: ConvSpec, items: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """``(worker threads, column entries of the largest chunk)``: one buffer per worker, all of
    them within a quarter of the memory limit (a single worker always runs)."""
    largest = max(nb * (r1 - r0) for _, nb, r0, r1 in items) * \
        spec.in_channels * spec.kernel_size * math.prod(spec.output_shape[1:])
    fit = get_memory_limit() // 4 // max(1, largest * spec.itemsize)
    threads = get_num_threads() if any(s > 1 for s in spec.stride) else 1
    return max(1, min(threads, len(items), fit)), largest


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
        rest = math.prod(spec.output_shape[1:])
        images = min(images, max(spec.batch, 1))
        columns = images * spec.in_channels * spec.kernel_size * rows * rest
        if spec.batch and not (output_positions(spec) < THIN_POSITIONS and
                               rows == spec.output_shape[0]):
            # one chunk buffer per worker thread
            workers, largest = column_workers(spec, column_items(spec, images, rows))
            columns = workers * largest
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

        if flat_shift_overhead(spec) is not None:
            return self._run_flat_shift(x, weight, spec)
        x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *padded)
        images, rows = column_chunk(spec)
        if p < THIN_POSITIONS and rows == spec.output_shape[0]:
            return self._run_shared_gemm(x_padded, w, out, images, spec)
        rows_total = spec.output_shape[0]
        rest = p // rows_total  # positions per output row
        items = column_items(spec, images, rows)
        workers, largest = column_workers(spec, items)
        taps = list(enumerate(tap_offsets(spec)))
        queue = LockedIterator(items)

        def worker() -> None:
            # Each worker gathers its own chunks and multiplies them with one BLAS thread,
            # so the gather runs on every core too (strided problems, see column_items).
            buffer = scratch("im2col.columns", largest, out.dtype)
            for n0, nb, r0, r1 in queue:
                cols = buffer[: nb * g * c * k * (r1 - r0) * rest].reshape(
                    nb, g, c, k, r1 - r0, *spec.output_shape[1:])
                part = x_padded[n0:n0 + nb]
                for kk, tap in taps:  # one strided (nb, G, C, *out) view per tap
                    cols[:, :, :, kk] = tap_view(part, tap, spec)[:, :, :, r0:r1]
                # (nb, G, O, R*rest) = (G, O, C*K) @ (nb, G, C*K, R*rest), into the output slice
                np.matmul(w, cols.reshape(nb, g, c * k, (r1 - r0) * rest),
                          out=out[n0:n0 + nb, :, :, r0 * rest:r1 * rest])

        if workers == 1:
            worker()
        else:
            with single_threaded_blas():
                run_parallel([worker] * workers)
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
            cols = scratch("im2col.columns", g * c * k * nb * p, out.dtype).reshape(
                g, c, *spec.kernel_shape, nb, *spec.output_shape)
            np.copyto(cols, windows[(slice(None),) * (2 + nd) + (slice(n0, n0 + nb),)])
            # (G, O, nb*P) = (G, O, C*K) @ (G, C*K, nb*P)
            product = np.matmul(w, cols.reshape(g, c * k, nb * p))
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
