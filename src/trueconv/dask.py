"""trueconv on Dask: convolve arrays larger than memory, and batches across workers.

Two lazy entry points with the same values as the in-memory calls:

- :func:`convolve` (SciPy semantics, N-d, ``mode`` 'same'/'valid', boundary
  fill/wrap/symm): the boundary is applied by one lazy ``np.pad``-exact
  extension, then ``dask.array.map_overlap`` exchanges *exactly* the halo the
  kernel needs (asymmetric for even kernels, ``_spec.signal_pad_widths``).
- :func:`conv` (PyTorch semantics, ``(N, C, *spatial)``): chunked along the batch
  (no halo) and along spatial axes, where stride and dilation are handled by
  gathering, per output chunk, exactly the input window that chunk needs.

Plus :func:`filter_zarr`, the zarr-to-zarr filter behind ``trueconv filter``.

Why not dask's own boundary handling: ``map_overlap`` accepts asymmetric depths
only with ``boundary='none'``, and both ``overlap(boundary='reflect'|'periodic')``
and ``da.pad(mode='symmetric'|'wrap')`` go wrong once a pad is wider than the
axis (dask 2026.8: ``da.pad(x, 8, 'symmetric')`` of a 6-element axis differs from
``np.pad``). Padding here is built from ``np.pad``'s own index map, so any width
is defined exactly as NumPy and SciPy define it (EDGE_CASES #85). (Dask's
``'reflect'`` is NumPy's ``'symmetric'`` and ``'periodic'`` is ``'wrap'``; we checked,
but do not rely on it.)

One algorithm per graph: ``algorithm="auto"`` is resolved once, by the planner,
for the largest block, and every block runs it. The single exception mirrors the
in-memory ``auto``: a block containing NaN/Inf never goes through a transform
(FFT/Winograd would smear the NaN over the block), it runs the planner's exact choice.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np

from ._api import conv_with_plan, flip_spatial
from ._dtypes import as_array, cast_result, check_supported_dtype, compute_dtype, result_dtype
from ._planner import DataFacts, check_algorithm_name, choose
from ._signal import _check_fillvalue
from ._spec import (
    KINDS,
    ConvSpec,
    Kind,
    PaddingArg,
    PaddingMode,
    SizeArg,
    check_signal_shapes,
    effective_kernel_size,
    normalize_boundary,
    normalize_choice,
    normalize_conv,
    normalize_signal_mode,
    signal_pad_widths,
    valid_swap_needed,
)
from .algorithms import ALGORITHMS

__all__ = ["convolve", "conv", "filter_zarr"]

# torch padding_mode / SciPy boundary -> np.pad mode (the in-memory map is in _padding.py)
_NUMPY_PAD_MODE = {
    "zeros": "constant", "fill": "constant",
    "reflect": "reflect", "replicate": "edge", "circular": "wrap",
    "wrap": "wrap", "symm": "symmetric",
}


# --------------------------------------------------------------------------
# Lazy padding and chunk arithmetic
# --------------------------------------------------------------------------
def _as_dask(value: object, name: str, fn: str) -> da.Array:
    """Return ``value`` as a dask array of a supported dtype (an ndarray becomes one chunk)."""
    if value is None:
        raise TypeError(f"{fn}: {name} must be a dask array or an array-like of numbers, got None")
    array = value if isinstance(value, da.Array) else da.asarray(value)
    check_supported_dtype(array.dtype, name, fn)
    return array


def _pad_axis(x: da.Array, axis: int, before: int, after: int, mode: str, fill: object) -> da.Array:
    """Pad one axis lazily, exactly as ``np.pad`` would (any width, any number of folds)."""
    if before == 0 and after == 0:
        return x
    pieces = []
    if mode == "constant":
        for width in (before, after):
            shape = x.shape[:axis] + (width,) + x.shape[axis + 1:]
            chunks = x.chunks[:axis] + ((width,),) + x.chunks[axis + 1:]
            pieces.append(da.full(shape, fill, dtype=x.dtype, chunks=chunks))
    else:
        # np.pad's own answer to "which source index lands at padded position i".
        source = np.pad(np.arange(x.shape[axis]), (before, after), mode=mode)
        lead = (slice(None),) * axis
        pieces = [x[lead + (source[:before],)], x[lead + (source[before + x.shape[axis]:],)]]
    left, right = pieces
    return da.concatenate([p for p in (left, x, right) if p.shape[axis]], axis=axis)


def _pad_lazy(
    x: da.Array, pad_widths: Sequence[tuple[int, int]], mode: str, fill: object = 0
) -> da.Array:
    """Pad the trailing ``len(pad_widths)`` axes, axis by axis as ``np.pad`` does (corners included)."""
    np_mode = _NUMPY_PAD_MODE[mode]
    first = x.ndim - len(pad_widths)
    for offset, (before, after) in enumerate(pad_widths):
        x = _pad_axis(x, first + offset, before, after, np_mode, fill)
    return x


def _merge_small_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until each holds at least ``minimum`` (or the axis is one chunk)."""
    minimum = max(minimum, 1)
    merged: list[int] = []
    for size in chunks:
        if merged and merged[-1] < minimum:
            merged[-1] += size
        else:
            merged.append(size)
    if len(merged) > 1 and merged[-1] < minimum:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged) if merged else (0,)


