"""conv_transpose against torch.nn.functional.conv_transpose{1,2,3}d, and its identities."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from references import assert_close_scaled, fingerprint

import trueconv

torch = pytest.importorskip("torch")
F = torch.nn.functional
TORCH_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def torch_transpose(x, w, b, stride, padding, output_padding, groups, dilation, kind="correlation"):
    nd = w.ndim - 2
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))
    if kind == "convolution":
        wt = torch.flip(wt, dims=list(range(2, 2 + nd)))
    bt = None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float64))
    return TORCH_TRANSPOSE[nd](xt, wt, bt, stride, padding, output_padding, groups,
                               dilation).numpy()


def valid_cases():
    cases = []
    for nd, s, d, groups, pad, op, kind in itertools.product(
            (1, 2, 3), (1, 2, 3), (1, 2), (1, 2), (0, 1, 2), (0, 1, 2),
            ("correlation", "convolution")):
        if op < max(s, d):
            cases.append((nd, s, d, groups, pad, op, kind))
    return random.Random(4).sample(cases, 48)


@pytest.mark.parametrize("case", valid_cases(), ids=lambda c: "-".join(map(str, c)))
def test_matches_torch_conv_transpose(case, rng):
    nd, stride, dilation, groups, padding, output_padding, kind = case
    size = 4 if nd < 3 else 3
    x = rng.standard_normal((2, 2 * groups) + (size,) * nd)
    w = rng.standard_normal((2 * groups, 3) + (3,) * nd)
    b = rng.standard_normal(3 * groups)
    before = fingerprint(x, w, b)
    fn = (trueconv.conv_transpose1d, trueconv.conv_transpose2d, trueconv.conv_transpose3d)[nd - 1]
    ours = fn(x, w, b, stride, padding, output_padding, groups, dilation, kind=kind)
    assert fingerprint(x, w, b) == before
    want = torch_transpose(x, w, b, stride, padding, output_padding, groups, dilation, kind)
    assert_close_scaled(ours, want, np.float64)
    generic = trueconv.conv_transpose(x, w, b, stride, padding, output_padding, groups, dilation,
                                      kind=kind)
    np.testing.assert_array_equal(generic, ours)


def test_per_axis_parameters_float32_and_unbatched(rng):
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)  # unbatched (C_in, H, W)
    w = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
    params = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2))
    ours = trueconv.conv_transpose2d(x, w, **params)
    assert ours.dtype == np.float32
    want = torch_transpose(x[None], w, None, params["stride"], params["padding"],
                           params["output_padding"], 1, params["dilation"])[0]
    assert_close_scaled(ours, want, np.float32)


def test_asymmetric_pairs_crop_like_the_forward_padding(rng):
    # (before, after) pairs: torch has no such form; crop the unpadded transpose instead.
    x = rng.standard_normal((1, 2, 5))
    w = rng.standard_normal((2, 3, 3))
    full = torch_transpose(x, w, None, 2, 0, 0, 1, 1)
    ours = trueconv.conv_transpose1d(x, w, stride=2, padding=((2, 1),))
    assert_close_scaled(ours, full[..., 2:-1], np.float64)


@pytest.mark.parametrize("stride, padding, output_padding, dilation",
                         [(2, 1, 1, 1), (3, 2, 2, 1), (1, 0, 0, 2), (2, (1, 0), (0, 1), (2, 1))])
def test_is_the_input_gradient_of_conv(stride, padding, output_padding, dilation, rng):
    # JAX testConvTranspose2DT: conv_transpose(g, w) == d<conv(x, w), g>/dx for x of the
    # transpose's output shape; the gradient comes from torch autograd.
    g = rng.standard_normal((2, 4, 3, 4))
    w = rng.standard_normal((4, 3, 2, 3))  # conv weight (O=4, C=3, kh, kw) = transpose's layout
    ours = trueconv.conv_transpose2d(g, w, stride=stride, padding=padding,
                                     output_padding=output_padding, dilation=dilation)
    xt = torch.zeros((2, 3, *ours.shape[2:]), dtype=torch.float64, requires_grad=True)
    y = F.conv2d(xt, torch.from_numpy(w), None, stride, padding, dilation)
    assert tuple(y.shape) == g.shape
    (grad_input,) = torch.autograd.grad(y, xt, torch.from_numpy(g))
    assert_close_scaled(ours, grad_input.numpy(), np.float64)


def test_convolution_kind_is_the_adjoint_of_true_convolution(rng):
    x = rng.standard_normal((2, 3, 8, 7))
    w = rng.standard_normal((4, 3, 3, 2))
    y = trueconv.conv(x, w, stride=2, padding=1, kind="convolution")
    g = rng.standard_normal(y.shape)
    back = trueconv.conv_transpose(g, w, stride=2, padding=1, output_padding=(1, 1),
                                   kind="convolution")
    assert back.shape == x.shape
    assert abs(np.vdot(y, g) - np.vdot(x, back)) <= 1e-12 * np.abs(y).ravel() @ np.abs(g).ravel()


def test_groups_depthwise_and_zero_batch(rng):
    x = rng.standard_normal((0, 4, 5, 5))
    w = rng.standard_normal((4, 2, 3, 3))
    out = trueconv.conv_transpose2d(x, w, np.ones(8), stride=2, groups=4)
    assert out.shape == (0, 8, 11, 11) and out.dtype == np.float64
    x = rng.standard_normal((2, 4, 5, 5))
    ours = trueconv.conv_transpose2d(x, w, stride=2, groups=4)
    assert_close_scaled(ours, torch_transpose(x, w, None, 2, 0, 0, 4, 1), np.float64)


def test_integer_transpose_is_exact(rng):
    x = rng.integers(-9, 10, (1, 2, 4, 4))
    w = rng.integers(-9, 10, (2, 3, 3, 3))
    ours = trueconv.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert ours.dtype == np.int64
    want = torch_transpose(x, w, None, 2, 1, 1, 1, 1)
    np.testing.assert_array_equal(ours, np.rint(want).astype(np.int64))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(stride=2, output_padding=2), ValueError,
     r"conv_transpose: output_padding must be >= 0 and smaller than either stride or dilation, "
     r"i.e. in \[0, 2\) on spatial axis 0, got output_padding=\(2, 2\)"),
    (dict(stride=1, dilation=3, output_padding=(0, 3)), ValueError, r"in \[0, 3\) on spatial axis 1"),
    (dict(output_padding=-1), ValueError, "output_padding must be >= 0"),
    (dict(padding="same"), ValueError, "'same' is not defined for a transposed convolution"),
    (dict(padding=3), ValueError, r"output size \(-1, -1\) is not positive"),
    (dict(groups=3), ValueError, "groups=3 must divide in_channels=4"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(output_padding=1.5), TypeError, "output_padding must be an integer"),
    (dict(bias=np.ones(3)), ValueError, "expected bias to be 1-dimensional with 2 elements"),
    (dict(kind="flip"), ValueError, "kind must be one of"),
    (dict(algorithm="magic"), ValueError, "algorithm must be one of"),
])
def test_errors_are_clear(kwargs, error, message):
    x = np.ones((1, 4, 3, 3))
    w = np.ones((4, 2, 3, 3))
    with pytest.raises(error, match=message):
        trueconv.conv_transpose(x, w, **kwargs)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"weight of shape \(3, 2, 3, 3\) .* expects input with 3 "
                                         r"channels, but got input of shape \(1, 4, 3, 3\)"):
        trueconv.conv_transpose(np.ones((1, 4, 3, 3)), np.ones((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv_transpose1d: expected a 3-D weight"):
        trueconv.conv_transpose1d(np.ones((1, 4, 3, 3)), np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="expected 3-D .* or 4-D"):
        trueconv.conv_transpose(np.ones((4, 3)), np.ones((4, 2, 3, 3)))
