"""Winograd's weight-gradient form against torch.autograd.

``conv_grad`` computes the weight gradient of a stride-1 3x3 layer as a correlation
with a 3x3 output whose kernel is the output gradient (``_grad.weight_gradient_spec``);
Winograd serves it with F(2, 3) / F(4, 3) transforms over the kernel's tiles
(``algorithms/winograd.py``, ``is_weight_gradient_form``). The oracle is torch's
float64 autograd, never another trueconv path.
"""

from __future__ import annotations

import numpy as np
import pytest
from references import assert_close_scaled, fingerprint

import trueconv
from trueconv import _planner
from trueconv._grad import weight_gradient_spec
from trueconv._spec import ConvSpec
from trueconv._threads import get_num_threads, set_num_threads
from trueconv.algorithms import winograd as winograd_module

torch = pytest.importorskip("torch")
F = torch.nn.functional

WINOGRAD = winograd_module.Winograd()


def torch_weight_grad(g, x, w, padding, groups=1, kind="correlation"):
    """dL/dw of ``conv2d(pad(x), w)`` (kernel flipped for kind='convolution'), float64 autograd.

    ``padding`` is an int or ((top, bottom), (left, right)).
    """
    xt = torch.tensor(x, dtype=torch.float64)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    pairs = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    xt = F.pad(xt, [pairs[1][0], pairs[1][1], pairs[0][0], pairs[0][1]])
    ww = torch.flip(wt, dims=[2, 3]) if kind == "convolution" else wt
    y = F.conv2d(xt, ww, groups=groups)
    (gw,) = torch.autograd.grad(y, (wt,), torch.tensor(g, dtype=torch.float64))
    return gw.numpy()