def _pinned_algorithm(spec: ConvSpec, algorithm: str, fn: str) -> str:
    """Resolve ``algorithm`` once per graph from the spec of the largest block."""
    if algorithm != "auto":
        choose(spec, algorithm, DataFacts(), fn=fn)  # refuse now, not inside a worker
        return algorithm
    if spec.batch == 0 or spec.in_channels == 0 or spec.out_channels == 0:
        return "direct"
    # Assume finite values; blocks that are not finite fall back (see _block_algorithm).
    return choose(spec, "auto", DataFacts(finite=True, integer_fft_safe=False), fn=fn).algorithm


def _block_algorithm(algorithm: str, fallback: bool, *arrays: np.ndarray) -> str:
    """The pinned algorithm, unless an ``auto`` graph meets NaN/Inf a transform would smear."""
    if not fallback or ALGORITHMS[algorithm].exact:
        return algorithm
    if all(a.dtype.kind in "iu" or np.isfinite(a).all() for a in arrays):
        return algorithm
    return "auto"  # the planner, given the facts, picks an exact algorithm as in memory


# --------------------------------------------------------------------------
# convolve / correlate: SciPy semantics, halo exchange by map_overlap
# --------------------------------------------------------------------------
def _correlate_block(
    block: np.ndarray, kernel: np.ndarray, algorithm: str, fallback: bool, result: np.dtype
) -> np.ndarray:
    """'valid' cross-correlation of one halo-extended block with the canonical kernel."""
    name = _block_algorithm(algorithm, fallback, block, kernel)
    out, _ = conv_with_plan(block[np.newaxis, np.newaxis], kernel[np.newaxis, np.newaxis],
                            algorithm=name, fn="trueconv.dask.convolve")
    return cast_result(out[0, 0], result, "trueconv.dask.convolve")


