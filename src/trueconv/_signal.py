"""SciPy-style signal functions on the same engine as :func:`trueconv.conv`.

Each call becomes a single-channel, single-batch canonical problem: the
``mode`` picks the zero pads (``_spec.signal_pad_widths``), ``boundary``
becomes a pre-pass (``_padding``), and convolution flips ``in2``. Output shapes,
the centring of ``'same'`` for even kernels, the ``'valid'`` swap rule and the
conjugation in ``correlate`` follow SciPy exactly.
"""

from __future__ import annotations

import numpy as np

from ._api import check_copy_fits, flip_spatial
from ._dtypes import as_array, cast_result, compute_dtype, result_dtype
from ._engine import execute
from ._padding import pad_spatial
from ._threads import get_num_threads
from ._spec import (
    ConvSpec,
    check_signal_shapes,
    normalize_axes,
    normalize_boundary,
    normalize_signal_method,
    normalize_signal_mode,
    signal_pad_widths,
    valid_swap_needed,
)
from .algorithms.fft import fft_shape  # noqa: F401  (re-exported for fftconvolve users)

__all__ = ["convolve", "correlate", "convolve2d", "correlate2d", "fftconvolve"]

_METHOD_TO_ALGORITHM = {"auto": "auto", "direct": "direct", "fft": "fft"}


def _signal(
    in1: object,
    in2: object,
    mode: str,
    method: str,
    kind: str,
    fn: str,
    boundary: str = "fill",
    fillvalue: object = 0,
    correlate2d_rules: bool = False,
) -> np.ndarray:
    """The engine behind convolve/correlate/convolve2d/correlate2d.

    ``correlate2d_rules`` reproduces two quirks of ``scipy.signal.correlate2d``
    (it is ``convolve2d`` of the flipped kernel): its even-kernel 'same' window
    is mirrored, and a swapped 'valid' result is reversed but not conjugated.
    """
    a = as_array(in1, "in1", fn)
    b = as_array(in2, "in2", fn)
    mode = normalize_signal_mode(mode, fn)
    algorithm = _METHOD_TO_ALGORITHM[normalize_signal_method(method, fn)]
    if a.ndim == b.ndim == 0:
        return _product_0d(a, b if kind == "convolution" else np.conj(b), fn)
    check_signal_shapes(a.shape, b.shape, fn)
    result = result_dtype(a.dtype, b.dtype)
    fill = _check_fillvalue(fillvalue, result, fn) if boundary == "fill" else 0

    swapped = mode == "valid" and valid_swap_needed(a.shape, b.shape, fn)
    if swapped:
        a, b = b, a
    compute = compute_dtype(result)
    # convolution = correlation with the kernel flipped; SciPy's correlate conjugates in2
    kernel = b.astype(compute, copy=False)
    kernel = flip_spatial(kernel, kernel.ndim) if kind == "convolution" else np.conj(kernel)
    pads = tuple(signal_pad_widths(k, mode, correlate2d_rules) for k in kernel.shape)
    x = a.astype(compute, copy=False)
    if boundary != "fill" or fill != 0:
        # the boundary pre-pass copies the input: refuse before allocating if it cannot fit
        check_copy_fits((1, 1, *(n + lo + hi for n, (lo, hi) in zip(x.shape, pads))), compute, fn)
        x, pads = pad_spatial(x, pads, boundary, fill), ((0, 0),) * x.ndim
    spec = ConvSpec(
        batch=1, in_channels=1, out_channels=1, groups=1,
        input_shape=x.shape, kernel_shape=kernel.shape,
        stride=(1,) * x.ndim, dilation=(1,) * x.ndim, pad_widths=pads, dtype=compute.name,
    )
    try:
        out, _ = execute(x[np.newaxis, np.newaxis], kernel[np.newaxis, np.newaxis], spec, algorithm, fn)
    except ValueError as exc:
        # The engine speaks of algorithm=...; this caller chose it as SciPy's method=...
        if algorithm != "auto" and f"algorithm={algorithm!r}" in str(exc):
            raise ValueError(str(exc).replace(f"algorithm={algorithm!r}", f"method={method!r}")) from None
        raise
    out = out[0, 0]
    if swapped and kind == "correlation":
        # correlate(b, a) is correlate(a, b) reversed and conjugated (SciPy gh-5897)
        out = flip_spatial(out, out.ndim)
        out = out if correlate2d_rules else np.conj(out)
    return cast_result(np.ascontiguousarray(out), result, fn)


