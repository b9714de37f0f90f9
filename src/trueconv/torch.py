"""PyTorch interop: trueconv convolutions as autograd Functions and ``nn.Module`` layers.

``trueconv.torch.conv2d(x, weight, ...)`` behaves like
``torch.nn.functional.conv2d`` with trueconv's extras (``kind="convolution"``
for a true, flipped-kernel convolution; every padding form and
``padding_mode``; ``algorithm=`` to pick e.g. FFT for large kernels), and
differentiates through :func:`trueconv.conv_grad`. ``Conv1d/Conv2d/Conv3d``
are drop-in layers with ``torch.nn.Conv2d``'s constructor and parameters
(``weight``, ``bias``), so ``state_dict`` moves freely between the two.

The three operations involved, forward ``y = conv(x, w)``, input gradient
``gx = conv_x^T(g, w)`` and weight gradient ``gw = conv_w^T(g, x)``, are each a
:class:`torch.autograd.Function` whose backward is expressed with the other
two (all three are bilinear), so second derivatives (``gradgradcheck``, double
backward) work too.

Tensors must live on the CPU (they are shared with NumPy, not copied).
Gradients flow for float32 and float64; integer tensors are accepted for an
exact forward pass only.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from ._api import conv_with_plan
from ._grad import conv_grad
from ._planner import check_algorithm_name
from ._spec import (
    KINDS,
    PADDING_MODES,
    check_spatial_ndim,
    normalize_choice,
    normalize_groups,
    normalize_padding,
    normalize_positive,
    normalize_tuple,
)

__all__ = ["conv", "conv1d", "conv2d", "conv3d", "Conv1d", "Conv2d", "Conv3d"]

_DIFFERENTIABLE = (torch.float32, torch.float64)


class _Params(NamedTuple):
    """The non-tensor arguments of one convolution, carried through autograd."""

    stride: Any
    padding: Any
    dilation: Any
    groups: int
    padding_mode: str
    kind: str
    algorithm: str
    fn: str


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy; trueconv never writes to its inputs)."""
    return t.detach().numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor owning a C-contiguous, writable copy only when ``a`` is not one already."""
    return torch.from_numpy(np.require(a, requirements=["C", "W"]))


def _shape_only(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zero-stride stand-in for an operand whose values a gradient does not read."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: _Params) -> torch.Tensor:
    out, _ = conv_with_plan(
        _numpy(x), _numpy(w), None if b is None else _numpy(b), p.stride, p.padding,
        p.dilation, p.groups, padding_mode=p.padding_mode, kind=p.kind,
        algorithm=p.algorithm, fn=p.fn,
    )
    return _tensor(out)


def _grad_input(
    g: torch.Tensor, w: torch.Tensor, x_shape: tuple[int, ...], p: _Params
) -> torch.Tensor:
    x = _shape_only(x_shape, _numpy(w).dtype)
    gx, _, _ = conv_grad(
        _numpy(g), x, _numpy(w), p.stride, p.padding, p.dilation, p.groups,
        padding_mode=p.padding_mode, kind=p.kind, algorithm=p.algorithm, needs=("input",),
    )
    return _tensor(gx)


def _grad_weight(
    g: torch.Tensor, x: torch.Tensor, w_shape: tuple[int, ...], p: _Params
) -> torch.Tensor:
    w = _shape_only(w_shape, _numpy(x).dtype)
    _, gw, _ = conv_grad(
        _numpy(g), _numpy(x), w, p.stride, p.padding, p.dilation, p.groups,
        padding_mode=p.padding_mode, kind=p.kind, algorithm=p.algorithm, needs=("weight",),
    )
    return _tensor(gw)


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    return g.sum(dim=(0, *range(2, g.dim())))


class _Conv(torch.autograd.Function):
    """``y = conv(x, w) + b``."""

    @staticmethod
    def forward(ctx, x, w, b, p):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, w)
        ctx.p = p
        return _forward(x, w, b, p)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        p = ctx.p
        gx = _ConvGradInput.apply(g, w, tuple(x.shape), p) if ctx.needs_input_grad[0] else None
        gw = _ConvGradWeight.apply(g, x, tuple(w.shape), p) if ctx.needs_input_grad[1] else None
        gb = _bias_grad(g) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class _ConvGradInput(torch.autograd.Function):
    """``gx = conv_x^T(g, w)``; bilinear: d/dg is the forward conv, d/dw a weight gradient."""

    @staticmethod
    def forward(ctx, g, w, x_shape, p):  # noqa: ANN001, ANN205
        ctx.save_for_backward(g, w)
        ctx.p = p
        return _grad_input(g, w, x_shape, p)

    @staticmethod
    def backward(ctx, ggx):  # noqa: ANN001, ANN205
        g, w = ctx.saved_tensors
        p = ctx.p
        # <conv_x^T(g, w), v> = <g, conv(v, w)> = <conv_w^T(g, v), w>
        dg = _Conv.apply(ggx, w, None, p) if ctx.needs_input_grad[0] else None
        dw = _ConvGradWeight.apply(g, ggx, tuple(w.shape), p) if ctx.needs_input_grad[1] else None
        return dg, dw, None, None


class _ConvGradWeight(torch.autograd.Function):
    """``gw = conv_w^T(g, x)``; bilinear: d/dg is the forward conv, d/dx an input gradient."""

    @staticmethod
    def forward(ctx, g, x, w_shape, p):  # noqa: ANN001, ANN205
        ctx.save_for_backward(g, x)
        ctx.p = p
        return _grad_weight(g, x, w_shape, p)

    @staticmethod
    def backward(ctx, ggw):  # noqa: ANN001, ANN205
        g, x = ctx.saved_tensors
        p = ctx.p
        # <conv_w^T(g, x), u> = <g, conv(x, u)> = <conv_x^T(g, u), x>
        dg = _Conv.apply(x, ggw, None, p) if ctx.needs_input_grad[0] else None
        dx = _ConvGradInput.apply(g, ggw, tuple(x.shape), p) if ctx.needs_input_grad[1] else None
        return dg, dx, None, None


def _check_tensors(fn: str, **tensors: torch.Tensor | None) -> None:
    """CPU tensors; float32/float64 to differentiate; one dtype, as torch requires."""
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, t in present.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(
                f"{fn}: {name} is on device {t.device}, but trueconv.torch computes on the CPU "
                f"with NumPy; move it with {name}.cpu() (or use torch.nn.functional on {t.device})"
            )
        if (t.is_floating_point() or t.is_complex()) and t.dtype not in _DIFFERENTIABLE:
            raise TypeError(
                f"{fn}: {name} has dtype {t.dtype}; trueconv.torch supports float32 and float64 "
                f"tensors (and integer tensors for a forward pass without gradients)"
            )
    dtypes = {name: t.dtype for name, t in present.items()}
    if len(set(dtypes.values())) > 1:
        found = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        # Also what an integer tensor mixed into a differentiated call meets: torch itself
        # refuses requires_grad on integer tensors.
        raise TypeError(f"{fn}: input, weight and bias must have the same dtype, got {found}")


def _conv(fn: str, x, weight, bias, stride, padding, dilation, groups,  # noqa: ANN001
          padding_mode, kind, algorithm) -> torch.Tensor:
    _check_tensors(fn, input=x, weight=weight, bias=bias)
    params = _Params(stride, padding, dilation, groups, padding_mode, kind, algorithm, fn)
    return _Conv.apply(x, weight, bias, params)


def conv(
    input: torch.Tensor,  # noqa: A002
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    kind: str = "correlation",
    algorithm: str = "auto",
) -> torch.Tensor:
    """N-d :func:`trueconv.conv` on CPU tensors, differentiable with torch.autograd.

    Parameters and result are those of :func:`trueconv.conv` (and, with the
    defaults, of ``torch.nn.functional.conv{1,2,3}d``). ``input``, ``weight``
    and ``bias`` must be CPU tensors of one dtype; gradients flow for float32
    and float64 (computed by :func:`trueconv.conv_grad`, second derivatives
    included).

    Raises
    ------
    ValueError
        For a tensor not on the CPU, and for every invalid shape or parameter
        :func:`trueconv.conv` refuses.
    TypeError
        For non-tensors, float16/bfloat16/complex tensors, or mixed dtypes
        (an integer tensor next to a float one that requires grad, say).

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> x = torch.arange(4.0, dtype=torch.float64).reshape(1, 1, 4).requires_grad_()
    >>> w = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    >>> y = tct.conv(x, w, kind="convolution")
    >>> y
    tensor([[[1., 4., 7.]]], dtype=torch.float64, grad_fn=<_ConvBackward>)
    >>> y.sum().backward()
    >>> x.grad
    tensor([[[2., 3., 3., 1.]]], dtype=torch.float64)
    """
    return _conv("trueconv.torch.conv", input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, kind, algorithm)


def _conv_nd(nd: int, input, weight, bias, stride, padding, dilation, groups,  # noqa: A002, ANN001
             padding_mode, kind, algorithm) -> torch.Tensor:
    fn = f"trueconv.torch.conv{nd}d"
    if isinstance(weight, torch.Tensor):
        check_spatial_ndim(tuple(weight.shape), nd, fn)
    return _conv(fn, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, kind, algorithm)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode="zeros", kind="correlation", algorithm="auto") -> torch.Tensor:
    """1-D :func:`conv`, ``torch.nn.functional.conv1d``'s argument order and a rank check.

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> tct.conv1d(torch.ones(1, 2, 5), torch.ones(3, 2, 3)).shape
    torch.Size([1, 3, 3])
    """
    return _conv_nd(1, input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode="zeros", kind="correlation", algorithm="auto") -> torch.Tensor:
    """2-D :func:`conv`, ``torch.nn.functional.conv2d``'s argument order and a rank check.

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> tct.conv2d(torch.ones(1, 1, 4, 4), torch.ones(2, 1, 3, 3), padding="same").shape
    torch.Size([1, 2, 4, 4])
    """
    return _conv_nd(2, input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,  # noqa: A002, ANN001
           padding_mode="zeros", kind="correlation", algorithm="auto") -> torch.Tensor:
    """3-D :func:`conv`, ``torch.nn.functional.conv3d``'s argument order and a rank check.

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> tct.conv3d(torch.ones(1, 1, 3, 3, 3), torch.ones(1, 1, 2, 2, 2)).shape
    torch.Size([1, 1, 2, 2, 2])
    """
    return _conv_nd(3, input, weight, bias, stride, padding, dilation, groups,
                    padding_mode, kind, algorithm)


class _ConvNd(torch.nn.Module):
    """Shared body of :class:`Conv1d`, :class:`Conv2d` and :class:`Conv3d`."""

    spatial_ndim: int = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        kind: str = "correlation",
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        nd = self.spatial_ndim
        fn = f"trueconv.torch.{type(self).__name__}"
        self.kernel_size = normalize_positive(kernel_size, nd, "kernel_size", fn)
        self.stride = normalize_positive(stride, nd, "stride", fn)
        self.dilation = normalize_positive(dilation, nd, "dilation", fn)
        self.groups = normalize_groups(groups, fn)
        # Validate now (an invalid string or a negative pad); 'same' resolves per input.
        normalize_padding(padding, (1,) * nd, self.kernel_size, self.stride, self.dilation, fn)
        self.padding = padding if isinstance(padding, str) else _padding_tuple(padding, nd, fn)
        self.padding_mode = normalize_choice(padding_mode, PADDING_MODES, "padding_mode", fn)
        self.kind = normalize_choice(kind, KINDS, "kind", fn)
        self.algorithm = check_algorithm_name(algorithm, fn)
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if normalize_tuple(channels, 1, name, fn)[0] < 0 or channels % self.groups:
                raise ValueError(
                    f"{fn}: {name}={channels} must be a non-negative multiple of "
                    f"groups={self.groups}"
                )
        self.in_channels, self.out_channels = in_channels, out_channels
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(
                f"{fn}: device must be the CPU (trueconv computes with NumPy), got "
                f"device={device!r}"
            )
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DIFFERENTIABLE:
            raise TypeError(f"{fn}: dtype must be torch.float32 or torch.float64, got {dtype}")
        factory = {"device": "cpu", "dtype": dtype}
        self.weight = torch.nn.Parameter(
            torch.empty((out_channels, in_channels // self.groups, *self.kernel_size), **factory)
        )
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.Conv*d's initialization: Kaiming-uniform weight, fan-in-bounded bias."""
        with torch.no_grad():
            torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                fan_in = self.weight.shape[1] * math.prod(self.kernel_size)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        fn = f"trueconv.torch.{type(self).__name__}"
        return _conv(fn, input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups, self.padding_mode, self.kind, self.algorithm)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self.spatial_ndim:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self.spatial_ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        s += f", kind={self.kind}"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm}"
        return s


