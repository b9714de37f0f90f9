"""Parameter normalization and shape laws: the one place that knows them.

Every public entry point (deep-learning ``conv*``, gradients, transposed
convolution, the SciPy-style signal functions, the Dask adapter and the CLI)
turns its arguments into a :class:`ConvSpec` here. Algorithms consume only
that canonical form: channels-first, cross-correlation, explicit zero
``(before, after)`` pads per spatial axis in axis order.

Every message about a shape or a parameter value is written once, in this
module (see ARCHITECTURE.md, anti-pattern 2).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, Sequence

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
KINDS = ("correlation", "convolution")

Kind = Literal["correlation", "convolution"]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
SizeArg = int | Sequence[int]
PaddingArg = str | int | Sequence[int] | Sequence[Sequence[int]]

# Python ints never overflow, but NumPy indexes with intp: refuse anything an
# ndarray could not even describe before any allocation (pytorch#161875).
MAX_ELEMENTS = 2**62


# --------------------------------------------------------------------------
# The shape law: two one-line primitives (JAX stride_dim / dilate_dim) that
# forward, gradients, transposed convolution, Dask halos and `explain` share.
# --------------------------------------------------------------------------
def effective_kernel_size(kernel_size: int, dilation: int) -> int:
    """Return the extent a dilated kernel covers: ``dilation * (k - 1) + 1``."""
    return dilation * (kernel_size - 1) + 1


def conv_output_size(padded_size: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Return the output length along one axis of an already padded input."""
    return (padded_size - effective_kernel_size(kernel_size, dilation)) // stride + 1


def transpose_output_size(
    input_size: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    pad_before: int,
    pad_after: int,
    output_padding: int = 0,
) -> int:
    """Return the length of the input that a forward conv mapped to ``input_size``.

    This is the transposed-convolution (and grad_input) size law, PyTorch's
    ``conv_input_size``: the inverse of :func:`conv_output_size` up to the
    ``output_padding`` rows that striding dropped.
    """
    return (
        (input_size - 1) * stride
        - pad_before
        - pad_after
        + effective_kernel_size(kernel_size, dilation)
        + output_padding
    )