def _product_0d(a: np.ndarray, b: np.ndarray, fn: str) -> np.ndarray:
    """Two 0-d inputs: their product (SciPy), exact for integers and never wrapping."""
    result = result_dtype(a.dtype, b.dtype)
    if result.kind in "iu":
        return cast_result(np.array(int(a) * int(b), dtype=object), result, fn)
    compute = compute_dtype(result)
    return np.asarray(a.astype(compute) * b.astype(compute)).astype(result)


def _check_fillvalue(fillvalue: object, result: np.dtype, fn: str) -> object:
    value = np.asarray(fillvalue)
    if value.dtype.kind not in "biufc":
        raise TypeError(f"{fn}: fillvalue must be a number, got {type(fillvalue).__name__} {fillvalue!r}")
    if value.size == 0:
        raise ValueError(f"{fn}: fillvalue cannot be an empty array")
    if value.size != 1:
        raise ValueError(f"{fn}: fillvalue must be scalar or an array with one element, got shape {value.shape}")
    if not np.can_cast(value.dtype, result, "same_kind") and value.dtype.kind == "c":
        raise ValueError(f"{fn}: could not cast fillvalue of dtype {value.dtype} to the output type {result}")
    fill = value.reshape(()).item()
    if result.kind in "iu" and value.dtype.kind in "iuf":
        # SciPy casts the fillvalue to the output type first (truncating 1.5 to 1, as we do),
        # but it also wraps -1 to 255 for uint8; an exact library refuses instead.
        info = np.iinfo(result)
        if not np.isfinite(fill) or not info.min <= int(fill) <= info.max:
            raise ValueError(
                f"{fn}: fillvalue {fill!r} does not fit the output type {result} "
                f"[{info.min}, {info.max}]; cast the inputs to a wider type"
            )
    return fill


def convolve(in1: np.typing.ArrayLike, in2: np.typing.ArrayLike, mode: str = "full",
             method: str = "auto") -> np.ndarray:
    """Convolve two N-d arrays, like ``scipy.signal.convolve``.

    Parameters
    ----------
    in1, in2 : array_like
        Same number of dimensions. ``in2`` is the kernel (flipped).
    mode : {"full", "valid", "same"}
        ``full``: shape ``in1 + in2 - 1`` per axis; ``valid``: ``|in1 - in2| + 1``,
        one input must dominate the other on every axis (they are swapped if
        ``in2`` is the larger); ``same``: ``in1``'s shape, centred on ``full``
        (for an even kernel the output starts at ``full[k // 2]``... SciPy's rule).
    method : {"auto", "direct", "fft"}
        ``direct`` sums exactly; ``fft`` uses the FFT; ``auto`` lets the planner
        choose, never FFT for NaN/Inf inputs or integers that FFT cannot keep exact.

    Returns
    -------
    ndarray
        dtype ``np.result_type(in1, in2)``; integer results are exact.

    See Also
    --------
    correlate, fftconvolve, conv

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.convolve([1, 2, 3], [0, 1, 0.5])
    array([0. , 1. , 2.5, 4. , 1.5])
    >>> trueconv.convolve(np.arange(5), [1, 2, 3, 4], "same")
    array([ 1,  4, 10, 20, 25])
    """
    return _signal(in1, in2, mode, method, "convolution", "convolve")


def correlate(in1: np.typing.ArrayLike, in2: np.typing.ArrayLike, mode: str = "full",
              method: str = "auto") -> np.ndarray:
    """Cross-correlate two N-d arrays, like ``scipy.signal.correlate``.

    ``z[k] = sum_n in1[n + k] * conj(in2[n])`` with SciPy's output shapes and
    centring (see :func:`convolve`).

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.correlate([1, 2, 3], [0, 1, 0.5])
    array([0.5, 2. , 3.5, 3. , 0. ])
    """
    return _signal(in1, in2, mode, method, "correlation", "correlate")


