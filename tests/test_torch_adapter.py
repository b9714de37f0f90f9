"""trueconv.torch: autograd Functions and nn layers, checked against torch.nn and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tct = pytest.importorskip("trueconv.torch")

TORCH_LAYERS = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
OUR_LAYERS = {1: tct.Conv1d, 2: tct.Conv2d, 3: tct.Conv3d}


def pair_of_layers(nd, dtype=torch.float64, **kwargs):
    """A torch.nn layer and a trueconv layer with the same weights."""
    reference = TORCH_LAYERS[nd](dtype=dtype, **kwargs)
    ours = OUR_LAYERS[nd](dtype=dtype, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


LAYER_CASES = [
    (1, dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect")),
    (1, dict(in_channels=4, out_channels=4, kernel_size=2, stride=2, groups=4, bias=False)),
    (2, dict(in_channels=3, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding="valid",
             dilation=(1, 2), groups=3)),
    (2, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same",
             padding_mode="circular")),
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, padding=(1, 2),
             padding_mode="replicate")),
    (3, dict(in_channels=2, out_channels=2, kernel_size=2, padding=1, stride=(1, 2, 1))),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nd, kwargs", LAYER_CASES)
def test_layer_forward_and_grads_match_torch_nn(nd, kwargs, dtype):
    torch.manual_seed(0)
    reference, ours = pair_of_layers(nd, dtype, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], *(6,) * nd, dtype=dtype)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = reference(x_ref), ours(x_ours)
    assert y_ours.dtype == dtype and y_ours.shape == y_ref.shape
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    pairs = [(y_ours.detach(), y_ref.detach()), (x_ours.grad, x_ref.grad),
             (ours.weight.grad, reference.weight.grad)]
    if reference.bias is not None:
        pairs.append((ours.bias.grad, reference.bias.grad))
    for got, want in pairs:
        assert got.dtype == dtype
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= rtol * scale


def test_true_convolution_layer_equals_torch_on_the_flipped_kernel():
    torch.manual_seed(1)
    reference, ours = pair_of_layers(2, in_channels=2, out_channels=3, kernel_size=(3, 2))
    ours.kind = "convolution"
    with torch.no_grad():
        reference.weight.copy_(ours.weight.flip(dims=(2, 3)))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd, kwargs", [
    (1, dict(stride=2, padding=((2, 1),), dilation=2, padding_mode="zeros", kind="convolution")),
    (2, dict(stride=(2, 1), padding=1, groups=2, padding_mode="reflect")),
    (2, dict(padding="same", padding_mode="circular", kind="convolution", algorithm="fft")),
    (3, dict(stride=2, padding=1, padding_mode="replicate")),
])
def test_gradcheck_on_layers(nd, kwargs):
    torch.manual_seed(2)
    layer = OUR_LAYERS[nd](2, 4, 3 if nd < 3 else 2, dtype=torch.float64, **kwargs)
    x = torch.randn(1, 2, *(5 if nd < 3 else 4,) * nd, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):  # the layer itself, as a function of its input and both parameters
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, layer.weight, layer.bias))


def test_gradgradcheck_double_backward():
    torch.manual_seed(3)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return tct.conv2d(x, w, b, stride=2, padding=1, groups=2, padding_mode="reflect")

    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_functional_forms_and_unbatched_input():
    torch.manual_seed(4)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)  # unbatched (C, L)
    w = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = tct.conv1d(x, w, padding=1)
    (gx,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    y2 = torch.nn.functional.conv1d(x2, w.detach(), padding=1)
    (gx2,) = torch.autograd.grad(y2.sum(), x2)
    torch.testing.assert_close(y.detach(), y2)
    torch.testing.assert_close(gx, gx2)
    assert tct.conv(x, w).shape == (2, 5)
    with pytest.raises(ValueError, match=r"trueconv.torch.conv2d: expected a 4-D weight"):
        tct.conv2d(x, w)


def test_integer_tensors_forward_exactly_without_grad():
    x = torch.arange(12).reshape(1, 1, 12)
    w = torch.tensor([[[1, -2, 3]]])
    y = tct.conv1d(x, w)
    assert y.dtype == torch.int64
    assert y.tolist() == torch.nn.functional.conv1d(x.double(), w.double()).long().tolist()


def test_module_matches_torch_init_and_state_dict():
    torch.manual_seed(5)
    reference = torch.nn.Conv2d(4, 6, 3, groups=2)
    torch.manual_seed(5)
    ours = tct.Conv2d(4, 6, 3, groups=2)
    torch.testing.assert_close(ours.weight, reference.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias, reference.bias, rtol=0, atol=0)
    bound = 1 / np.sqrt(2 * 9)  # kaiming_uniform(a=sqrt(5)) and the bias share 1/sqrt(fan_in)
    assert ours.weight.abs().max() <= bound and ours.bias.abs().max() <= bound
    assert set(ours.state_dict()) == {"weight", "bias"}
    assert tct.Conv1d(2, 2, 3, bias=False).bias is None
    assert repr(tct.Conv3d(1, 2, 3, padding=1, padding_mode="reflect", kind="convolution")) == (
        "Conv3d(1, 2, kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), "
        "padding_mode=reflect, kind=convolution)")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(device="meta"), ValueError, r"device must be the CPU .* got device='meta'"),
    (dict(dtype=torch.float16), TypeError, "dtype must be torch.float32 or torch.float64"),
    (dict(groups=3), ValueError, "in_channels=4 must be a non-negative multiple of groups=3"),
    (dict(padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (dict(padding="full"), ValueError, "padding must be 'valid', 'same'"),
    (dict(kind="flip"), ValueError, "kind must be one of"),
    (dict(algorithm="magic"), ValueError, "algorithm must be one of"),
    (dict(stride=0), ValueError, "stride must be positive"),
])
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        tct.Conv2d(4, 6, 3, **kwargs)


def test_tensor_errors_name_the_tensor():
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"trueconv.torch.conv2d: input is on device meta, but "
                                         r"trueconv.torch computes on the CPU"):
        tct.conv2d(torch.empty(1, 2, 5, 5, device="meta"), w)
    with pytest.raises(TypeError, match="input has dtype torch.float16; trueconv.torch supports "
                                        "float32 and float64"):
        tct.conv2d(torch.randn(1, 2, 5, 5).half(), w.half())
    with pytest.raises(TypeError, match="input, weight and bias must have the same dtype, got "
                                        "input torch.float32, weight torch.float64"):
        tct.conv2d(torch.randn(1, 2, 5, 5), w.double())
    # torch refuses requires_grad on integer tensors itself; mixing one in is refused here.
    with pytest.raises(TypeError, match="same dtype, got input torch.int64, weight torch.float32"):
        tct.conv2d(torch.ones(1, 2, 5, 5, dtype=torch.int64), w.clone().requires_grad_())
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        tct.conv2d(np.ones((1, 2, 5, 5)), w)
    with pytest.raises(ValueError, match=r"trueconv.torch.conv2d: given groups=1, weight of shape"):
        tct.conv2d(torch.randn(1, 3, 5, 5), w)


def test_explicit_algorithm_refusal_propagates_from_backward():
    from trueconv import ALGORITHMS
    from trueconv._grad import gradient_specs
    from trueconv._spec import normalize_conv

    # dilation 2: Winograd serves the forward (as phases) but not its weight gradient
    # (a 3x3 output from a stride-2 view of the input)
    forward, _, _ = normalize_conv((1, 1, 8, 8), (1, 1, 3, 3), None, 1, 0, 2, 1, "zeros",
                                   "correlation", "test", "float64")
    weight_spec = gradient_specs(forward)["weight"]
    refusing = [name for name, a in sorted(ALGORITHMS.items())
                if a.supports(forward) is None and a.supports(weight_spec) is not None]
    assert refusing == ["winograd"]
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    layer = tct.Conv2d(1, 1, 3, dilation=2, dtype=torch.float64, algorithm=refusing[0])
    y = layer(x)
    with pytest.raises(ValueError, match=rf"conv_grad \(grad_weight\): algorithm='{refusing[0]}'"
                                         r" cannot serve this call"):
        y.sum().backward()
    layer.algorithm = "direct"
    layer(x).sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == layer.weight.shape