def same_pad_widths(
    input_size: int, kernel_size: int, stride: int, dilation: int
) -> tuple[int, int]:
    """Return ``(before, after)`` for padding='same' along one axis.

    TensorFlow's SAME rule, ``out = ceil(in / stride)``; for stride 1 it is
    PyTorch's rule too. An odd total puts the extra element after (high side),
    as both frameworks do.
    """
    out = -(-input_size // stride)
    total = max((out - 1) * stride + effective_kernel_size(kernel_size, dilation) - input_size, 0)
    return total // 2, total - total // 2


def signal_pad_widths(kernel_size: int, mode: str, mirrored: bool = False) -> tuple[int, int]:
    """Return ``(before, after)`` zero pads that give SciPy's ``mode`` output.

    ``full`` pads ``k - 1`` on both sides; ``same`` is ``full`` centred on the
    first input (SciPy ``_centered``), so ``before = k // 2`` and for an even
    kernel the extra element goes *before*, unlike the frameworks' 'same'.
    ``mirrored`` swaps the two: ``scipy.signal.correlate2d`` is ``convolve2d``
    with the kernel flipped, so its 'same' window sits one sample later for an
    even kernel than ``correlate``'s does.
    """
    if mode == "full":
        return kernel_size - 1, kernel_size - 1
    if mode == "same":
        before, after = kernel_size // 2, kernel_size - 1 - kernel_size // 2
        return (after, before) if mirrored else (before, after)
    return 0, 0


# --------------------------------------------------------------------------
# Canonical problem
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """One convolution in canonical form; hashable, so it keys the plan cache.

    Derived shapes are computed once per instance (``cached_property`` stores
    them beside the fields; equality and hashing see the fields only): every
    call asks for them several times, and small layers feel each microsecond.

    Shapes are those the algorithms see: ``x`` is ``(batch, in_channels,
    *input_shape)`` *after* any non-zero ``padding_mode`` pre-pass, and
    ``pad_widths`` are the zero pads still to apply. ``weight`` is ``(out_channels,
    in_channels // groups, *kernel_shape)`` already flipped when the user asked
    for a true convolution, so every algorithm computes a cross-correlation.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_widths: tuple[tuple[int, int], ...]
    dtype: str = "float64"

    @property
    def spatial_ndim(self) -> int:
        return len(self.kernel_shape)

    @property
    def in_channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @cached_property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.input_shape, self.pad_widths))

    @cached_property
    def effective_kernel_shape(self) -> tuple[int, ...]:
        return tuple(map(effective_kernel_size, self.kernel_shape, self.dilation))

    @cached_property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(
            map(conv_output_size, self.padded_shape, self.kernel_shape, self.stride, self.dilation)
        )

    @property
    def full_output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.output_shape)

    @cached_property
    def kernel_size(self) -> int:
        return math.prod(self.kernel_shape)

    @cached_property
    def itemsize(self) -> int:
        import numpy as np

        return np.dtype(self.dtype).itemsize

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the direct formulation (``FLOPs / 2``)."""
        return (
            self.batch
            * self.out_channels
            * math.prod(self.output_shape)
            * self.in_channels_per_group
            * self.kernel_size
        )

    def with_batch(self, batch: int) -> ConvSpec:
        return replace(self, batch=batch)

    def with_dtype(self, dtype: object) -> ConvSpec:
        import numpy as np

        return replace(self, dtype=np.dtype(dtype).name)


# --------------------------------------------------------------------------
# Normalizers: argument checking separated from compute (SciPy style)
# --------------------------------------------------------------------------
def _as_int(value: object, name: str, fn: str) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{fn}: {name} must be an integer, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)  # accepts np.integer, refuses float/str
    except TypeError:
        raise TypeError(
            f"{fn}: {name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


def normalize_tuple(value: SizeArg, spatial_ndim: int, name: str, fn: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``spatial_ndim`` ints (an int broadcasts)."""
    if type(value) is int:  # the common call, without the Sequence ABC check (~1 us each)
        return (value,) * spatial_ndim
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(
            f"{fn}: {name} must be an int or a tuple of {spatial_ndim} ints, got {value!r}"
        )
    if isinstance(value, Sequence) or hasattr(value, "__len__"):
        values = tuple(_as_int(v, name, fn) for v in value)  # type: ignore[union-attr]
        if len(values) == 1:
            values = values * spatial_ndim
        if len(values) != spatial_ndim:
            raise ValueError(
                f"{fn}: {name} must have length {spatial_ndim} (or be an int), "
                f"got {len(values)} values {values}"
            )
        return values
    return (_as_int(value, name, fn),) * spatial_ndim


def normalize_positive(value: SizeArg, spatial_ndim: int, name: str, fn: str) -> tuple[int, ...]:
    """Return a per-axis tuple of positive ints (stride, dilation)."""
    values = normalize_tuple(value, spatial_ndim, name, fn)
    if any(v <= 0 for v in values):
        raise ValueError(f"{fn}: {name} must be positive, got {values}")
    return values


def normalize_groups(groups: object, fn: str) -> int:
    value = _as_int(groups, "groups", fn)
    if value <= 0:
        raise ValueError(f"{fn}: groups must be a positive integer, got {value}")
    return value


def normalize_choice(value: object, choices: Sequence[str], name: str, fn: str) -> str:
    """Return ``value`` if it is one of ``choices``; else a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: {name} must be one of {options}, got {value!r}")
    return value


def normalize_padding(
    padding: PaddingArg,
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    fn: str,
) -> tuple[tuple[int, int], ...]:
    """Resolve every padding form into ``(before, after)`` pairs in axis order.

    Accepts ``"valid"``, ``"same"``, an int, a tuple of ints (symmetric per axis)
    or a tuple of ``(before, after)`` pairs (asymmetric).
    """
    nd = len(kernel_shape)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            return tuple(map(same_pad_widths, input_shape, kernel_shape, stride, dilation))
        raise ValueError(
            f"{fn}: padding must be 'valid', 'same', an int, a tuple of ints or a tuple of "
            f"(before, after) pairs, got {padding!r}"
        )
    if isinstance(padding, Sequence) and any(isinstance(p, Sequence) for p in padding):
        if len(padding) != nd or not all(isinstance(p, Sequence) and len(p) == 2 for p in padding):
            raise ValueError(
                f"{fn}: padding as (before, after) pairs needs exactly {nd} pairs, got {padding!r}"
            )
        pairs = tuple((_as_int(a, "padding", fn), _as_int(b, "padding", fn)) for a, b in padding)
    else:
        sym = normalize_tuple(padding, nd, "padding", fn)  # type: ignore[arg-type]
        pairs = tuple((p, p) for p in sym)
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"{fn}: padding must be non-negative, got {pairs}")
    return pairs


def check_array_ranks(x_shape: tuple[int, ...], w_shape: tuple[int, ...], fn: str) -> bool:
    """Check ranks of x and weight; return whether x is batched."""
    if len(w_shape) < 3:
        raise ValueError(
            f"{fn}: weight must have at least 3 dimensions (out_channels, in_channels/groups, "
            f"*kernel), got weight of shape {w_shape}"
        )
    nd = len(w_shape) - 2
    if len(x_shape) == nd + 2:
        return True
    if len(x_shape) == nd + 1:
        return False
    raise ValueError(
        f"{fn}: expected {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input for "
        f"{len(w_shape)}-D weight of shape {w_shape}, got {len(x_shape)}-D input of shape {x_shape}"
    )


def check_spatial_ndim(w_shape: tuple[int, ...], expected: int, fn: str) -> None:
    """conv1d/2d/3d: the weight must have exactly ``expected`` spatial dims."""
    if len(w_shape) != expected + 2:
        raise ValueError(
            f"{fn}: expected a {expected + 2}-D weight (out_channels, in_channels/groups, "
            f"{expected} kernel dims), got weight of shape {w_shape}; use trueconv.conv for "
            f"any number of spatial dims"
        )


def check_element_count(shape: Sequence[int], what: str, fn: str) -> int:
    """Return ``prod(shape)`` or raise if no ndarray could hold it."""
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ValueError(f"{fn}: {what} of shape {tuple(shape)} would have {count} elements; too large")
    return count


def normalize_conv(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride: SizeArg,
    padding: PaddingArg,
    dilation: SizeArg,
    groups: int,
    padding_mode: str,
    kind: str,
    fn: str,
    dtype: object = "float64",
) -> tuple[ConvSpec, tuple[tuple[int, int], ...], bool]:
    """Validate a deep-learning style call and return its canonical form.

    Returns ``(spec, mode_pad_widths, batched)``. ``mode_pad_widths`` is the
    padding that a non-zero ``padding_mode`` pre-pass applies (all zeros for
    ``padding_mode="zeros"``); ``spec.pad_widths`` is then the zero padding left
    for the algorithm, and ``spec.input_shape`` the shape after the pre-pass.
    """
    padding_mode = normalize_choice(padding_mode, PADDING_MODES, "padding_mode", fn)
    normalize_choice(kind, KINDS, "kind", fn)
    batched = check_array_ranks(x_shape, w_shape, fn)
    full_x_shape = x_shape if batched else (1, *x_shape)
    nd = len(w_shape) - 2
    batch, in_channels, *spatial = full_x_shape
    out_channels, in_per_group, *kernel = w_shape
    stride_t = normalize_positive(stride, nd, "stride", fn)
    dilation_t = normalize_positive(dilation, nd, "dilation", fn)
    groups = normalize_groups(groups, fn)

    if any(k == 0 for k in kernel):
        raise ValueError(f"{fn}: weight of shape {tuple(w_shape)} has a kernel dimension of size 0")
    if out_channels % groups:
        raise ValueError(
            f"{fn}: groups={groups} must divide out_channels={out_channels} "
            f"(weight of shape {tuple(w_shape)})"
        )
    if in_per_group * groups != in_channels:
        raise ValueError(
            f"{fn}: given groups={groups}, weight of shape {tuple(w_shape)}, expected input of "
            f"shape {tuple(x_shape)} to have {in_per_group * groups} channels, but got "
            f"{in_channels} channels instead"
        )
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise ValueError(
            f"{fn}: expected bias to be 1-dimensional with {out_channels} elements "
            f"(weight of shape {tuple(w_shape)}), but got bias of shape {tuple(bias_shape)}"
        )
    if any(n == 0 for n in spatial):
        raise ValueError(
            f"{fn}: input spatial dims must be > 0, got input of shape {tuple(x_shape)}; only "
            f"a zero batch or zero channels are supported"
        )
    pad_widths = normalize_padding(padding, spatial, kernel, stride_t, dilation_t, fn)
    check_element_count([n + lo + hi for n, (lo, hi) in zip(spatial, pad_widths)], "padded input", fn)

    if padding_mode == "zeros":
        mode_pads = ((0, 0),) * nd
        algo_pads = pad_widths
        algo_input = tuple(spatial)
    else:
        check_mode_padding(padding_mode, spatial, pad_widths, fn)
        mode_pads = pad_widths
        algo_pads = ((0, 0),) * nd
        algo_input = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pad_widths))

    spec = ConvSpec(
        batch=batch,
        in_channels=in_channels,
        out_channels=out_channels,
        groups=groups,
        input_shape=algo_input,
        kernel_shape=tuple(kernel),
        stride=stride_t,
        dilation=dilation_t,
        pad_widths=algo_pads,
        dtype=_dtype_name(dtype),
    )
    check_kernel_fits(spec, fn, x_shape=tuple(x_shape), w_shape=tuple(w_shape), pad_widths=pad_widths)
    check_element_count(spec.full_output_shape, "output", fn)
    return spec, mode_pads, batched


