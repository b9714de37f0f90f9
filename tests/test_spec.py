"""The shape laws and normalizers of trueconv._spec, against hand-computed values
and against what torch and SciPy actually return."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import scipy.signal as ss

from references import torch_conv
from trueconv import _spec
from trueconv._spec import (
    ConvSpec,
    conv_output_size,
    effective_kernel_size,
    normalize_axes,
    normalize_conv,
    normalize_padding,
    normalize_tuple,
    same_pad_widths,
    signal_pad_widths,
    transpose_output_size,
)


def test_effective_kernel_and_output_size_by_hand() -> None:
    assert effective_kernel_size(3, 1) == 3
    assert effective_kernel_size(3, 2) == 5
    assert effective_kernel_size(1, 7) == 1
    assert conv_output_size(28 + 2, 3, 2, 1) == 14
    assert conv_output_size(28, 3, 2, 1) == 13
    assert conv_output_size(10, 3, 3, 2) == 2   # eff 5: (10 - 5) // 3 + 1
    assert conv_output_size(5, 5, 1, 1) == 1


@pytest.mark.parametrize("size,kernel,stride,dilation,pad",
                         list(itertools.product([5, 8], [1, 2, 3], [1, 2, 3], [1, 2],
                                                [0, 1]))[::3])
def test_output_size_equals_torch(size, kernel, stride, dilation, pad) -> None:
    if effective_kernel_size(kernel, dilation) > size + 2 * pad:
        return
    out = torch_conv(np.zeros((1, 1, size)), np.zeros((1, 1, kernel)), None, stride, pad, dilation)
    assert out.shape[-1] == conv_output_size(size + 2 * pad, kernel, stride, dilation)


@pytest.mark.parametrize("size,kernel,stride,dilation,pad,output_padding",
                         [(4, 3, 2, 1, 1, 1), (5, 3, 1, 2, 0, 0), (3, 2, 3, 1, 0, 2),
                          (6, 4, 2, 1, 1, 0)])
def test_transpose_output_size_equals_torch(size, kernel, stride, dilation, pad,
                                            output_padding) -> None:
    import torch

    out = torch.nn.functional.conv_transpose1d(
        torch.zeros(1, 1, size), torch.zeros(1, 1, kernel), None, stride, pad, output_padding,
        1, dilation)
    assert out.shape[-1] == transpose_output_size(size, kernel, stride, dilation, pad, pad,
                                                  output_padding)
    # and it inverts the forward law
    assert conv_output_size(out.shape[-1] + 2 * pad, kernel, stride, dilation) == size


@pytest.mark.parametrize(
    "size,kernel,stride,dilation,expected",
    [(5, 3, 1, 1, (1, 1)), (5, 4, 1, 1, (1, 2)), (5, 2, 1, 1, (0, 1)), (5, 3, 1, 2, (2, 2)),
     (6, 4, 1, 3, (4, 5)), (7, 3, 2, 1, (1, 1)), (8, 3, 2, 1, (0, 1)), (1, 3, 5, 1, (1, 1)),
     (9, 1, 4, 1, (0, 0)), (10, 5, 3, 1, (2, 2)), (11, 4, 3, 1, (1, 1)), (13, 4, 5, 1, (0, 1))],
)
def test_same_pad_widths_by_hand(size, kernel, stride, dilation, expected) -> None:
    """torch's rule at stride 1 (extra after), TensorFlow's ceil(in / stride) above."""
    assert same_pad_widths(size, kernel, stride, dilation) == expected
    lo, hi = expected
    assert conv_output_size(size + lo + hi, kernel, stride, dilation) == -(-size // stride)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_signal_pad_widths_reproduce_scipy_centring(kernel, mode) -> None:
    a = np.arange(1.0, 8.0)
    b = np.arange(1.0, kernel + 1.0)
    lo, hi = signal_pad_widths(kernel, mode)
    padded = np.pad(a, (lo, hi))
    # correlation with the flipped kernel over the padded input, by hand
    manual = np.array([padded[i:i + kernel] @ b[::-1] for i in range(len(padded) - kernel + 1)])
    np.testing.assert_allclose(manual, ss.convolve(a, b, mode, method="direct"))
    lo2, hi2 = signal_pad_widths(kernel, mode, mirrored=True)
    padded = np.pad(a, (lo2, hi2))
    manual = np.array([padded[i:i + kernel] @ b for i in range(len(padded) - kernel + 1)])
    np.testing.assert_allclose(manual, ss.correlate2d(a[None], b[None], mode)[0])


def test_normalize_conv_spec_fields() -> None:
    spec, mode_pads, batched = normalize_conv(
        (2, 6, 9, 8), (4, 3, 3, 2), (4,), (2, 1), ((1, 2), (0, 1)), 1, 2, "zeros",
        "convolution", "conv", "float32")
    assert batched is True and mode_pads == ((0, 0), (0, 0))
    assert spec == ConvSpec(batch=2, in_channels=6, out_channels=4, groups=2, input_shape=(9, 8),
                            kernel_shape=(3, 2), stride=(2, 1), dilation=(1, 1),
                            pad_widths=((1, 2), (0, 1)), dtype="float32")
    assert spec.output_shape == (5, 8)
    assert spec.full_output_shape == (2, 4, 5, 8)
    assert spec.in_channels_per_group == 3 and spec.out_channels_per_group == 2
    assert spec.macs == 2 * 4 * 5 * 8 * 3 * 6
    hash(spec)  # keys the plan cache
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch = 3  # type: ignore[misc]


def test_normalize_conv_padding_mode_moves_pads_to_prepass() -> None:
    spec, mode_pads, batched = normalize_conv((3, 5), (2, 3, 3), None, 1, "same", 1, 1,
                                              "reflect", "correlation", "conv")
    assert batched is False and spec.batch == 1
    assert mode_pads == ((1, 1),)
    assert spec.pad_widths == ((0, 0),) and spec.input_shape == (7,)
    assert spec.output_shape == (5,)


def test_normalize_padding_forms() -> None:
    args = ((7, 7), (3, 2), (1, 1), (1, 1), "f")
    assert normalize_padding(1, *args) == ((1, 1), (1, 1))
    assert normalize_padding((1, 2), *args) == ((1, 1), (2, 2))
    assert normalize_padding(((0, 1), (2, 3)), *args) == ((0, 1), (2, 3))
    assert normalize_padding([[0, 1], [2, 3]], *args) == ((0, 1), (2, 3))
    assert normalize_padding("valid", *args) == ((0, 0), (0, 0))
    assert normalize_padding("same", *args) == ((1, 1), (0, 1))
    assert normalize_padding(np.int64(2), *args) == ((2, 2), (2, 2))
    assert normalize_padding((np.int32(1),), *args) == ((1, 1), (1, 1))


def test_normalize_tuple_accepts_numpy_integers_and_refuses_the_rest() -> None:
    assert normalize_tuple(np.int8(2), 3, "stride", "f") == (2, 2, 2)
    assert normalize_tuple(np.array([1, 2]), 2, "stride", "f") == (1, 2)
    with pytest.raises(TypeError, match=r"f: stride must be an integer, got bool"):
        normalize_tuple((1, False), 2, "stride", "f")
    with pytest.raises(ValueError, match=r"f: stride must have length 3 \(or be an int\), got 2"):
        normalize_tuple((1, 2), 3, "stride", "f")


def test_normalize_axes() -> None:
    assert normalize_axes(None, 3, "f") == (0, 1, 2)
    assert normalize_axes(-1, 3, "f") == (2,)
    assert normalize_axes([2, 0], 3, "f") == (0, 2)
    assert normalize_axes(np.int64(1), 3, "f") == (1,)


def test_every_spec_message_names_its_function() -> None:
    """Messages are written once, with the caller's name first (anti-pattern 2)."""
    checks = [
        lambda: _spec.normalize_choice("x", ("a", "b"), "kind", "myfn"),
        lambda: _spec.normalize_signal_mode("x", "myfn"),
        lambda: _spec.normalize_signal_method("x", "myfn"),
        lambda: _spec.normalize_boundary("x", "myfn"),
        lambda: _spec.check_signal_shapes((1,), (1, 1), "myfn"),
        lambda: _spec.valid_swap_needed((2, 3), (3, 2), "myfn"),
        lambda: _spec.normalize_groups(0, "myfn"),
        lambda: _spec.check_element_count((2**40, 2**40), "output", "myfn"),
    ]
    for check in checks:
        with pytest.raises(ValueError, match=r"^myfn"):
            check()


def test_memoized_normalization_never_confuses_equal_values_of_other_types():
    # stride=True == 1 and 1.0 == 1 in Python: a cache keyed on values alone would accept them
    import trueconv
    from trueconv import _api

    x = np.ones((1, 2, 6, 6))
    w = np.ones((2, 2, 3, 3))
    first = trueconv.conv2d(x, w, stride=1, padding=(1, 1))
    assert np.array_equal(trueconv.conv2d(x, w, stride=1, padding=(1, 1)), first)
    assert _api._normalize_conv_cached.cache_info().hits >= 1
    for bad in (True, (1, True), 1.0, (1.0, 1)):
        with pytest.raises(TypeError, match="stride must be an integer"):
            trueconv.conv2d(x, w, stride=bad, padding=(1, 1))
    with pytest.raises(TypeError, match="padding"):
        trueconv.conv2d(x, w, stride=1, padding=(True, 1))
    # unhashable arguments are validated afresh, with the same result
    assert np.array_equal(trueconv.conv2d(x, w, stride=[1, 1], padding=[1, 1]), first)
