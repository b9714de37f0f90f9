"""Gradients of :func:`trueconv.conv`, and transposed convolution: both are convolutions too.

Understanding the convolution transpose rules (after JAX's
``jax/_src/lax/convolution.py``). Ignore the spatial axes and let ``m`` be the
batch, ``j`` the input channels and ``k`` the output channels. The forward
convolution is then a matrix product, and its gradients are the two
transposed products, exactly as for ``Y = X @ W``::

    forward:            [m, j] [j, k] -> [m, k]      y  = conv(x, w)
    input gradient:     [m, k] [k, j] -> [m, j]      gx = conv(g, w^T)
    weight gradient:    [j, m] [m, k] -> [j, k]      gw = conv(x^T, g)

With ``G`` channel groups the forward is ``[m, G j] [j, G k] -> [m, G k]``:

- the input gradient keeps the feature grouping after the group axis of the
  kernel moves from its input to its output channels, ``[m, G k] [k, G j] ->
  [m, G j]``;
- the weight gradient becomes ``[G j, m] [m, G k] -> [j, G k]``, which JAX
  calls *batch grouping*. trueconv's algorithms only know feature grouping,
  so the group axis is moved from the batch into the channels: ``x`` is laid
  out ``(j, G * m)`` and ``g`` ``(G * k, m)``, a plain grouped correlation.

Along the spatial axes the transposes are convolutions too:

- input gradient: ``g`` stride-dilated (``stride - 1`` zeros between samples,
  JAX's ``lhs_dilation``) and placed into a frame of ``in + dk - 1`` samples
  at offset ``dk - 1 - pad_before`` (``dk = dilation * (k - 1) + 1``),
  correlated with the spatially flipped kernel at the forward dilation,
  stride 1. Samples outside the frame only ever met zero padding; the frame
  handles every padding and uncovered-tail case without negative pads.
- weight gradient: ``x`` (zero padded as in the forward) correlated with
  ``g`` as the kernel, with stride and dilation exchanged; the result is
  cropped to the kernel shape (striding may leave trailing input rows that no
  output saw, which would add extra taps). This problem is shaped unlike a
  forward layer: a handful of output positions (the forward kernel's taps)
  and a kernel as large as the image. im2col serves it without any gather
  (its *flat-shift* path: one BLAS product per tap on a shifted view of the
  padded planes, a polyphase split for forward strides > 1), and the planner
  picks im2col for it like for any other problem; an explicit ``algorithm=``
  is honoured as for the forward call.

Transposed convolution *is* the input gradient, with ``output_padding``
extra rows on the high side (PyTorch ``conv_input_size``), so
:func:`conv_transpose` and :func:`conv_grad` share :func:`input_gradient`.
Every one of these runs through ``_engine.execute``: the planner and every
algorithm serve gradients exactly as they serve the forward call, and an
algorithm that cannot serve a gradient's problem says so.

Legend: N batch, G groups, C input channels per group, O output channels
per group, S input spatial shape, M output spatial shape, K kernel shape.
"""

from __future__ import annotations

import numpy as np

from ._api import finish, flip_spatial, prepare_conv
from ._dtypes import as_array, cast_result, check_bias_dtype, compute_dtype, result_dtype
from ._engine import execute
from ._planner import check_algorithm_name
from ._spec import (
    KINDS,
    ConvSpec,
    Kind,
    PaddingArg,
    PaddingMode,
    SizeArg,
    check_grad_output,
    check_spatial_ndim,
    normalize_choice,
    normalize_conv_transpose,
    normalize_needs,
)

__all__ = [
    "conv_grad", "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
]