def problem(seed, batch, channels, out_channels, shape, padding, groups=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, *shape)).astype(dtype)
    w = rng.standard_normal((out_channels, channels // groups, 3, 3)).astype(dtype)
    pairs = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    out = tuple(s + lo + hi - 2 for s, (lo, hi) in zip(shape, pairs))
    g = rng.standard_normal((batch, out_channels, *out)).astype(dtype)
    return g, x, w


@pytest.fixture
def weight_form_calls(monkeypatch):
    """Count the runs of the weight-gradient path (to know the cases really exercise it)."""
    calls = []
    original = winograd_module.Winograd._run_weight_form

    def counted(self, x, weight, spec, tile):
        calls.append(spec)
        return original(self, x, weight, spec, tile)

    monkeypatch.setattr(winograd_module.Winograd, "_run_weight_form", counted)
    return calls


# batch, channels, out_channels, shape, padding, groups, kind
CASES = [
    (1, 3, 5, (8, 8), 1, 1, "correlation"),
    (3, 5, 7, (9, 11), 1, 1, "convolution"),
    (3, 7, 3, (10, 7), 0, 1, "correlation"),
    (1, 4, 6, (7, 6), 2, 1, "correlation"),
    (3, 5, 7, (11, 10), ((1, 0), (0, 2)), 1, "convolution"),
    (3, 6, 4, (9, 8), 1, 2, "correlation"),
    (1, 4, 6, (6, 9), 2, 2, "convolution"),
    (3, 5, 5, (5, 5), ((0, 2), (2, 0)), 1, "correlation"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"b{c[0]}c{c[1]}o{c[2]}{c[3]}p{c[4]}g{c[5]}{c[6][:4]}")
def test_weight_gradient_vs_torch(case, dtype, weight_form_calls):
    batch, channels, out_channels, shape, padding, groups, kind = case
    g, x, w = problem(1, batch, channels, out_channels, shape, padding, groups, dtype)
    expected = torch_weight_grad(g.astype(np.float64), x.astype(np.float64),
                                 w.astype(np.float64), padding, groups, kind)
    before = fingerprint(g, x, w)
    _, gw, _ = trueconv.conv_grad(g, x, w, padding=padding, groups=groups, kind=kind,
                                  needs=("weight",), algorithm="winograd")
    assert fingerprint(g, x, w) == before, "conv_grad mutated an input"
    assert len(weight_form_calls) == 1
    assert_close_scaled(gw, expected, dtype)
    _, gw_auto, _ = trueconv.conv_grad(g, x, w, padding=padding, groups=groups, kind=kind,
                                       needs=("weight",))
    assert_close_scaled(gw_auto, expected, dtype)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_named_paddings(padding, weight_form_calls):
    g, x, w = problem(2, 2, 3, 4, (9, 10), 1 if padding == "same" else 0)
    pad = 1 if padding == "same" else 0
    expected = torch_weight_grad(g, x, w, pad)
    _, gw, _ = trueconv.conv_grad(g, x, w, padding=padding, needs=("weight",),
                                  algorithm="winograd")
    assert weight_form_calls
    assert_close_scaled(gw, expected, np.float64)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_both_tiles_many_blocks_and_threads(tile, dtype, monkeypatch):
    """Both tile sizes; blocks cut into single images, tile rows and pieces of rows, summed
    over threads (tiny blocks forced through the module's block-size constants)."""
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd_module, "WG_MIN_BLOCK_TILES", 3)
    monkeypatch.setattr(winograd_module, "MIN_SPLIT_TILES", 3)
    g, x, w = problem(3, 3, 4, 6, (13, 18), ((2, 1), (1, 0)), groups=2, dtype=dtype)
    expected = torch_weight_grad(g.astype(np.float64), x.astype(np.float64),
                                 w.astype(np.float64), ((2, 1), (1, 0)), groups=2)
    forward = ConvSpec(3, 4, 6, 2, (13, 18), (3, 3), (1, 1), (1, 1), ((2, 1), (1, 0)),
                       np.dtype(dtype).name)
    spec = weight_gradient_spec(forward, g.shape[2:])
    assert winograd_module.is_weight_gradient_form(spec)
    x_t = x.reshape(3, 2, 2, 13, 18).transpose(2, 1, 0, 3, 4).reshape(2, 6, 13, 18)
    g_t = g.reshape(3, 2, 3, *g.shape[2:]).transpose(1, 2, 0, 3, 4).reshape(6, 3, *g.shape[2:])
    threads = get_num_threads()
    set_num_threads(2)
    try:
        target, workers = WINOGRAD._weight_form_plan(spec, tile)
        grid = winograd_module.tile_grid(spec.kernel_shape, tile)
        blocks = winograd_module.tile_blocks((3, 1, *grid), target)
        assert len(blocks) > 2 * workers  # accumulating blocks, in more than one worker
        out = WINOGRAD.run(x_t, g_t, spec, tile=tile)
    finally:
        set_num_threads(threads)
    assert_close_scaled(out.swapaxes(0, 1), expected, dtype)


def test_memory_chunked_run(weight_form_calls):
    """A memory limit that makes the engine split the form's batch (the layer's channels)."""
    g, x, w = problem(4, 3, 5, 4, (12, 12), 1)
    expected = torch_weight_grad(g, x, w, 1)
    forward = ConvSpec(3, 5, 4, 1, (12, 12), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)),
                       "float64")
    spec = weight_gradient_spec(forward, g.shape[2:])
    output = int(np.prod(spec.full_output_shape)) * spec.itemsize
    limit = output + 2 * WINOGRAD.workspace_bytes(spec.with_batch(1)) + 8
    with trueconv.memory_limit(limit):
        plan = _planner.choose(spec, "winograd")
        assert 1 <= plan.batch_chunk < spec.batch
        _, gw, _ = trueconv.conv_grad(g, x, w, padding=1, needs=("weight",),
                                      algorithm="winograd")
    assert len(weight_form_calls) >= 2
    assert_close_scaled(gw, expected, np.float64)