def _padding_tuple(padding: Any, nd: int, fn: str) -> tuple:
    """Keep ints/tuples torch-like (a tuple per axis); keep (before, after) pairs as pairs."""
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        return tuple(tuple(p) for p in padding)
    return normalize_tuple(padding, nd, "padding", fn)


class Conv1d(_ConvNd):
    """Drop-in ``torch.nn.Conv1d`` computed by trueconv, with ``kind=`` and ``algorithm=``.

    Same constructor, parameters (``weight`` ``(out, in/groups, k)``, ``bias``)
    and initialization as ``torch.nn.Conv1d``; ``padding`` also takes ``(before,
    after)`` pairs and ``"same"`` with stride > 1 (TensorFlow's rule).

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> layer = tct.Conv1d(2, 4, 3, padding=1, kind="convolution")
    >>> layer(torch.randn(5, 2, 10)).shape
    torch.Size([5, 4, 10])
    """

    spatial_ndim = 1


class Conv2d(_ConvNd):
    """Drop-in ``torch.nn.Conv2d`` computed by trueconv, with ``kind=`` and ``algorithm=``.

    Same constructor, parameters (``weight`` ``(out, in/groups, kh, kw)``,
    ``bias``) and initialization as ``torch.nn.Conv2d``, so state dicts load
    either way.

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> layer = tct.Conv2d(3, 8, 3, stride=2, padding="same", algorithm="im2col")
    >>> layer
    Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=same, kind=correlation, algorithm=im2col)
    >>> layer(torch.randn(1, 3, 9, 9)).shape
    torch.Size([1, 8, 5, 5])
    """

    spatial_ndim = 2


class Conv3d(_ConvNd):
    """Drop-in ``torch.nn.Conv3d`` computed by trueconv, with ``kind=`` and ``algorithm=``.

    Examples
    --------
    >>> import torch, trueconv.torch as tct
    >>> tct.Conv3d(1, 2, 3, padding=1, padding_mode="circular")(torch.randn(1, 1, 4, 4, 4)).shape
    torch.Size([1, 2, 4, 4, 4])
    """

    spatial_ndim = 3