def convolve(
    a: Any,
    kernel: np.typing.ArrayLike,
    mode: str = "same",
    boundary: str = "fill",
    fillvalue: object = 0,
    kind: Kind = "convolution",
    *,
    algorithm: str = "auto",
) -> da.Array:
    """Convolve (or correlate) an N-d dask array with a small kernel, lazily.

    Computing the result gives what the in-memory call gives on the whole array:
    :func:`trueconv.convolve` (``kind="convolution"``) or :func:`trueconv.correlate`
    (``kind="correlation"``), including SciPy's centring of 'same' for even
    kernels in every dimension and the conjugation of a complex kernel in
    correlation; with ``boundary`` 'wrap'/'symm' or a non-zero ``fillvalue`` the
    input is first extended as ``scipy.signal.convolve2d`` extends it.

    Parameters
    ----------
    a : dask.array.Array or array_like
        The signal, chunked any way along any axis (an ndarray becomes one chunk).
    kernel : array_like
        Same number of dimensions as ``a``; held in memory and sent to every task.
    mode : {"same", "valid"}
        ``same``: the shape and chunks of ``a``. ``valid``: ``a.shape - kernel.shape + 1``;
        the kernel may not be larger than ``a`` on any axis.
    boundary : {"fill", "wrap", "symm"}
        How values outside ``a`` are defined for 'same': ``fillvalue``, periodic,
        or mirrored including the edge sample (NumPy's 'symmetric'). Extensions
        wider than the axis repeat fold by fold, as ``np.pad`` does.
    fillvalue : scalar, default 0
        The outside value for ``boundary="fill"``.
    kind : {"convolution", "correlation"}
        Flip the kernel (convolution) or conjugate it (SciPy's ``correlate``).
    algorithm : {"auto", "direct", "im2col", "fft", ...}
        Resolved once for the whole graph (``auto``: the planner's choice for the
        largest block; a block holding NaN/Inf then runs an exact algorithm).

    Returns
    -------
    dask.array.Array
        Lazy, dtype ``np.result_type(a, kernel)``. For 'same' its chunks are those
        of ``a``, except that chunks smaller than the halo are merged with a
        neighbour first (and an axis shorter than the halo becomes one chunk).

    Raises
    ------
    ValueError
        For an unknown ``mode``/``boundary``/``kind``, dimensionality mismatch,
        empty inputs, or a 'valid' kernel larger than ``a``.

    See Also
    --------
    trueconv.convolve, trueconv.correlate, trueconv.convolve2d : the in-memory calls.
    conv : the deep-learning call on dask arrays.

    Notes
    -----
    Per axis with kernel length ``k``, each block receives ``(k // 2, k - 1 - k // 2)``
    neighbouring samples before and after it; nothing more is exchanged. The
    boundary extension is one lazy ``np.pad``-exact step (dask's own boundary
    modes are limited to one fold and to symmetric depths).

    Examples
    --------
    >>> import numpy as np, dask.array as da, trueconv
    >>> a = da.from_array(np.arange(10.0), chunks=4)
    >>> out = trueconv.dask.convolve(a, [1.0, 2.0, 3.0, 4.0])
    >>> out.chunks
    ((4, 4, 2),)
    >>> out.compute()
    array([ 1.,  4., 10., 20., 30., 40., 50., 60., 70., 70.])
    >>> trueconv.convolve(np.arange(10.0), [1.0, 2.0, 3.0, 4.0], "same")
    array([ 1.,  4., 10., 20., 30., 40., 50., 60., 70., 70.])
    """
    fn = "trueconv.dask.convolve"
    a = _as_dask(a, "a", fn)
    kernel = as_array(kernel, "kernel", fn)
    mode = normalize_signal_mode(mode, fn)
    if mode == "full":
        raise ValueError(f"{fn}: mode must be 'same' or 'valid' (the output is chunked like a), "
                         f"got 'full'")
    boundary = normalize_boundary(boundary, fn)
    normalize_choice(kind, KINDS, "kind", fn)
    check_algorithm_name(algorithm, fn)
    check_signal_shapes(a.shape, kernel.shape, fn)
    result = result_dtype(a.dtype, kernel.dtype)
    fill = _check_fillvalue(fillvalue, result, fn) if boundary == "fill" else 0
    if mode == "valid" and valid_swap_needed(a.shape, kernel.shape, fn) and a.shape != kernel.shape:
        raise ValueError(
            f"{fn}: for 'valid' mode the kernel must not be larger than a on any axis, got a of "
            f"shape {a.shape} and kernel of shape {kernel.shape}; compute it in memory with "
            f"trueconv.convolve/trueconv.correlate"
        )
    compute = compute_dtype(result)
    # Canonical form as in _signal: a cross-correlation with the flipped (convolution)
    # or conjugated (SciPy correlate) kernel.
    kernel = kernel.astype(compute, copy=False)
    kernel = flip_spatial(kernel, kernel.ndim) if kind == "convolution" else np.conj(kernel)
    kernel = np.ascontiguousarray(kernel)

    pads, depth, padded_chunks, out_chunks = [], {}, [], []
    for axis, (size, chunks, k) in enumerate(zip(a.shape, a.chunks, kernel.shape)):
        halo = signal_pad_widths(k, "same")  # the exact (before, after) window around a sample
        pad = signal_pad_widths(k, mode)  # (0, 0) for 'valid'
        merged = _merge_small_chunks(chunks, max(halo) + (mode == "valid"))
        pads.append(pad)
        if len(merged) == 1:  # the whole axis is one block: nothing to exchange
            depth[axis] = 0
            padded_chunks.append((size + sum(pad),))
            out_chunks.append((size + sum(pad) - k + 1,))
            continue
        # Edge blocks absorb the boundary pad, so that with boundary='none' every
        # block (edges included) is extended by the same halo and output chunk i
        # is exactly input chunk i ('same'), or trimmed by the halo at the edges ('valid').
        depth[axis] = halo
        padded_chunks.append((merged[0] + pad[0], *merged[1:-1], merged[-1] + pad[1]))
        trim = (0, 0) if mode == "same" else halo
        out_chunks.append((merged[0] - trim[0], *merged[1:-1], merged[-1] - trim[1]))

    extended = _pad_lazy(a.astype(compute), pads, boundary, fill).rechunk(tuple(padded_chunks))
    largest = tuple(max(c) + sum(d if isinstance(d, tuple) else (d, d))
                    for c, d in zip(padded_chunks, depth.values()))
    block_spec = ConvSpec(
        batch=1, in_channels=1, out_channels=1, groups=1, input_shape=largest,
        kernel_shape=kernel.shape, stride=(1,) * a.ndim, dilation=(1,) * a.ndim,
        pad_widths=((0, 0),) * a.ndim, dtype=compute.name,
    )
    pinned = _pinned_algorithm(block_spec, algorithm, fn)
    return da.map_overlap(
        _correlate_block, extended, depth=depth, boundary="none", trim=False,
        chunks=tuple(out_chunks), dtype=result, meta=np.empty((0,) * a.ndim, dtype=result),
        kernel=kernel, algorithm=pinned, fallback=algorithm == "auto", result=result,
    )