def check_mode_padding(
    padding_mode: str, spatial: Sequence[int], pad_widths: Sequence[tuple[int, int]], fn: str
) -> None:
    """Refuse pads that torch's reflect/circular padding cannot produce."""
    for axis, (n, (lo, hi)) in enumerate(zip(spatial, pad_widths)):
        if padding_mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(
                f"{fn}: padding_mode='reflect' needs padding < input size on every axis, got "
                f"padding ({lo}, {hi}) for spatial axis {axis} of size {n}"
            )
        if padding_mode == "circular" and max(lo, hi) > n:
            raise ValueError(
                f"{fn}: padding_mode='circular' needs padding <= input size on every axis, got "
                f"padding ({lo}, {hi}) for spatial axis {axis} of size {n}"
            )


def check_kernel_fits(
    spec: ConvSpec,
    fn: str,
    *,
    x_shape: tuple[int, ...] | None = None,
    w_shape: tuple[int, ...] | None = None,
    pad_widths: tuple[tuple[int, int], ...] | None = None,
) -> None:
    """The padded input must be at least as large as the effective kernel.

    The optional shapes are the caller's (before any padding_mode pre-pass), so the
    message can show what the user passed.
    """
    if any(p < e for p, e in zip(spec.padded_shape, spec.effective_kernel_shape)):
        given = ""
        if x_shape is not None and w_shape is not None:
            given = (f" (input of shape {x_shape}, weight of shape {w_shape}, padding "
                     f"{pad_widths if pad_widths is not None else spec.pad_widths}, "
                     f"dilation {spec.dilation})")
        raise ValueError(
            f"{fn}: padded input size per channel {spec.padded_shape} is smaller than the "
            f"effective kernel size (dilation * (kernel - 1) + 1) {spec.effective_kernel_shape}"
            f"{given}"
        )