def _check_2d(in1: object, in2: object, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as arrays (type errors first), refusing anything but 2-D."""
    a, b = as_array(in1, "in1", fn), as_array(in2, "in2", fn)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"{fn} inputs must both be 2-D arrays, got in1 of shape {a.shape} and in2 of "
            f"shape {b.shape}"
        )
    return a, b


def convolve2d(in1: np.typing.ArrayLike, in2: np.typing.ArrayLike, mode: str = "full",
               boundary: str = "fill", fillvalue: object = 0) -> np.ndarray:
    """Convolve two 2-D arrays with a boundary rule, like ``scipy.signal.convolve2d``.

    Parameters
    ----------
    boundary : {"fill", "wrap", "symm"}
        ``fill`` pads with ``fillvalue``; ``wrap`` is circular; ``symm``
        reflects including the edge sample. Pads wider than the image repeat.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.convolve2d(np.eye(2), [[1, 2], [3, 4]])
    array([[1., 2., 0.],
           [3., 5., 2.],
           [0., 3., 4.]])
    """
    fn = "convolve2d"
    in1, in2 = _check_2d(in1, in2, fn)
    return _signal(in1, in2, mode, "direct", "convolution", fn, normalize_boundary(boundary, fn), fillvalue)


def correlate2d(in1: np.typing.ArrayLike, in2: np.typing.ArrayLike, mode: str = "full",
                boundary: str = "fill", fillvalue: object = 0) -> np.ndarray:
    """Cross-correlate two 2-D arrays, like ``scipy.signal.correlate2d``.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.correlate2d(np.eye(2), [[1, 2], [3, 4]], mode="valid")
    array([[5.]])
    """
    fn = "correlate2d"
    in1, in2 = _check_2d(in1, in2, fn)
    return _signal(in1, in2, mode, "direct", "correlation", fn, normalize_boundary(boundary, fn), fillvalue,
                   correlate2d_rules=True)


def fftconvolve(in1: np.typing.ArrayLike, in2: np.typing.ArrayLike, mode: str = "full",
                axes: object = None) -> np.ndarray:
    """Convolve two N-d arrays by FFT, like ``scipy.signal.fftconvolve``.

    Axes not in ``axes`` are broadcast (sizes equal, or 1 in one input). The
    result is floating point (integer inputs are converted, as SciPy does).

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> np.round(trueconv.fftconvolve([1.0, 2.0, 3.0], [0.0, 1.0, 0.5]), 12)
    array([0. , 1. , 2.5, 4. , 1.5])
    """
    import scipy.fft as sp_fft

    fn = "fftconvolve"
    a = as_array(in1, "in1", fn)
    b = as_array(in2, "in2", fn)
    mode = normalize_signal_mode(mode, fn)
    if a.ndim == b.ndim == 0:
        return _product_0d(a, b, fn)
    check_signal_shapes(a.shape, b.shape, fn)
    # SciPy (_init_freq_conv_axes) transforms only the axes where both inputs are longer
    # than 1; every other axis is a broadcast product, so it must have equal sizes or a 1.
    fft_axes = tuple(
        axis for axis in normalize_axes(axes, a.ndim, fn) if a.shape[axis] != 1 and b.shape[axis] != 1
    )
    for axis in range(a.ndim):
        if axis not in fft_axes and a.shape[axis] != b.shape[axis] and 1 not in (a.shape[axis], b.shape[axis]):
            raise ValueError(
                f"{fn}: incompatible shapes for in1 and in2: {a.shape} and {b.shape} "
                f"(axis {axis} is not convolved, so sizes must match or be 1)"
            )
    if mode == "valid" and fft_axes:
        sub = tuple(a.shape[i] for i in fft_axes), tuple(b.shape[i] for i in fft_axes)
        if valid_swap_needed(*sub, fn):
            a, b = b, a
    if not fft_axes:
        out = a * b  # no transform at all: SciPy keeps the inputs' dtype, even integers
    else:
        if a.dtype.kind in "iu" or b.dtype.kind in "iu":
            wide = np.result_type(a.dtype, b.dtype, np.float64)
            a, b = a.astype(wide), b.astype(wide)
        fshape = [sp_fft.next_fast_len(a.shape[axis] + b.shape[axis] - 1, True) for axis in fft_axes]
        complex_result = a.dtype.kind == "c" or b.dtype.kind == "c"
        fwd, inv = (sp_fft.fftn, sp_fft.ifftn) if complex_result else (sp_fft.rfftn, sp_fft.irfftn)
        workers = get_num_threads()
        product = fwd(a, fshape, axes=fft_axes, workers=workers) * \
            fwd(b, fshape, axes=fft_axes, workers=workers)
        # No cast afterwards: the dtype is scipy.fft's (float16 in, float32 out), as SciPy's.
        out = inv(product, fshape, axes=fft_axes, workers=workers)
    # Crop like SciPy's _apply_conv_mode/_centered: 'full' along the transformed axes and
    # the broadcast size elsewhere; 'same' centres on in1's shape on EVERY axis; 'valid'
    # keeps in1 - in2 + 1 on the transformed axes.
    index = []
    for axis in range(a.ndim):
        full = a.shape[axis] + b.shape[axis] - 1 if axis in fft_axes else max(a.shape[axis], b.shape[axis])
        if mode == "same":
            length = a.shape[axis]
        elif mode == "valid" and axis in fft_axes:
            length = a.shape[axis] - b.shape[axis] + 1
        else:
            length = full
        start = (full - length) // 2
        index.append(slice(start, start + length))
    return np.ascontiguousarray(out[tuple(index)])