# torch nn.ConvNd padding_mode -> how np.pad extends each axis (see _padding.py)
_SOURCE_INDEX_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# --------------------------------------------------------------------------
# The two transposed problems, as canonical ConvSpecs
# --------------------------------------------------------------------------
def input_gradient_spec(forward: ConvSpec) -> tuple[ConvSpec, tuple[int, ...]]:
    """Return the correlation that computes the input gradient, and its frame offsets.

    ``forward`` is the canonical forward problem. The gradient may have any
    spatial shape (the forward's output shape, or for a transposed
    convolution the shape of its input). The returned spec correlates the
    framed, stride-dilated gradient (``(N, G*O, *frame)``) with the flipped,
    channel-swapped kernel; ``offsets`` are where sample 0 of the gradient lands
    in the frame (possibly negative: it was cropped away).
    """
    effective = forward.effective_kernel_shape
    frame = tuple(n + e - 1 for n, e in zip(forward.input_shape, effective))
    offsets = tuple(e - 1 - lo for e, (lo, _) in zip(effective, forward.pad_widths))
    spec = ConvSpec(
        batch=forward.batch,
        in_channels=forward.out_channels,
        out_channels=forward.in_channels,
        groups=forward.groups,
        input_shape=frame,
        kernel_shape=forward.kernel_shape,
        stride=(1,) * forward.spatial_ndim,
        dilation=forward.dilation,
        pad_widths=((0, 0),) * forward.spatial_ndim,
        dtype=forward.dtype,
    )
    assert spec.output_shape == forward.input_shape, (spec, forward)
    return spec, offsets


def weight_gradient_spec(forward: ConvSpec, grad_spatial: tuple[int, ...]) -> ConvSpec:
    """Return the correlation that computes the weight gradient (before its crop).

    Input ``x`` laid out ``(C, G*N, *S)``, kernel ``g`` laid out ``(G*O, N, *M)``;
    stride and dilation exchanged. Its output ``(C, G*O, *K')`` has ``K' >= K``.
    """
    return ConvSpec(
        batch=forward.in_channels_per_group,
        in_channels=forward.groups * forward.batch,
        out_channels=forward.out_channels,
        groups=forward.groups,
        input_shape=forward.input_shape,
        kernel_shape=tuple(grad_spatial),
        stride=forward.dilation,
        dilation=forward.stride,
        pad_widths=forward.pad_widths,
        dtype=forward.dtype,
    )


def gradient_specs(forward: ConvSpec) -> dict[str, ConvSpec]:
    """The canonical problems the input and weight gradients of ``forward`` run as.

    Lets callers (``trueconv explain``, the tests) ask each algorithm's
    ``supports()`` about the gradients without running them.
    """
    return {
        "input": input_gradient_spec(forward)[0],
        "weight": weight_gradient_spec(forward, forward.output_shape),
    }