def _dtype_name(dtype: object) -> str:
    import numpy as np

    return np.dtype(dtype).name  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# SciPy-style signal calls
# --------------------------------------------------------------------------
SIGNAL_MODES = ("full", "valid", "same")
SIGNAL_METHODS = ("auto", "direct", "fft")
BOUNDARIES = {"fill": "fill", "pad": "fill", "wrap": "wrap", "circular": "wrap",
              "symm": "symm", "symmetric": "symm"}


def normalize_signal_mode(mode: object, fn: str) -> str:
    if not isinstance(mode, str) or mode not in SIGNAL_MODES:
        raise ValueError(f"{fn}: acceptable mode flags are 'valid', 'same', or 'full', got {mode!r}")
    return mode


def normalize_signal_method(method: object, fn: str) -> str:
    if not isinstance(method, str) or method not in SIGNAL_METHODS:
        raise ValueError(
            f"{fn}: acceptable method flags are 'auto', 'direct', or 'fft', got {method!r}"
        )
    return method


def normalize_boundary(boundary: object, fn: str) -> str:
    if not isinstance(boundary, str) or boundary not in BOUNDARIES:
        raise ValueError(
            f"{fn}: acceptable boundary flags are 'fill', 'circular' (or 'wrap'), and "
            f"'symmetric' (or 'symm'), got {boundary!r}"
        )
    return BOUNDARIES[boundary]