def test_workspace_grows_with_ragged_copy():
    whole = ConvSpec(4, 2, 8, 1, (10, 10), (8, 8), (1, 1), (1, 1), ((0, 0),) * 2, "float32")
    ragged = ConvSpec(4, 2, 8, 1, (11, 11), (9, 9), (1, 1), (1, 1), ((0, 0),) * 2, "float32")
    assert whole.output_shape == ragged.output_shape == (3, 3)
    assert 0 < WINOGRAD.workspace_bytes(whole) < WINOGRAD.workspace_bytes(ragged)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((10,), dict(padding=1), "needs 2 spatial dims, found 1"),
    ((5, 5, 5), dict(padding=1), "needs 2 spatial dims, found 3"),
    ((9, 9), dict(padding=1, stride=2), "needs dilation 1, found (2, 2)"),
    ((9, 9), dict(padding=1, dilation=2), "needs stride 1, found (2, 2)"),
])
def test_refusals_name_the_reason(shape, kwargs, message):
    nd = len(shape)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, *shape))
    w = rng.standard_normal((4, 3, *(3,) * nd))
    y = trueconv.conv(x, w, **kwargs)
    with pytest.raises(ValueError) as info:
        trueconv.conv_grad(np.ones_like(y), x, w, **kwargs, needs=("weight",),
                           algorithm="winograd")
    text = str(info.value)
    assert "algorithm='winograd' cannot serve this call" in text
    assert "weight-gradient form" in text and message in text


def test_kernel_not_3_without_3x3_output_is_refused():
    spec = ConvSpec(1, 2, 2, 1, (10, 10), (5, 5), (1, 1), (1, 1), ((0, 0),) * 2, "float32")
    reason = WINOGRAD.supports(spec)
    assert reason is not None and "kernel shape (5, 5) is not 3" in reason


def test_error_bound_and_tile_choice():
    forward = ConvSpec(8, 64, 64, 1, (56, 56), (3, 3), (1, 1), (1, 1), ((1, 1),) * 2, "float32")
    spec = weight_gradient_spec(forward, forward.output_shape)
    assert WINOGRAD.tile_size(spec) == 4
    assert WINOGRAD.error_bound(spec) < _planner.dtype_tolerance("float32")
    # a long enough reduction (batch x tiles) falls back to the more accurate F(2, 3)
    big = ConvSpec(64, 4096, 64, 1, (56, 56), (56, 56), (1, 1), (1, 1), ((1, 1),) * 2,
                   "float32")
    assert winograd_module.is_weight_gradient_form(big)
    assert WINOGRAD.tile_size(big) == 2
    # a tiny kernel tiles no better with 4-wide tiles
    tiny = ConvSpec(4, 2, 8, 1, (4, 4), (2, 2), (1, 1), (1, 1), ((0, 0),) * 2, "float32")
    assert WINOGRAD.tile_size(tiny) == 2


def test_auto_plans_winograd_on_the_benchmark_row():
    """The 3x3 64->64 @56 batch-8 backward row: the weight gradient goes to Winograd."""
    forward = ConvSpec(8, 64, 64, 1, (56, 56), (3, 3), (1, 1), (1, 1), ((1, 1),) * 2, "float32")
    spec = weight_gradient_spec(forward, forward.output_shape)
    assert _planner.choose(spec).algorithm == "winograd"
    assert _planner.cost_features(spec, "winograd")[1] < _planner.cost_features(spec, "im2col")[0]


@pytest.mark.parametrize("where", ["x", "grad_output"])
def test_non_finite_data_get_the_exact_weight_gradient(where, weight_form_calls):
    """auto runs the weight-gradient form and checks its kernel-sized output instead of the
    data: NaN/Inf in the data leave NaN/Inf there, and the gradient is then computed again by
    an exact algorithm, with NaN/Inf where float64 autograd has them (the transform would
    have spread them over whole tiles)."""
    g, x, w = problem(2, 2, 64, 64, (56, 56), 1, dtype=np.float32)
    trueconv.conv_grad(g, x, w, padding=1, needs=("weight",))
    assert len(weight_form_calls) == 1, "auto should take the weight form on this shape"
    if where == "x":
        x[1, 5, 10, 11] = np.nan
    else:
        g[0, 7, 4, 0] = np.inf
    with np.errstate(invalid="ignore"):  # Inf * 0 (the pads) in the exact products
        _, gw, _ = trueconv.conv_grad(g, x, w, padding=1, needs=("weight",))
    assert len(weight_form_calls) == 2  # the transform ran; its result was not kept
    with np.errstate(invalid="ignore"):
        expected = torch_weight_grad(g.astype(np.float64), x.astype(np.float64),
                                     w.astype(np.float64), 1)
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(expected))
    assert 0 < np.isfinite(expected).sum() < expected.size
    finite = np.isfinite(expected)
    assert_close_scaled(gw[finite], expected[finite], np.float32)
