"""Deep-learning style convolution: ``conv`` and its rank-checked 1d/2d/3d forms.

Each function is thin: validate and normalize once (``_spec``), canonicalize
(padding_mode pre-pass, kernel flip for ``kind="convolution"``, dtype
policy), then run through the planner (``_engine``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._dtypes import add_bias, as_array, cast_result, check_bias_dtype, compute_dtype, result_dtype
from ._engine import check_output_fits, execute
from ._memory import format_bytes, get_memory_limit
from ._padding import pad_spatial
from ._planner import DataFacts, Plan, check_algorithm_name, choose
from ._spec import ConvSpec, Kind, PaddingArg, PaddingMode, SizeArg, check_spatial_ndim, normalize_conv

__all__ = ["conv", "conv1d", "conv2d", "conv3d", "plan"]


def flip_spatial(weight: np.ndarray, spatial_ndim: int) -> np.ndarray:
    """Reverse every spatial axis of the kernel (a view): convolution = correlation with it."""
    return weight[(Ellipsis, *([slice(None, None, -1)] * spatial_ndim))]


def check_copy_fits(shape: tuple[int, ...], dtype: np.dtype, fn: str) -> None:
    """The padding_mode pre-pass and a dtype cast copy the input: refuse if that copy cannot fit."""
    need = math.prod(shape) * dtype.itemsize
    limit = get_memory_limit()
    if need > limit:
        raise MemoryError(
            f"{fn}: the padded/converted copy of the input, shape {shape} of {dtype}, needs "
            f"{format_bytes(need)}, over the memory limit of {format_bytes(limit)} "
            f"(trueconv.set_memory_limit or TRUECONV_MEMORY_LIMIT)"
        )


# A training loop repeats the same call; validating it costs ~19 us, a cache hit ~1 us. The key
# pairs each argument (and each tuple item) with its type, so stride=True never hits the entry
# of stride=1 (nor 1.0, nor a NumPy integer), and only plain values are cached: anything else,
# and every call that raises, is validated afresh. (A key of reprs cost 12 us per call.)
_PLAIN_TYPES = (int, float, bool, str, type(None))


class _NotPlain(Exception):
    pass


def _typed_key(value: object) -> tuple:
    kind = type(value)
    if kind is tuple:
        return (kind, *map(_typed_key, value))  # type: ignore[arg-type]
    if kind in _PLAIN_TYPES or isinstance(value, np.dtype):
        return (kind, value)
    raise _NotPlain


@functools.lru_cache(maxsize=256)
def _normalize_conv_cached(key: tuple, args: tuple) -> tuple:
    return normalize_conv(*args)


def normalize_conv_memoized(*args: object) -> tuple:
    """:func:`normalize_conv`, memoized for calls made of plain values (ints, tuples, strings)."""
    try:
        key = tuple(map(_typed_key, args))
    except _NotPlain:
        return normalize_conv(*args)
    return _normalize_conv_cached(key, args)


def prepare_conv(
    x: object,
    weight: object,
    bias: object,
    stride: SizeArg,
    padding: PaddingArg,
    dilation: SizeArg,
    groups: int,
    padding_mode: str,
    kind: str,
    algorithm: str,
    fn: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ConvSpec, bool, np.dtype,
           tuple[tuple[int, int], ...]]:
    """Validate a call and return its canonical operands.

    Returns ``(x, weight, bias, spec, batched, result_dtype, mode_pad_widths)``
    where ``x`` is batched, padding-mode padded and in the compute dtype,
    ``weight`` is in the compute dtype and flipped for ``kind="convolution"``,
    and ``mode_pad_widths`` are the pads the ``padding_mode`` pre-pass applied
    (the gradient scatters them back). Shared by the forward pass and the
    gradients.
    """
    x = as_array(x, "input", fn)
    weight = as_array(weight, "weight", fn)
    bias_array = None if bias is None else as_array(bias, "bias", fn)
    check_algorithm_name(algorithm, fn)
    result = result_dtype(x.dtype, weight.dtype)
    if bias_array is not None:
        check_bias_dtype(bias_array.dtype, result, fn)
    compute = compute_dtype(result)
    spec, mode_pads, batched = normalize_conv_memoized(
        x.shape, weight.shape, None if bias_array is None else bias_array.shape,
        stride, padding, dilation, groups, padding_mode, kind, fn, compute,
    )
    # Refuse before the padding pre-pass or a dtype cast allocates anything (EDGE_CASES #64).
    check_output_fits(spec, compute.itemsize, fn)
    if padding_mode != "zeros" or x.dtype != compute:
        check_copy_fits((spec.batch, spec.in_channels, *spec.input_shape), compute, fn)
    x = x if batched else x[np.newaxis]
    x = pad_spatial(x.astype(compute, copy=False), mode_pads, padding_mode)
    weight = weight.astype(compute, copy=False)
    if kind == "convolution":
        weight = flip_spatial(weight, spec.spatial_ndim)
    return x, weight, bias_array, spec, batched, result, mode_pads


def finish(out: np.ndarray, bias: np.ndarray | None, batched: bool, result: np.dtype, fn: str) -> np.ndarray:
    """Add the bias, cast to the result dtype (never wrapping), drop the batch axis if added."""
    if bias is not None:
        out = add_bias(out, bias, fn)
    out = cast_result(out, result, fn)
    return out if batched else out[0]


def conv_with_plan(
    x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: ANN001
    padding_mode="zeros", kind="correlation", algorithm="auto", fn="conv",
) -> tuple[np.ndarray, Plan]:
    """:func:`conv` that also returns the :class:`~trueconv._planner.Plan` that ran."""
    xc, wc, b, spec, batched, result, _ = prepare_conv(
        x, weight, bias, stride, padding, dilation, groups, padding_mode, kind, algorithm, fn
    )
    out, plan_used = execute(xc, wc, spec, algorithm, fn)
    return finish(out, b, batched, result, fn), plan_used


def conv(
    x: np.typing.ArrayLike,
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
) -> np.ndarray:
    r"""N-d batched, channels-first convolution or cross-correlation.

    With the defaults this equals ``torch.nn.functional.conv{1,2,3}d`` (which
    computes a cross-correlation); ``kind="convolution"`` flips the kernel on
    every spatial axis, the signal-processing definition.

    Parameters
    ----------
    x : array_like
        Input of shape ``(N, C_in, *spatial)``, or ``(C_in, *spatial)`` for an
        unbatched input (the result is then unbatched too).
    weight : array_like
        Kernel of shape ``(C_out, C_in / groups, *kernel)``. The number of
        spatial dims is ``weight.ndim - 2``.
    bias : array_like, optional
        Shape ``(C_out,)``, added to every output position.
    stride, dilation : int or tuple of int, default 1
        Per spatial axis; an int applies to all.
    padding : int, tuple, "valid" or "same", default 0
        An int or a tuple of ints pads both sides; a tuple of ``(before,
        after)`` pairs pads asymmetrically. ``"same"`` gives ``ceil(in /
        stride)`` outputs with the extra pad, if odd, after (PyTorch's rule for
        stride 1, TensorFlow's SAME for larger strides).
    groups : int, default 1
        Input and output channels are split into ``groups`` independent
        convolutions (``groups == C_in`` is a depthwise convolution).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        How padded values are made, as in ``torch.nn.Conv2d``.
    kind : {"correlation", "convolution"}
        ``"correlation"``: ``y[o] = sum x[o*s + k*d] w[k]`` (deep-learning
        "convolution"); ``"convolution"``: the same with ``w`` flipped.
    algorithm : {"auto", "direct", "im2col", "fft", ...}
        ``"auto"`` lets the planner choose (see :func:`trueconv.plan`). An
        algorithm that cannot serve the call raises ``ValueError`` with the reason.

    Returns
    -------
    ndarray
        Shape ``(N, C_out, *out)`` with ``out = (in + before + after -
        (dilation * (k - 1) + 1)) // stride + 1``. dtype ``np.result_type(x,
        weight)``; integer results are exact (int64 accumulation) and raise
        ``OverflowError`` rather than wrap.

    Raises
    ------
    ValueError
        For inconsistent shapes or parameter values; the message names them.
    TypeError
        For unsupported dtypes (bool, object) or non-integer parameters.
    MemoryError
        When the output alone exceeds the memory limit.

    See Also
    --------
    conv2d : the same with torch's positional order and a rank check.
    convolve, correlate : SciPy-style N-d signal functions.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> image = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> kernel = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    >>> trueconv.conv(image, kernel)
    array([[[[-4., -4.],
             [-4., -4.]]]])
    >>> trueconv.conv(image, kernel, kind="convolution")
    array([[[[4., 4.],
             [4., 4.]]]])
    """
    return conv_with_plan(
        x, weight, bias, stride, padding, dilation, groups,
        padding_mode=padding_mode, kind=kind, algorithm=algorithm, fn="conv",
    )[0]


def _conv_nd(nd: int, fn: str, x, weight, bias, stride, padding, dilation, groups,  # noqa: ANN001
             padding_mode, kind, algorithm) -> np.ndarray:
    check_spatial_ndim(np.shape(weight), nd, fn)
    return conv_with_plan(
        x, weight, bias, stride, padding, dilation, groups,
        padding_mode=padding_mode, kind=kind, algorithm=algorithm, fn=fn,
    )[0]


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode: PaddingMode = "zeros", kind: Kind = "correlation",
           algorithm: str = "auto") -> np.ndarray:
    """1-D :func:`conv` with ``torch.nn.functional.conv1d``'s positional order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv1d(np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, 0.0]]]))
    array([[[1., 2.]]])
    """
    return _conv_nd(1, "conv1d", input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode: PaddingMode = "zeros", kind: Kind = "correlation",
           algorithm: str = "auto") -> np.ndarray:
    """2-D :func:`conv` with ``torch.nn.functional.conv2d``'s positional order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))).shape
    (1, 1, 2, 2)
    """
    return _conv_nd(2, "conv2d", input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode: PaddingMode = "zeros", kind: Kind = "correlation",
           algorithm: str = "auto") -> np.ndarray:
    """3-D :func:`conv` with ``torch.nn.functional.conv3d``'s positional order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv3d(np.ones((1, 2, 3, 3, 3)), np.ones((4, 2, 1, 1, 1))).shape
    (1, 4, 3, 3, 3)
    """
    return _conv_nd(3, "conv3d", input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


def plan(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    dtype: np.typing.DTypeLike = np.float32,
    *,
    stride: SizeArg = 1,
    padding: PaddingArg = 0,
    dilation: SizeArg = 1,
    groups: int = 1,
    padding_mode: PaddingMode = "zeros",
    kind: Kind = "correlation",
    algorithm: str = "auto",
) -> Plan:
    """Return the :class:`Plan` ``conv`` would follow for these shapes, without data.

    The plan assumes finite values; at run time an input with NaN/Inf steers
    ``auto`` away from transform algorithms.

    Examples
    --------
    >>> import trueconv
    >>> p = trueconv.plan((8, 64, 56, 56), (64, 64, 3, 3), "float32", padding=1)
    >>> p.algorithm in trueconv.ALGORITHMS
    True
    >>> isinstance(p.reason, str) and p.batch_chunk >= 1
    True
    """
    fn = "plan"
    check_algorithm_name(algorithm, fn)
    compute = compute_dtype(np.dtype(dtype))
    spec, _, _ = normalize_conv(tuple(x_shape), tuple(weight_shape), None, stride, padding,
                                dilation, groups, padding_mode, kind, fn, compute)
    check_output_fits(spec, compute.itemsize, fn)
    facts = DataFacts(finite=True, integer_fft_safe=False)
    return choose(spec, algorithm, facts, fn=fn)