def check_signal_shapes(shape1: tuple[int, ...], shape2: tuple[int, ...], fn: str) -> None:
    if len(shape1) != len(shape2):
        raise ValueError(
            f"{fn}: in1 and in2 should have the same dimensionality, got in1 of shape {shape1} "
            f"and in2 of shape {shape2}"
        )
    if 0 in shape1 or 0 in shape2:
        raise ValueError(
            f"{fn}: in1 and in2 must not be empty, got in1 of shape {shape1} and in2 of shape {shape2}"
        )


def valid_swap_needed(shape1: tuple[int, ...], shape2: tuple[int, ...], fn: str) -> bool:
    """SciPy's 'valid' rule: one input must dominate; swap when in2 does."""
    ok1 = all(a >= b for a, b in zip(shape1, shape2))
    ok2 = all(b >= a for a, b in zip(shape1, shape2))
    if not (ok1 or ok2):
        raise ValueError(
            f"{fn}: for 'valid' mode, one must be at least as large as the other in every "
            f"dimension, got in1 of shape {shape1} and in2 of shape {shape2}"
        )
    return not ok1


def normalize_axes(axes: object, ndim: int, fn: str) -> tuple[int, ...]:
    """Return sorted, unique, non-negative axes (SciPy ``_init_nd_shape_and_axes``)."""
    if axes is None:
        return tuple(range(ndim))
    items = [axes] if not isinstance(axes, (Sequence,)) or isinstance(axes, str) else list(axes)
    try:
        values = [operator.index(a) for a in items]  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{fn}: axes must be a scalar or iterable of integers, got {axes!r}") from None
    if not values:
        raise ValueError(f"{fn}: when provided, axes cannot be empty")
    if any(a >= ndim or a < -ndim for a in values):
        raise ValueError(f"{fn}: axes {tuple(values)} exceeds dimensionality of input ({ndim})")
    values = [a % ndim for a in values]
    if len(set(values)) != len(values):
        raise ValueError(f"{fn}: all axes must be unique, got {tuple(values)}")
    return tuple(sorted(values))


# --------------------------------------------------------------------------
# Gradients and transposed convolution (used by trueconv._grad)
# --------------------------------------------------------------------------
GRADIENT_NAMES = ("input", "weight", "bias")


def normalize_needs(needs: object, fn: str) -> frozenset[str]:
    """Return the set of gradients asked for: a subset of ``GRADIENT_NAMES``."""
    items = (needs,) if isinstance(needs, str) else needs
    try:
        items = tuple(items)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{fn}: needs must be a tuple of names from {GRADIENT_NAMES}, got {needs!r}"
        ) from None
    return frozenset(normalize_choice(item, GRADIENT_NAMES, "needs", fn) for item in items)


def check_grad_output(
    grad_shape: tuple[int, ...],
    expected_shape: tuple[int, ...],
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    fn: str,
) -> None:
    """grad_output must have exactly the forward output's shape (TF CVE-2021-29520)."""
    if tuple(grad_shape) != tuple(expected_shape):
        raise ValueError(
            f"{fn}: grad_output must have the forward output's shape {tuple(expected_shape)} "
            f"(input of shape {tuple(x_shape)}, weight of shape {tuple(w_shape)}), got "
            f"grad_output of shape {tuple(grad_shape)}"
        )