# --------------------------------------------------------------------------
# The two transposed computations
# --------------------------------------------------------------------------
def input_gradient(
    grad: np.ndarray, weight: np.ndarray, forward: ConvSpec, algorithm: str, fn: str
) -> np.ndarray:
    """Return ``d<conv(x, weight), grad>/dx``, shape ``(N, G*C, *forward.input_shape)``.

    ``grad`` is ``(N, G*O, *M)`` and ``weight`` the canonical forward kernel
    ``(G*O, C, *K)``, both in the compute dtype (complex operands: pass the
    conjugated kernel). ``M`` may be any shape (transposed convolution).
    """
    n, g = forward.batch, forward.groups
    c, o = forward.in_channels_per_group, forward.out_channels_per_group
    nd = forward.spatial_ndim
    spec, offsets = input_gradient_spec(forward)
    # Kernel (G*O, C, *K) -> (G, O, C, *K) -> (G, C, O, *K) -> (G*C, O, *K), flipped:
    # the group moves from the kernel's input channels to its output channels.
    swapped = weight.reshape(g, o, c, *forward.kernel_shape).swapaxes(1, 2)
    swapped = np.ascontiguousarray(
        flip_spatial(swapped.reshape(g * c, o, *forward.kernel_shape), nd))
    afters = tuple(f - lo - m for f, lo, m in zip(spec.input_shape, offsets, grad.shape[2:]))
    if all(s == 1 for s in forward.stride) and min(offsets + afters, default=0) >= 0:
        # Stride 1, no cropping: the frame is the gradient zero-padded, which the
        # algorithms do implicitly. (Framing it cost a gradient-sized copy whose fresh pages
        # faulted on every call: 3x3 64->64 @56 batch 8, 6.2 -> up to 15 ms per call.)
        padded = ConvSpec(spec.batch, spec.in_channels, spec.out_channels, spec.groups,
                          tuple(grad.shape[2:]), spec.kernel_shape, spec.stride, spec.dilation,
                          tuple(zip(offsets, afters)), spec.dtype)
        out, _ = execute(np.ascontiguousarray(grad), swapped, padded, algorithm, fn)
        return out
    # Frame the stride-dilated gradient: sample j lands at offset + j * stride.
    framed = np.zeros((n, g * o, *spec.input_shape), dtype=grad.dtype)
    source, target = [], []
    for m, start, s, size in zip(grad.shape[2:], offsets, forward.stride, spec.input_shape):
        first = max(0, -(start // s))  # first j with start + j * s >= 0
        stop = max(first, min(m, (size - 1 - start) // s + 1))  # last j inside, plus one
        source.append(slice(first, stop))
        target.append(slice(start + first * s, start + (stop - 1) * s + 1, s))
    if all(sl.stop > sl.start for sl in source):
        framed[(Ellipsis, *target)] = grad[(Ellipsis, *source)]
    out, _ = execute(framed, swapped, spec, algorithm, fn)
    return out


def weight_gradient(
    grad: np.ndarray, x: np.ndarray, forward: ConvSpec, algorithm: str, fn: str
) -> np.ndarray:
    """Return ``d<conv(x, w), grad>/dw``, shape ``(G*O, C, *K)``.

    ``x`` is the canonical forward input ``(N, G*C, *S)`` (padding-mode pre-pass
    applied; complex: pass it conjugated) and ``grad`` is ``(N, G*O, *M)``.
    """
    n, g = forward.batch, forward.groups
    c, o = forward.in_channels_per_group, forward.out_channels_per_group
    nd = forward.spatial_ndim
    spec = weight_gradient_spec(forward, grad.shape[2:])
    axes = tuple(range(3, 3 + nd))
    # (N, G*C, *S) -> (N, G, C, *S) -> (C, G, N, *S) -> (C, G*N, *S): groups become feature
    # groups. Algorithms read any strides, and the ones that lay the data out again (im2col's
    # planes and columns, Winograd's tiles) copy it anyway, so the transposes stay views
    # where NumPy can (G == 1 or N == 1; else reshape copies): that saves two full copies.
    x_t = x.reshape(n, g, c, *x.shape[2:]).transpose(2, 1, 0, *axes)
    x_t = x_t.reshape(c, g * n, *x.shape[2:])
    # (N, G*O, *M) -> (N, G, O, *M) -> (G, O, N, *M) -> (G*O, N, *M)
    g_t = grad.reshape(n, g, o, *grad.shape[2:]).transpose(1, 2, 0, *axes)
    g_t = g_t.reshape(g * o, n, *grad.shape[2:])
    out, _ = execute(x_t, g_t, spec, algorithm, fn)  # (C, G*O, *K')
    crop = tuple(slice(0, k) for k in forward.kernel_shape)
    return np.ascontiguousarray(out[(Ellipsis, *crop)].swapaxes(0, 1))


def pad_adjoint(
    grad: np.ndarray, pad_widths: tuple[tuple[int, int], ...], padding_mode: str
) -> np.ndarray:
    """Adjoint of the ``padding_mode`` pre-pass: scatter-add each padded sample to its source.

    ``np.pad`` with reflect/edge/wrap copies, per axis, sample ``source[i]`` of
    the unpadded axis into padded position ``i``; the adjoint adds the
    gradient at ``i`` back onto ``source[i]``. Axes are independent, so the
    adjoint runs axis by axis (the transpose of a Kronecker product).
    """
    mode = _SOURCE_INDEX_MODES[padding_mode]
    nd = len(pad_widths)
    for axis_index, (lo, hi) in enumerate(pad_widths):
        if not (lo or hi):
            continue
        axis = grad.ndim - nd + axis_index
        size = grad.shape[axis] - lo - hi
        source = np.pad(np.arange(size), (lo, hi), mode=mode)
        moved = np.moveaxis(grad, axis, 0)
        result = moved[lo:lo + size].copy()
        for i in (*range(lo), *range(lo + size, lo + size + hi)):
            result[source[i]] += moved[i]
        grad = np.moveaxis(result, 0, axis)
    return grad


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------
def conv_grad(
    grad_output: np.typing.ArrayLike,
    x: np.typing.ArrayLike,
    weight: np.typing.ArrayLike,
    stride: SizeArg = 1,
    padding: PaddingArg = 0,
    dilation: SizeArg = 1,
    groups: int = 1,
    *,
    padding_mode: PaddingMode = "zeros",
    kind: Kind = "correlation",
    algorithm: str = "auto",
    needs: tuple[str, ...] = ("input", "weight", "bias"),
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`trueconv.conv` with respect to its input, weight and bias.

    For ``y = conv(x, weight, bias, ...)`` and a loss ``L`` with ``dL/dy =
    grad_output``, return ``(dL/dx, dL/dweight, dL/dbias)``: what
    ``torch.autograd.grad`` returns for ``torch.nn.functional.conv{1,2,3}d``.

    Parameters
    ----------
    grad_output : array_like
        ``dL/dy``, exactly the shape of the forward output ``(N, C_out, *out)``
        (``(C_out, *out)`` when ``x`` is unbatched).
    x, weight : array_like
        The forward call's input and kernel (see :func:`trueconv.conv`).
    stride, padding, dilation, groups, padding_mode, kind, algorithm
        The forward call's parameters, every form :func:`trueconv.conv`
        accepts. ``algorithm`` is used for both gradient convolutions; an
        explicitly named algorithm that cannot serve one raises ``ValueError``
        with its reason.
    needs : tuple of {"input", "weight", "bias"}
        Which gradients to compute; the others are returned as ``None``.

    Returns
    -------
    grad_input : ndarray or None
        Shape of ``x``.
    grad_weight : ndarray or None
        Shape of ``weight``.
    grad_bias : ndarray or None
        Shape ``(C_out,)``: ``grad_output`` summed over batch and space.

    All three have the forward result's dtype, ``np.result_type(x, weight)``;
    ``grad_output`` must be castable to it (``same_kind``).

    Raises
    ------
    ValueError
        If ``grad_output`` does not have the forward output's shape, or for
        any invalid forward parameter (same messages as :func:`trueconv.conv`).
    TypeError
        For unsupported dtypes, or a ``grad_output`` that cannot be cast to
        the result dtype.

    See Also
    --------
    conv_transpose : the input gradient as a layer, with ``output_padding``.
    trueconv.torch.conv : an autograd Function using these gradients.

    Notes
    -----
    Both gradients are convolutions (JAX's transpose rules, see the module
    docstring): ``grad_input`` correlates the stride-dilated ``grad_output``
    with the flipped, channel-swapped kernel; ``grad_weight`` correlates the
    padded input with ``grad_output`` with stride and dilation exchanged. A
    non-zero ``padding_mode`` adds the adjoint of its padding (gradients of
    the mirrored or wrapped samples return to their source). For
    ``kind="convolution"`` the weight gradient is flipped back. Complex
    inputs follow PyTorch's convention (the conjugate of the partner operand).

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> x = np.arange(4.0).reshape(1, 1, 4)
    >>> w = np.array([[[1.0, 2.0]]])
    >>> gx, gw, gb = trueconv.conv_grad(np.ones((1, 1, 3)), x, w)
    >>> gx
    array([[[1., 3., 3., 2.]]])
    >>> gw, gb
    (array([[[3., 6.]]]), array([3.]))
    """
    fn = "conv_grad"
    wanted = normalize_needs(needs, fn)
    xc, wc, _, spec, batched, result, mode_pads = prepare_conv(
        x, weight, None, stride, padding, dilation, groups, padding_mode, kind, algorithm, fn
    )
    grad = as_array(grad_output, "grad_output", fn)
    expected = spec.full_output_shape if batched else spec.full_output_shape[1:]
    check_grad_output(grad.shape, expected, np.shape(x), np.shape(weight), fn)
    if not np.can_cast(grad.dtype, result, "same_kind"):
        raise TypeError(
            f"{fn}: grad_output of dtype {grad.dtype} cannot be cast to the forward result "
            f"dtype {result} (input {xc.dtype}, weight {wc.dtype})"
        )
    grad = (grad if batched else grad[np.newaxis]).astype(xc.dtype, copy=False)
    conj = np.conj if xc.dtype.kind == "c" else (lambda a: a)

    grad_input = grad_weight = grad_bias = None
    if "input" in wanted:
        gx = input_gradient(grad, conj(wc), spec, algorithm, f"{fn} (grad_input)")
        if padding_mode != "zeros":
            gx = pad_adjoint(gx, mode_pads, padding_mode)
        grad_input = finish(gx, None, batched, result, fn)
    if "weight" in wanted:
        gw = weight_gradient(grad, conj(xc), spec, algorithm, f"{fn} (grad_weight)")
        if kind == "convolution":
            gw = flip_spatial(gw, spec.spatial_ndim)
        grad_weight = cast_result(np.ascontiguousarray(gw), result, fn)
    if "bias" in wanted:
        grad_bias = cast_result(grad.sum(axis=(0, *range(2, grad.ndim))), result, fn)
    return grad_input, grad_weight, grad_bias


def conv_transpose(
    x: np.typing.ArrayLike,
    weight: np.typing.ArrayLike,
    bias: np.typing.ArrayLike | None = None,
    stride: SizeArg = 1,
    padding: PaddingArg = 0,
    output_padding: SizeArg = 0,
    groups: int = 1,
    dilation: SizeArg = 1,
    *,
    kind: Kind = "correlation",
    algorithm: str = "auto",
) -> np.ndarray:
    r"""N-d transposed convolution, equal to ``torch.nn.functional.conv_transpose{1,2,3}d``.

    The adjoint of :func:`trueconv.conv` with respect to its input (sometimes
    called "deconvolution", although it does not invert anything): each input
    sample scatters ``weight`` scaled by its value into the output, ``stride``
    samples apart.

    Parameters
    ----------
    x : array_like
        Input ``(N, C_in, *in)``, or ``(C_in, *in)`` unbatched.
    weight : array_like
        Kernel ``(C_in, C_out / groups, *kernel)`` (PyTorch's transposed layout).
    bias : array_like, optional
        Shape ``(C_out,)``.
    stride, dilation : int or tuple of int, default 1
        Those of the forward convolution this is the adjoint of.
    padding : int, tuple, tuple of (before, after) pairs or "valid", default 0
        The forward convolution's zero padding: removed from the output.
    output_padding : int or tuple of int, default 0
        Extra samples on the high side of each output axis, to reach an output
        size that striding made ambiguous. Must be smaller than ``stride`` or
        ``dilation`` (``0 <= output_padding < max(stride, dilation)``).
    groups : int, default 1
        Channel groups; must divide ``C_in``.
    kind : {"correlation", "convolution"}
        ``"convolution"`` is the adjoint of ``conv(..., kind="convolution")``:
        the kernel is flipped on every spatial axis.
    algorithm : str, default "auto"
        As in :func:`trueconv.conv`.

    Returns
    -------
    ndarray
        Shape ``(N, C_out, *out)`` with ``out = (in - 1) * stride - before -
        after + dilation * (kernel - 1) + 1 + output_padding``; dtype
        ``np.result_type(x, weight)``.

    Raises
    ------
    ValueError
        For inconsistent shapes, ``output_padding`` out of range, a
        non-positive output size, or ``padding="same"``.
    TypeError
        For unsupported dtypes or non-integer parameters.

    See Also
    --------
    conv_grad : ``conv_transpose(g, w, stride=s, ...)`` is ``conv_grad(g, x, w,
        stride=s, ..., needs=("input",))[0]`` for ``x`` of the output's shape.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> x = np.array([[[1.0, 2.0]]])
    >>> w = np.array([[[1.0, 10.0, 100.0]]])
    >>> trueconv.conv_transpose(x, w, stride=2)
    array([[[  1.,  10., 102.,  20., 200.]]])
    >>> trueconv.conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    array([[[ 10., 102.,  20., 200.]]])
    """
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                           kind, algorithm, "conv_transpose")


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,  # noqa: ANN001
                    kind, algorithm, fn) -> np.ndarray:
    x = as_array(x, "input", fn)
    weight = as_array(weight, "weight", fn)
    bias_array = None if bias is None else as_array(bias, "bias", fn)
    check_algorithm_name(algorithm, fn)
    normalize_choice(kind, KINDS, "kind", fn)
    result = result_dtype(x.dtype, weight.dtype)
    if bias_array is not None:
        check_bias_dtype(bias_array.dtype, result, fn)
    compute = compute_dtype(result)
    forward, batched = normalize_conv_transpose(
        x.shape, weight.shape, None if bias_array is None else bias_array.shape,
        stride, padding, output_padding, groups, dilation, fn, compute,
    )
    grad = (x if batched else x[np.newaxis]).astype(compute, copy=False)
    w = weight.astype(compute, copy=False)
    if kind == "convolution":
        w = flip_spatial(w, forward.spatial_ndim)
    # No conjugation: this is the adjoint's formula applied to x, like torch's
    # conv_transpose (which does not conjugate complex kernels either).
    out = input_gradient(grad, w, forward, algorithm, fn)
    return finish(out, bias_array, batched, result, fn)


def _transpose_nd(nd: int, fn: str, x, weight, bias, stride, padding, output_padding,  # noqa: ANN001
                  groups, dilation, kind, algorithm) -> np.ndarray:
    check_spatial_ndim(np.shape(weight), nd, fn)
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                           kind, algorithm, fn)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0,  # noqa: A002, ANN001
                     groups=1, dilation=1, *, kind: Kind = "correlation",
                     algorithm: str = "auto") -> np.ndarray:
    """1-D :func:`conv_transpose` with ``torch.nn.functional.conv_transpose1d``'s order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv_transpose1d(np.ones((1, 1, 3)), np.ones((1, 2, 2))).shape
    (1, 2, 4)
    """
    return _transpose_nd(1, "conv_transpose1d", input, weight, bias, stride, padding,
                         output_padding, groups, dilation, kind, algorithm)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,  # noqa: A002, ANN001
                     groups=1, dilation=1, *, kind: Kind = "correlation",
                     algorithm: str = "auto") -> np.ndarray:
    """2-D :func:`conv_transpose` with ``torch.nn.functional.conv_transpose2d``'s order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv_transpose2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), stride=2).shape
    (1, 1, 6, 6)
    """
    return _transpose_nd(2, "conv_transpose2d", input, weight, bias, stride, padding,
                         output_padding, groups, dilation, kind, algorithm)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0,  # noqa: A002, ANN001
                     groups=1, dilation=1, *, kind: Kind = "correlation",
                     algorithm: str = "auto") -> np.ndarray:
    """3-D :func:`conv_transpose` with ``torch.nn.functional.conv_transpose3d``'s order.

    Examples
    --------
    >>> import numpy as np, trueconv
    >>> trueconv.conv_transpose3d(np.ones((2, 3, 3, 3)), np.ones((2, 4, 1, 1, 1)), groups=2).shape
    (8, 3, 3, 3)
    """
    return _transpose_nd(3, "conv_transpose3d", input, weight, bias, stride, padding,
                         output_padding, groups, dilation, kind, algorithm)