# --------------------------------------------------------------------------
# conv: deep-learning semantics, strided and dilated windows across chunk borders
# --------------------------------------------------------------------------
def _output_chunks(
    in_chunks: Sequence[int], pad_before: int, kernel: int, stride: int, dilation: int, out_size: int
) -> tuple[int, ...]:
    """Split ``out_size`` outputs so that each output chunk sits over one input chunk.

    Output ``o`` reads padded input ``[o * stride, o * stride + effective)``; it
    is assigned to the input chunk that holds its window's centre, so stride-1
    'same' output chunks equal the input chunks. Chunks shorter than the halo
    over the stride are merged, keeping the re-read halo below the chunk itself.
    """
    effective = effective_kernel_size(kernel, dilation)
    centre = (effective - 1) // 2
    bounds = [0]
    for boundary in np.cumsum(in_chunks[:-1], dtype=np.int64).tolist():
        o = -(-(boundary + pad_before - centre) // stride)
        if bounds[-1] < o < out_size:
            bounds.append(o)
    bounds.append(out_size)
    chunks = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    return _merge_small_chunks(chunks, -(-(effective - 1) // stride))


def _gather_windows(x: da.Array, axis: int, ranges: Sequence[tuple[int, int]]) -> da.Array:
    """Return ``x`` re-blocked along ``axis``: block ``i`` is ``x[ranges[i]]`` (halos duplicated)."""
    if len(ranges) == 1 and ranges[0] == (0, x.shape[axis]):
        return x.rechunk({axis: -1})
    lead = (slice(None),) * axis
    pieces = [x[lead + (slice(lo, hi),)] for lo, hi in ranges]
    return da.concatenate(pieces, axis=axis).rechunk({axis: tuple(hi - lo for lo, hi in ranges)})


def _conv_block(
    slab: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, ...],
    dilation: tuple[int, ...], groups: int, kind: str, algorithm: str, fallback: bool,
) -> np.ndarray:
    """Unpadded conv of one gathered input window; its output is exactly one output block."""
    name = _block_algorithm(algorithm, fallback, slab, weight)
    out, _ = conv_with_plan(slab, weight, bias, stride, 0, dilation, groups, kind=kind,
                            algorithm=name, fn="trueconv.dask.conv")
    return out


def conv(
    x: Any,
    weight: np.typing.ArrayLike,
    bias: np.typing.ArrayLike | None = None,
    stride: SizeArg = 1,
    padding: PaddingArg = 0,
    dilation: SizeArg = 1,
    groups: int = 1,
    *,
    padding_mode: PaddingMode = "zeros",
    kind: Kind = "correlation",
    algorithm: str = "auto",
) -> da.Array:
    """:func:`trueconv.conv` on a dask array ``(N, C, *spatial)``, lazily.

    The batch axis is split as ``x`` is chunked (no halo). Spatial axes may be
    chunked too: every output chunk receives exactly the padded input window its
    strided, dilated outputs read, so results across chunk borders are those of
    the whole array. The channel axis is gathered into one chunk (any channel
    chunking of ``x`` works). Parameters, semantics, dtypes and errors are those
    of :func:`trueconv.conv`.

    Parameters
    ----------
    x : dask.array.Array or array_like
        ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``.
    weight, bias, stride, padding, dilation, groups, padding_mode, kind
        As in :func:`trueconv.conv`; ``weight`` and ``bias`` are held in memory.
    algorithm : {"auto", "direct", "im2col", "fft", ...}
        Resolved once for the whole graph (``auto``: the planner's choice for the
        largest block; a block holding NaN/Inf then runs an exact algorithm).

    Returns
    -------
    dask.array.Array
        Lazy, shape ``(N, C_out, *out)`` as :func:`trueconv.conv`; chunked like
        ``x`` along the batch, one chunk along channels, and along each spatial
        axis one output chunk per input chunk (chunks shorter than
        ``ceil((effective_kernel - 1) / stride)`` merged).

    See Also
    --------
    trueconv.conv : the in-memory call.
    convolve : SciPy-style signal convolution of dask arrays.

    Examples
    --------
    >>> import numpy as np, dask.array as da, trueconv
    >>> x = da.from_array(np.arange(2 * 1 * 9.0).reshape(2, 1, 9), chunks=(1, 1, 4))
    >>> w = np.array([[[1.0, 0.0, -1.0]]])
    >>> y = trueconv.dask.conv(x, w, stride=2, padding=1)
    >>> y.chunks
    ((1, 1), (1,), (2, 2, 1))
    >>> y.compute()[0]
    array([[-1., -2., -2., -2.,  7.]])
    >>> trueconv.conv(np.arange(9.0).reshape(1, 1, 9), w, stride=2, padding=1)[0]
    array([[-1., -2., -2., -2.,  7.]])
    """
    fn = "trueconv.dask.conv"
    x = _as_dask(x, "input", fn)
    weight = as_array(weight, "weight", fn)
    bias = None if bias is None else as_array(bias, "bias", fn)
    check_algorithm_name(algorithm, fn)
    result = result_dtype(x.dtype, weight.dtype)
    if bias is not None and not np.can_cast(bias.dtype, result, "same_kind"):
        raise TypeError(f"{fn}: bias of dtype {bias.dtype} cannot be added to a {result} result")
    spec, mode_pads, batched = normalize_conv(
        x.shape, weight.shape, None if bias is None else bias.shape,
        stride, padding, dilation, groups, padding_mode, kind, fn, compute_dtype(result),
    )
    # All padding, zero or not, is applied lazily up front; blocks then run unpadded.
    pads = mode_pads if padding_mode != "zeros" else spec.pad_widths
    x = x if batched else x[np.newaxis]
    x = x.rechunk({1: -1})  # every output channel needs its whole group of input channels

    out_chunks, ranges = [], []
    for axis in range(spec.spatial_ndim):
        chunks = x.chunks[2 + axis]
        k, s, d = spec.kernel_shape[axis], spec.stride[axis], spec.dilation[axis]
        effective = effective_kernel_size(k, d)
        sizes = _output_chunks(chunks, pads[axis][0], k, s, d, spec.output_shape[axis])
        starts = np.cumsum((0, *sizes[:-1]), dtype=np.int64).tolist()
        out_chunks.append(sizes)
        # output chunk [o0, o0 + n) reads padded input [o0 * s, (o0 + n - 1) * s + effective)
        ranges.append([(o0 * s, (o0 + n - 1) * s + effective) for o0, n in zip(starts, sizes)])

    windows = _pad_lazy(x, pads, padding_mode)
    for axis, axis_ranges in enumerate(ranges):
        windows = _gather_windows(windows, 2 + axis, axis_ranges)

    block_spec = replace(
        spec, batch=max(x.chunks[0]) if x.shape[0] else 0,
        input_shape=tuple(max(hi - lo for lo, hi in r) for r in ranges),
        pad_widths=((0, 0),) * spec.spatial_ndim,
    )
    pinned = _pinned_algorithm(block_spec, algorithm, fn)
    out = da.map_blocks(
        _conv_block, windows,
        chunks=(x.chunks[0], (spec.out_channels,), *out_chunks),
        dtype=result, meta=np.empty((0,) * x.ndim, dtype=result),
        weight=weight, bias=bias, stride=spec.stride, dilation=spec.dilation,
        groups=spec.groups, kind=kind, algorithm=pinned, fallback=algorithm == "auto",
    )
    return out if batched else out[0]


# --------------------------------------------------------------------------
# zarr in, zarr out (the engine of `trueconv filter a.zarr b.zarr`)
# --------------------------------------------------------------------------
def filter_zarr(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    kernel: np.typing.ArrayLike,
    *,
    chunks: int | Sequence[int] | None = None,
    mode: str = "same",
    boundary: str = "symm",
    kind: Kind = "convolution",
    overwrite: bool = False,
    progress: bool = True,
) -> Any:
    """Filter a zarr array into a new zarr array with :func:`convolve`, chunk by chunk.

    Memory stays bounded by a few chunks per worker whatever the array's size.
    The result is written to a temporary store beside ``target`` and renamed
    into place only when complete, so a failure leaves no partial output.

    Parameters
    ----------
    source, target : str or os.PathLike
        Paths of zarr arrays (directory stores). ``target`` must differ from ``source``.
    kernel : array_like
        At most ``source.ndim`` dimensions; a kernel with fewer is applied to the
        trailing axes (each leading axis is filtered independently, e.g. a stack
        of 2-D images with a 2-D kernel).
    chunks : int, tuple of int or None
        Processing and output chunks (an int applies to every axis); default:
        the source's chunks.
    mode, boundary, kind
        As in :func:`convolve` (default: a 'same' convolution, mirrored edges).
    overwrite : bool, default False
        Replace an existing ``target``; otherwise ``FileExistsError``.
    progress : bool, default True
        Show a progress bar on stderr (dask's local schedulers) or
        ``distributed.progress`` when a distributed client is active.

    Returns
    -------
    zarr.Array
        The written array, opened read-only. Its dtype is
        ``np.result_type(source, kernel)``: pass a float32 kernel to keep float32 data.

    Raises
    ------
    FileExistsError
        ``target`` exists and ``overwrite`` is False.
    ValueError
        ``source`` and ``target`` are the same path, ``source`` is not a zarr
        array, or the kernel does not fit (see :func:`convolve`).

    Examples
    --------
    >>> import numpy as np, zarr, trueconv, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> src = zarr.create_array(os.path.join(d, "in.zarr"), shape=(6, 6), chunks=(4, 4), dtype="f8")
    >>> src[:] = np.arange(36.0).reshape(6, 6)
    >>> out = trueconv.dask.filter_zarr(os.path.join(d, "in.zarr"), os.path.join(d, "out.zarr"),
    ...                                 np.ones((3, 3)) / 9, progress=False)
    >>> out.shape, out.chunks
    ((6, 6), (4, 4))
    >>> bool(np.allclose(out[:], trueconv.convolve2d(src[:], np.ones((3, 3)) / 9, "same", "symm")))
    True
    """
    import zarr

    fn = "trueconv.dask.filter_zarr"
    source_path, target_path = os.fspath(source), os.fspath(target)
    if os.path.realpath(source_path) == os.path.realpath(target_path):
        raise ValueError(f"{fn}: target must differ from source, got {source_path!r} for both")
    if os.path.exists(target_path) and not overwrite:
        raise FileExistsError(f"{fn}: target {target_path!r} exists; pass overwrite=True to replace it")
    try:
        stored = zarr.open(source_path, mode="r")
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise ValueError(f"{fn}: cannot open source {source_path!r} as a zarr array ({exc})") from None
    if not isinstance(stored, zarr.Array):
        raise ValueError(f"{fn}: source {source_path!r} is a zarr group, not an array; give the "
                         f"path of one of its arrays")
    kernel = as_array(kernel, "kernel", fn)
    if kernel.ndim > stored.ndim:
        raise ValueError(f"{fn}: kernel of shape {kernel.shape} has more dimensions than source "
                         f"of shape {stored.shape}")
    kernel = kernel.reshape((1,) * (stored.ndim - kernel.ndim) + kernel.shape)
    if chunks is None:
        block = tuple(stored.chunks)
    elif isinstance(chunks, (int, np.integer)):
        block = (int(chunks),) * stored.ndim
    else:
        block = tuple(int(c) for c in chunks)
    if len(block) != stored.ndim or any(c <= 0 for c in block):
        raise ValueError(f"{fn}: chunks must be a positive int or {stored.ndim} positive ints, "
                         f"got {chunks!r}")

    filtered = convolve(da.from_zarr(stored, chunks=block), kernel, mode, boundary, kind=kind)
    # zarr needs regular chunks; 'valid' (and merged small chunks) are not.
    filtered = filtered.rechunk(tuple(min(c, max(n, 1)) for c, n in zip(block, filtered.shape)))
    parent = os.path.dirname(os.path.abspath(target_path))
    temporary = os.path.join(parent, f".{os.path.basename(target_path)}.tmp-{uuid.uuid4().hex}")
    try:
        _store(filtered.to_zarr(temporary, compute=False), progress)
        _move_into_place(temporary, target_path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return zarr.open_array(target_path, mode="r")


def _store(task: Any, progress: bool) -> None:
    """Run a dask write on the active distributed client if there is one, else locally."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        future = client.compute(task)
        if progress:
            from distributed import progress as show_progress

            show_progress(future)
        future.result()
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr) if progress else nullcontext():
        dask.compute(task)


def _move_into_place(temporary: str, target: str) -> None:
    """Rename the finished store to ``target``; an old ``target`` is removed only after."""
    if not os.path.exists(target):
        os.replace(temporary, target)
        return
    backup = f"{temporary}.old"
    os.replace(target, backup)
    try:
        os.replace(temporary, target)
    except OSError:
        os.replace(backup, target)
        raise
    if os.path.isdir(backup):
        shutil.rmtree(backup)
    else:
        os.remove(backup)