def normalize_conv_transpose(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride: SizeArg,
    padding: PaddingArg,
    output_padding: SizeArg,
    groups: int,
    dilation: SizeArg,
    fn: str,
    dtype: object = "float64",
) -> tuple[ConvSpec, bool]:
    """Validate a transposed-convolution call; return the forward conv it is the adjoint of.

    ``x`` is ``(N, C_in, *in)`` and ``weight`` ``(C_in, C_out / groups, *kernel)``
    (PyTorch's layout). The returned spec describes the forward convolution
    from ``(N, C_out, *out)`` with that weight, whose input-gradient the
    transposed convolution is; ``out`` follows :func:`transpose_output_size`.
    Returns ``(spec, batched)``.
    """
    batched = check_array_ranks(x_shape, w_shape, fn)
    batch, in_channels, *spatial = x_shape if batched else (1, *x_shape)
    nd = len(w_shape) - 2
    weight_in, out_per_group, *kernel = w_shape
    stride_t = normalize_positive(stride, nd, "stride", fn)
    dilation_t = normalize_positive(dilation, nd, "dilation", fn)
    groups = normalize_groups(groups, fn)
    if any(k == 0 for k in kernel):
        raise ValueError(f"{fn}: weight of shape {tuple(w_shape)} has a kernel dimension of size 0")
    if weight_in != in_channels:
        raise ValueError(
            f"{fn}: weight of shape {tuple(w_shape)} (in_channels, out_channels/groups, *kernel) "
            f"expects input with {weight_in} channels, but got input of shape {tuple(x_shape)} "
            f"with {in_channels} channels"
        )
    if in_channels % groups:
        raise ValueError(
            f"{fn}: groups={groups} must divide in_channels={in_channels} "
            f"(weight of shape {tuple(w_shape)})"
        )
    out_channels = out_per_group * groups
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise ValueError(
            f"{fn}: expected bias to be 1-dimensional with {out_channels} elements "
            f"(weight of shape {tuple(w_shape)}, groups={groups}), but got bias of shape "
            f"{tuple(bias_shape)}"
        )
    if any(n == 0 for n in spatial):
        raise ValueError(
            f"{fn}: input spatial dims must be > 0, got input of shape {tuple(x_shape)}; only "
            f"a zero batch or zero channels are supported"
        )
    if isinstance(padding, str) and padding != "valid":
        raise ValueError(
            f"{fn}: padding must be 'valid', an int, a tuple of ints or a tuple of (before, "
            f"after) pairs, got {padding!r} ('same' is not defined for a transposed convolution)"
        )
    pad_widths = normalize_padding(padding, spatial, kernel, stride_t, dilation_t, fn)
    output_padding_t = normalize_tuple(output_padding, nd, "output_padding", fn)
    for axis, (op, s, d) in enumerate(zip(output_padding_t, stride_t, dilation_t)):
        # PyTorch's rule: extra rows beyond what striding or dilation could have dropped
        # would not be rows of any forward input.
        if op < 0 or op >= max(s, d):
            raise ValueError(
                f"{fn}: output_padding must be >= 0 and smaller than either stride or "
                f"dilation, i.e. in [0, {max(s, d)}) on spatial axis {axis}, got "
                f"output_padding={output_padding_t} for stride={stride_t}, dilation={dilation_t}"
            )
    out_shape = tuple(
        map(transpose_output_size, spatial, kernel, stride_t, dilation_t,
            [lo for lo, _ in pad_widths], [hi for _, hi in pad_widths], output_padding_t)
    )
    if any(n <= 0 for n in out_shape):
        raise ValueError(
            f"{fn}: output size {out_shape} is not positive: (in - 1) * stride - pad_before - "
            f"pad_after + dilation * (kernel - 1) + 1 + output_padding with input of shape "
            f"{tuple(x_shape)}, weight of shape {tuple(w_shape)}, padding {pad_widths}; use "
            f"less padding"
        )
    check_element_count((batch, out_channels, *out_shape), "output", fn)
    spec = ConvSpec(
        batch=batch,
        in_channels=out_channels,
        out_channels=in_channels,
        groups=groups,
        input_shape=out_shape,
        kernel_shape=tuple(kernel),
        stride=stride_t,
        dilation=dilation_t,
        pad_widths=pad_widths,
        dtype=_dtype_name(dtype),
    )
    return spec, batched
