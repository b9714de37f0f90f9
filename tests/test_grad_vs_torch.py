"""conv_grad against torch.autograd: every padding form and mode, both kinds, every algorithm.

The oracle is torch (float64/complex128 autograd through F.pad + F.conv*d), never
another trueconv path. Shapes are small and the parameter product is sampled
deterministically (JAX ``sample_product``) to keep the suite fast.
"""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import assert_close_scaled, fingerprint, torch_conv

import trueconv
from trueconv import ALGORITHMS
from trueconv._grad import gradient_specs
from trueconv.algorithms import im2col as im2col_module
from trueconv._spec import normalize_conv

torch = pytest.importorskip("torch")
F = torch.nn.functional


# --------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------
def pad_pairs_oracle(padding, spatial, kernel, stride, dilation):
    """(before, after) per axis, derived independently of trueconv._spec.

    'same' follows TensorFlow's SAME rule (``out = ceil(in / stride)``, the odd
    pad after), which for stride 1 is also torch's padding='same'.
    """
    nd = len(kernel)
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        pairs = []
        for n, k, s, d in zip(spatial, kernel, stride, dilation):
            out = -(-n // s)
            total = max(0, (out - 1) * s + d * (k - 1) + 1 - n)
            pairs.append((total // 2, total - total // 2))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    if all(isinstance(p, int) for p in padding):
        return [(p, p) for p in padding]
    return [tuple(p) for p in padding]


def torch_grads(g, x, w, b, stride=1, padding=0, dilation=1, groups=1,
                padding_mode="zeros", kind="correlation"):
    """(y, grad_input, grad_weight, grad_bias) from torch.autograd in float64/complex128."""
    nd = w.ndim - 2
    batched = x.ndim == nd + 2
    tdtype = torch.complex128 if np.iscomplexobj(x) or np.iscomplexobj(w) else torch.float64
    xt = torch.tensor(np.ascontiguousarray(x), dtype=tdtype, requires_grad=True)
    wt = torch.tensor(np.ascontiguousarray(w), dtype=tdtype, requires_grad=True)
    bt = torch.tensor(np.ascontiguousarray(b), dtype=tdtype, requires_grad=True)
    stride_t = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    dilation_t = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    spatial = x.shape[-nd:]
    pairs = pad_pairs_oracle(padding, spatial, w.shape[2:], stride_t, dilation_t)
    xx = xt if batched else xt[None]
    flat = [v for pair in reversed(pairs) for v in pair]  # F.pad: last axis first
    if any(flat):
        mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                "circular": "circular"}[padding_mode]
        xx = F.pad(xx, flat, mode=mode)
    ww = torch.flip(wt, dims=list(range(2, 2 + nd))) if kind == "convolution" else wt
    y = (F.conv1d, F.conv2d, F.conv3d)[nd - 1](xx, ww, bt, stride_t, 0, dilation_t, groups)
    y = y if batched else y[0]
    grads = torch.autograd.grad(y, (xt, wt, bt), torch.tensor(np.ascontiguousarray(g), dtype=tdtype))
    return (y.detach().numpy(), *(t.numpy() for t in grads))


def make_problem(rng, nd, batch, channels, out_channels, groups, size, kernel, dtype=np.float64,
                 batched=True):
    x_shape = ((batch,) if batched else ()) + (channels,) + (size,) * nd
    w_shape = (out_channels, channels // groups) + (kernel,) * nd
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)
    return x, w, b


def check_against_torch(x, w, b, params, dtype, algorithm="auto"):
    y = trueconv.conv(x, w, b, **params, algorithm=algorithm)
    g = np.random.default_rng(7).standard_normal(y.shape).astype(y.dtype)
    before = fingerprint(g, x, w)
    gx, gw, gb = trueconv.conv_grad(g, x, w, **params, algorithm=algorithm)
    assert fingerprint(g, x, w) == before, "conv_grad mutated an input"
    _, tgx, tgw, tgb = torch_grads(g, x, w, b, **params)
    assert_close_scaled(gx, tgx, dtype)
    assert_close_scaled(gw, tgw, dtype)
    assert_close_scaled(gb, tgb, dtype)


# --------------------------------------------------------------------------
# A deterministic sample of the parameter product
# --------------------------------------------------------------------------
PADDINGS = (0, 1, "valid", "same", "pairs")
PRODUCT = list(itertools.product(
    (1, 2, 3),                                   # nd
    (1, 2, 3),                                   # stride
    (1, 2),                                      # dilation
    ("dense", "grouped", "depthwise"),           # groups
    PADDINGS,                                    # padding form
    ("zeros", "reflect", "replicate", "circular"),
    ("correlation", "convolution"),
    (np.float64, np.float32),
    (True, False),                               # batched
))
SAMPLE = random.Random(20261122).sample(PRODUCT, 72)


def case_id(case):
    nd, s, d, grp, pad, mode, kind, dtype, batched = case
    return (f"{nd}d-s{s}-d{d}-{grp}-pad{pad}-{mode}-{kind[:4]}-{np.dtype(dtype).name}"
            f"{'' if batched else '-unbatched'}")


def build_case(case):
    nd, stride, dilation, grp, pad, mode, kind, dtype, batched = case
    rng = np.random.default_rng(abs(hash(case_id(case))) % 2**32)
    channels, out_channels, groups = {"dense": (3, 4, 1), "grouped": (4, 6, 2),
                                      "depthwise": (4, 8, 4)}[grp]
    size, kernel = ((7, 3) if nd < 3 else (5, 2))
    if pad == "pairs":
        pad = ((2, 0), (0, 1), (1, 2))[:nd]
    x, w, b = make_problem(rng, nd, 2, channels, out_channels, groups, size, kernel, dtype, batched)
    params = dict(stride=stride, padding=pad, dilation=dilation, groups=groups,
                  padding_mode=mode, kind=kind)
    return x, w, b, params


@pytest.mark.parametrize("case", SAMPLE, ids=case_id)
def test_grads_match_torch_autograd(case):
    x, w, b, params = build_case(case)
    check_against_torch(x, w, b, params, x.dtype)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_same_padding_strided_even_kernel(nd, rng):
    # TF's SAME rule for stride > 1 with an even kernel: asymmetric pads, extra after.
    x, w, b = make_problem(rng, nd, 2, 2, 3, 1, 6 if nd < 3 else 5, 2)
    check_against_torch(x, w, b, dict(stride=2, padding="same"), np.float64)


def test_uncovered_tail_gets_zero_gradient(rng):
    # stride 3 over 9 samples with k=2: the last input sample never meets the kernel (#9).
    x, w, b = make_problem(rng, 1, 2, 2, 2, 1, 9, 2)
    check_against_torch(x, w, b, dict(stride=3), np.float64)
    # exactly zero with an exact algorithm (a transform one is accurate normwise only)
    gx, _, _ = trueconv.conv_grad(np.ones((2, 2, 3)), x, w, stride=3, needs=("input",),
                                  algorithm="direct")
    assert gx.shape == x.shape and not gx[..., -1].any() and gx[..., -2].all()


def test_padding_wider_than_the_stride_reach(rng):
    # Large pads and a huge stride: the only output sees padding; gradients are zero.
    x, w, b = make_problem(rng, 1, 1, 1, 1, 1, 1, 1)
    check_against_torch(x, w, b, dict(stride=20, padding=((10, 0),)), np.float64)
    check_against_torch(x, w, b, dict(stride=4, padding=((3, 6),)), np.float64)


def test_complex_follows_torch_conjugate_convention(rng):
    x = rng.standard_normal((2, 2, 6, 5)) + 1j * rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((3, 2, 3, 2)) + 1j * rng.standard_normal((3, 2, 3, 2))
    b = np.zeros(3, dtype=complex)
    check_against_torch(x, w, b, dict(stride=2, padding=1), np.complex128)


def test_float16_grads_have_the_forward_dtype(rng):
    x, w, _ = make_problem(rng, 2, 2, 2, 3, 1, 5, 3, np.float16)
    g = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    gx, gw, gb = trueconv.conv_grad(g, x, w, padding=1)
    _, tgx, tgw, tgb = torch_grads(g, x.astype(np.float64), w.astype(np.float64),
                                   np.zeros(3), padding=1)
    for ours, ref in ((gx, tgx), (gw, tgw), (gb, tgb)):
        assert_close_scaled(ours, ref.astype(np.float16), np.float16)


def test_integer_grads_are_exact(rng):
    x = rng.integers(-5, 6, (2, 2, 6, 6))
    w = rng.integers(-5, 6, (4, 1, 3, 3))
    g = rng.integers(-5, 6, (2, 4, 3, 3))
    gx, gw, gb = trueconv.conv_grad(g, x, w, stride=2, padding=1, groups=2)
    _, tgx, tgw, tgb = torch_grads(g, x, w, np.zeros(4), stride=2, padding=1, groups=2)
    for ours, ref in ((gx, tgx), (gw, tgw), (gb, tgb)):
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, np.rint(ref).astype(np.int64))


def test_needs_selects_gradients(rng):
    x, w, _ = make_problem(rng, 1, 1, 2, 2, 1, 5, 3)
    g = np.ones((1, 2, 3))
    gx, gw, gb = trueconv.conv_grad(g, x, w, needs=("weight",))
    assert gx is None and gb is None and gw.shape == w.shape
    gx, gw, gb = trueconv.conv_grad(g, x, w, needs="bias")
    assert gx is None and gw is None and gb.shape == (2,)
    assert trueconv.conv_grad(g, x, w, needs=()) == (None, None, None)


def test_noncontiguous_operands_give_the_same_grads(rng):
    x = rng.standard_normal((2, 3, 12, 9))[:, :, ::2, ::-1]  # strided and reversed views (#58, #63)
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 2)))
    g = rng.standard_normal((2, 4, 20, 3)).transpose(0, 1, 3, 2)[..., ::2]
    assert g.shape == (2, 4, 3, 10)
    params = dict(padding=1, stride=(2, 1), padding_mode="reflect")
    before = fingerprint(x, w, g)
    got = trueconv.conv_grad(g, x, w, **params)
    assert fingerprint(x, w, g) == before
    _, *want = torch_grads(g, x, w, np.zeros(4), **params)
    for ours, ref in zip(got, want):
        assert_close_scaled(ours, ref, np.float64)


# --------------------------------------------------------------------------
# Every algorithm serves the gradients, or refuses them with its reason
# --------------------------------------------------------------------------
ALGORITHM_CASES = {
    "2d-3x3": (2, 3, 8, 3, dict(padding=1)),
    "2d-strided-dilated-grouped": (2, 4, 9, 3, dict(stride=2, dilation=2, groups=2, padding=(1, 2))),
    "1d-long-kernel-same": (1, 2, 40, 9, dict(padding="same", padding_mode="circular",
                                               kind="convolution")),
    "3d-2x2x2": (3, 2, 5, 2, dict(stride=(1, 2, 1))),
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("case", sorted(ALGORITHM_CASES))
class TestAllAlgorithms:
    def test_grads_or_clear_refusal(self, algorithm, case, rng, monkeypatch):
        nd, channels, size, kernel, params = ALGORITHM_CASES[case]
        groups = params.get("groups", 1)
        x, w, b = make_problem(rng, nd, 2, channels, 2 * channels, groups, size, kernel,
                               np.float32)
        forward, _, _ = normalize_conv(
            x.shape, w.shape, None, params.get("stride", 1), params.get("padding", 0),
            params.get("dilation", 1), groups, params.get("padding_mode", "zeros"),
            params.get("kind", "correlation"), "test", np.float32)
        y_shape = forward.full_output_shape
        g = rng.standard_normal(y_shape).astype(np.float32)
        _, tgx, tgw, _ = torch_grads(g, x, w, b, **params)
        runner = ALGORITHMS[algorithm]
        calls = []
        original = runner.run
        monkeypatch.setattr(runner, "run", lambda *a: calls.append(1) or original(*a))
        for which, spec in gradient_specs(forward).items():
            needs, want = (which,), (tgx if which == "input" else tgw)
            reason = runner.supports(spec)
            if reason is not None:
                message = re.escape(f"conv_grad (grad_{which}): algorithm='{algorithm}' cannot "
                                    f"serve this call: {reason}")
                with pytest.raises(ValueError, match=message):
                    trueconv.conv_grad(g, x, w, **params, algorithm=algorithm, needs=needs)
                continue
            calls.clear()
            got = trueconv.conv_grad(g, x, w, **params, algorithm=algorithm, needs=needs)
            assert calls, f"{algorithm} did not run for grad_{which} (silent fallback?)"
            assert_close_scaled(got[0] if which == "input" else got[1], want, np.float32)


def test_auto_serves_every_case(rng):
    for nd, channels, size, kernel, params in ALGORITHM_CASES.values():
        groups = params.get("groups", 1)
        x, w, b = make_problem(rng, nd, 2, channels, 2 * channels, groups, size, kernel)
        check_against_torch(x, w, b, params, np.float64)


# --------------------------------------------------------------------------
# The adjoint (dot-product) identity, a cheap exact property in float64
# --------------------------------------------------------------------------
@st.composite
def conv_problems(draw):
    nd = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(e + draw(st.integers(0, 4)) for e in effective)
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    # torch's limits: reflect pads < size, circular pads <= size
    limit = [n - (mode == "reflect") for n in spatial] if mode in ("reflect", "circular") \
        else [3] * nd
    pads = tuple((draw(st.integers(0, min(2, m))), draw(st.integers(0, min(2, m)))) for m in limit)
    kind = draw(st.sampled_from(["correlation", "convolution"]))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, *spatial))
    w = rng.standard_normal((out_channels, channels // groups, *kernel))
    params = dict(stride=stride, padding=pads, dilation=dilation, groups=groups,
                  padding_mode=mode, kind=kind)
    return x, w, params, rng


@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_adjoint_identity(problem):
    x, w, params, rng = problem
    y = trueconv.conv(x, w, **params)
    g = rng.standard_normal(y.shape)
    gx, gw, _ = trueconv.conv_grad(g, x, w, **params)
    # <conv(x, w), g> = <x, grad_input> = <w, grad_weight>: conv is bilinear (linear in x
    # for every padding_mode, whose pre-pass is linear too).
    lhs = float(np.vdot(y, g))
    # Normwise scale: transform algorithms (FFT, Winograd) are accurate normwise, so an
    # output made only of padding may come back as 1e-17 rather than 0.
    scale = float(np.linalg.norm(x) * np.linalg.norm(w) * np.linalg.norm(g))
    assert abs(lhs - float(np.vdot(x, gx))) <= 1e-12 * scale
    assert abs(lhs - float(np.vdot(w, gw))) <= 1e-12 * scale


# --------------------------------------------------------------------------
# Errors and degenerate sizes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("g_shape", [(2, 4, 4, 5), (1, 4, 4, 4), (2, 3, 4, 4), (4, 4, 4),
                                     (2, 4, 4, 4, 1), ()])
def test_wrong_grad_output_shape_is_a_clear_error(g_shape, rng):
    x, w, _ = make_problem(rng, 2, 2, 2, 4, 1, 6, 3)
    message = (r"conv_grad: grad_output must have the forward output's shape \(2, 4, 4, 4\) "
               r"\(input of shape \(2, 2, 6, 6\), weight of shape \(4, 2, 3, 3\)\), got "
               rf"grad_output of shape {re.escape(str(g_shape))}")
    with pytest.raises(ValueError, match=message):
        trueconv.conv_grad(np.zeros(g_shape), x, w)


def test_unbatched_grad_output_must_be_unbatched(rng):
    x, w, _ = make_problem(rng, 1, 1, 2, 3, 1, 6, 3, batched=False)
    with pytest.raises(ValueError, match=r"forward output's shape \(3, 4\)"):
        trueconv.conv_grad(np.zeros((1, 3, 4)), x, w)
    gx, gw, gb = trueconv.conv_grad(np.ones((3, 4)), x, w)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (3,)


def test_bad_grad_output_dtype_and_needs(rng):
    x, w, _ = make_problem(rng, 1, 1, 2, 3, 1, 6, 3, np.float32)
    with pytest.raises(TypeError, match="grad_output of dtype complex128 cannot be cast to the "
                                        "forward result dtype float32"):
        trueconv.conv_grad(np.zeros((1, 3, 4), complex), x, w)
    with pytest.raises(TypeError, match="grad_output has dtype bool"):
        trueconv.conv_grad(np.zeros((1, 3, 4), bool), x, w)
    with pytest.raises(ValueError, match="needs must be one of 'input', 'weight', 'bias', got 'x'"):
        trueconv.conv_grad(np.zeros((1, 3, 4)), x, w, needs=("input", "x"))
    with pytest.raises(TypeError, match="needs must be a tuple of names"):
        trueconv.conv_grad(np.zeros((1, 3, 4)), x, w, needs=3)
    with pytest.raises(ValueError, match="conv_grad: padding_mode must be one of"):
        trueconv.conv_grad(np.zeros((1, 3, 4)), x, w, padding_mode="mirror")


def test_explicit_algorithm_name_is_validated(rng):
    x, w, _ = make_problem(rng, 1, 1, 2, 3, 1, 6, 3)
    with pytest.raises(ValueError, match="conv_grad: algorithm must be one of"):
        trueconv.conv_grad(np.zeros((1, 3, 4)), x, w, algorithm="magic")


@pytest.mark.parametrize("shapes", [
    ((0, 2, 5, 5), (3, 2, 3, 3)),   # zero batch (#37)
    ((2, 0, 5, 5), (3, 0, 3, 3)),   # zero input channels
    ((2, 2, 5, 5), (0, 2, 3, 3)),   # zero output channels: empty grad_output (#41)
])
def test_empty_problems_give_zero_grads(shapes, rng):
    x = rng.standard_normal(shapes[0])
    w = rng.standard_normal(shapes[1])
    g = np.ones(trueconv.conv(x, w, padding=1).shape)
    gx, gw, gb = trueconv.conv_grad(g, x, w, padding=1, padding_mode="reflect")
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (w.shape[0],)
    assert gx.dtype == gw.dtype == gb.dtype == np.float64
    if x.shape[0] == 0:  # torch serves the zero batch; zero channels it does not (oracle below)
        assert not gw.any() and not gb.any()
        _, tgx, tgw, tgb = torch_grads(g, x, w, np.zeros(w.shape[0]), padding=1,
                                       padding_mode="reflect")
        for ours, ref in ((gx, tgx), (gw, tgw), (gb, tgb)):
            assert_close_scaled(ours, ref, np.float64)
    if w.shape[0] == 0:  # an empty sum over output channels
        assert not gx.any()
    if x.shape[1] == 0:  # the output is the bias alone
        np.testing.assert_array_equal(gb, g.sum(axis=(0, 2, 3)))


def test_gradients_split_over_the_batch_under_a_small_memory_limit(rng, monkeypatch):
    # The gradient convolutions plan like the forward: over the limit, they run in batch chunks.
    x, w, b = make_problem(rng, 2, 6, 4, 4, 1, 12, 3)
    params = dict(stride=2, padding=1)
    runner = ALGORITHMS["im2col"]
    runs = []
    original = runner.run
    monkeypatch.setattr(runner, "run", lambda x, w, spec: runs.append(spec)
                        or original(x, w, spec))
    chunks = []
    original_chunk = im2col_module.flat_shift_chunk
    monkeypatch.setattr(im2col_module, "flat_shift_chunk",
                        lambda spec, phases: chunks.append(original_chunk(spec, phases))
                        or chunks[-1])
    with trueconv.memory_limit(60_000):
        check_against_torch(x, w, b, params, np.float64, algorithm="im2col")
    # forward and grad_input (batch N=6) ran in engine batch chunks; the weight gradient
    # (batch C=4, reduction over the N=6 images) took the flat-shift path, which chunks
    # its reduction over the images itself
    assert max(spec.batch for spec in runs if spec.kernel_shape == (3, 3)) < 6, runs
    assert chunks and max(chunks) < 6, chunks


# --------------------------------------------------------------------------
# The flat-shift weight gradient (im2col's few-outputs, kernel-sized-plane path)
# --------------------------------------------------------------------------
# (nd, batch, channels, out_channels, groups, size, kernel, params): every case is checked
# to take the flat-shift path, so a change of its selection rule cannot silently turn these
# into tests of another path.
FLAT_SHIFT_CASES = {
    "1d": (1, 3, 4, 5, 1, 20, 3, dict(padding=1)),
    "1d-strided-dilated-asymmetric-grouped": (1, 3, 4, 6, 2, 23, 3,
                                              dict(stride=2, dilation=3, padding=((2, 1),))),
    "1d-uncovered-tail": (1, 2, 2, 3, 1, 10, 2, dict(stride=3)),
    "2d-asymmetric-dilated-grouped": (2, 2, 4, 6, 2, 10, (3, 2),
                                      dict(padding=((1, 0), (2, 1)), dilation=(1, 2))),
    "2d-stride2-polyphase": (2, 2, 3, 4, 1, 12, 3, dict(stride=2, padding=1)),
    "2d-stride32-dilation2": (2, 2, 2, 3, 1, 13, 2,
                              dict(stride=(3, 2), dilation=2, padding=(1, 0))),
    "2d-depthwise": (2, 3, 4, 4, 4, 9, 3, dict(padding=1)),
    "2d-valid-unpadded": (2, 2, 3, 2, 1, 9, 2, dict()),
    "3d": (3, 2, 2, 3, 1, 7, 2, dict(padding=1, stride=(1, 2, 1))),
}


def flat_shift_problem(name, dtype, rng):
    nd, batch, channels, out_channels, groups, size, kernel, params = FLAT_SHIFT_CASES[name]
    kernel = (kernel,) * nd if isinstance(kernel, int) else kernel
    x = rng.standard_normal((batch, channels) + (size,) * nd)
    w = rng.standard_normal((out_channels, channels // groups, *kernel))
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(x.shape)
        w = w + 1j * rng.standard_normal(w.shape)
    params = dict(params, groups=groups)
    forward, _, _ = normalize_conv(
        x.shape, w.shape, None, params.get("stride", 1), params.get("padding", 0),
        params.get("dilation", 1), groups, "zeros", "correlation", "test", np.dtype(dtype).name)
    spec = gradient_specs(forward)["weight"]
    assert im2col_module.flat_shift_overhead(spec) is not None, (name, spec)
    return x.astype(dtype), w.astype(dtype), params, forward


def spy_flat_shift(monkeypatch):
    calls = []
    original = im2col_module.Im2col._run_flat_shift
    monkeypatch.setattr(im2col_module.Im2col, "_run_flat_shift",
                        staticmethod(lambda x, w, spec: calls.append(spec)
                                     or original(x, w, spec)))
    return calls


FLAT_SHIFT_PRODUCT = random.Random(7).sample(list(itertools.product(
    sorted(FLAT_SHIFT_CASES), (np.float64, np.float32, np.complex128),
    ("correlation", "convolution"),
)), 24)


@pytest.mark.parametrize("name, dtype, kind", FLAT_SHIFT_PRODUCT,
                         ids=lambda v: v if isinstance(v, str) else np.dtype(v).name)
def test_flat_shift_weight_gradient_matches_torch(name, dtype, kind, rng, monkeypatch):
    x, w, params, _ = flat_shift_problem(name, dtype, rng)
    params = dict(params, kind=kind)
    y = trueconv.conv(x, w, **params)
    g = rng.standard_normal(y.shape).astype(y.dtype)
    calls = spy_flat_shift(monkeypatch)
    before = fingerprint(g, x, w)
    _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="im2col", needs=("weight",))
    assert fingerprint(g, x, w) == before
    assert calls, "the flat-shift path did not run"
    _, _, tgw, _ = torch_grads(g, x, w, np.zeros(w.shape[0], x.dtype), **params)
    assert gw.dtype == x.dtype and gw.shape == w.shape
    assert_close_scaled(gw, tgw, dtype)


def test_flat_shift_integer_weight_gradient_is_exact(rng, monkeypatch):
    x = rng.integers(-5, 6, (3, 4, 11, 10))
    w = rng.integers(-5, 6, (6, 2, 3, 3))
    params = dict(stride=2, padding=((1, 0), (2, 1)), groups=2)
    g = rng.integers(-5, 6, trueconv.conv(x, w, **params).shape)
    calls = spy_flat_shift(monkeypatch)
    _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="im2col", needs=("weight",))
    assert calls and gw.dtype == np.int64
    _, _, tgw, _ = torch_grads(g, x, w, np.zeros(6), **params)
    np.testing.assert_array_equal(gw, np.rint(tgw).astype(np.int64))


@pytest.mark.parametrize("name", ["2d-stride2-polyphase", "3d",
                                  "1d-strided-dilated-asymmetric-grouped"])
def test_flat_shift_chunks_its_reduction_under_a_small_memory_limit(name, rng, monkeypatch):
    # The images are the flat-shift path's reduction axis: under a small limit their planes
    # are built a chunk at a time and the products accumulated.
    x, w, params, forward = flat_shift_problem(name, np.float64, rng)
    spec = gradient_specs(forward)["weight"]
    phases = len(im2col_module._flat_shift_phases(spec)[0])
    per_image = (spec.batch * phases + spec.out_channels_per_group) * spec.groups * \
        int(np.prod(im2col_module.flat_shift_plane(spec))) * 8
    g = rng.standard_normal(trueconv.conv(x, w, **params).shape)
    calls = spy_flat_shift(monkeypatch)
    fills = []  # one plane fill per phase per chunk of images
    original_fill = im2col_module._fill_phase_plane
    monkeypatch.setattr(im2col_module, "_fill_phase_plane",
                        lambda *args: fills.append(args[2]) or original_fill(*args))
    with trueconv.memory_limit(4 * per_image + 4096):  # one image per chunk fits
        _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="im2col", needs=("weight",))
    assert calls and len(fills) == phases * x.shape[0], (phases, fills)
    _, _, tgw, _ = torch_grads(g, x, w, np.zeros(w.shape[0]), **params)
    assert_close_scaled(gw, tgw, np.float64)


def test_flat_shift_workspace_follows_the_chunk(rng):
    x, w, params, forward = flat_shift_problem("2d-stride2-polyphase", np.float64, rng)
    spec = gradient_specs(forward)["weight"]
    runner = ALGORITHMS["im2col"]
    whole = runner.workspace_bytes(spec)
    with trueconv.memory_limit(4 * 1000):
        assert im2col_module.flat_shift_chunk(spec, 4) == 1
        assert runner.workspace_bytes(spec) < whole


def test_explicit_algorithms_still_serve_the_weight_gradient(rng, monkeypatch):
    # The flat-shift path belongs to im2col: auto may take it, an explicit other algorithm
    # never does, and an explicit im2col always does when its rule allows.
    x, w, params, _ = flat_shift_problem("2d-stride2-polyphase", np.float64, rng)
    g = rng.standard_normal(trueconv.conv(x, w, **params).shape)
    _, _, tgw, _ = torch_grads(g, x, w, np.zeros(w.shape[0]), **params)
    calls = spy_flat_shift(monkeypatch)
    _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="direct", needs=("weight",))
    assert not calls
    assert_close_scaled(gw, tgw, np.float64)
    _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="im2col", needs=("weight",))
    assert calls
    assert_close_scaled(gw, tgw, np.float64)


def test_flat_shift_rule():
    # The 3x3 64->64 @56 weight gradient: 9 positions over a 58x58 plane, 7% wasted work.
    forward, _, _ = normalize_conv((8, 64, 56, 56), (64, 64, 3, 3), None, 1, 1, 1, 1, "zeros",
                                   "correlation", "test", "float32")
    spec = gradient_specs(forward)["weight"]
    assert im2col_module.flat_shift_overhead(spec) == pytest.approx(58 * 58 / (56 * 56))
    # A forward 3x3 convolution has a small kernel on a large plane: not this path.
    assert im2col_module.flat_shift_overhead(forward) is None
    # Tiny outputs (most of the plane is zeros once embedded): not this path either.
    forward, _, _ = normalize_conv((2, 4, 6, 6), (4, 4, 3, 3), None, 1, 1, 2, 1, "zeros",
                                   "correlation", "test", "float32")
    assert im2col_module.flat_shift_overhead(gradient_specs(forward)["weight"]) is None


@pytest.mark.parametrize("limit", [None, "small"])
def test_flat_shift_threads_share_the_positions(limit, rng, monkeypatch):
    # Large problems share their positions over worker threads (each worker its own product
    # buffer when chunks accumulate); forced here on a small problem.
    monkeypatch.setattr(im2col_module, "FLAT_SHIFT_PARALLEL_MACS", 0)
    monkeypatch.setattr(im2col_module, "get_num_threads", lambda: 3)
    x, w, params, forward = flat_shift_problem("2d-stride2-polyphase", np.float32, rng)
    spec = gradient_specs(forward)["weight"]
    assert im2col_module.flat_shift_workers(spec) == 3
    g = rng.standard_normal(trueconv.conv(x, w, **params).shape).astype(np.float32)
    calls = spy_flat_shift(monkeypatch)
    with trueconv.memory_limit(20_000 if limit else "1G"):
        _, gw, _ = trueconv.conv_grad(g, x, w, **params, algorithm="im2col", needs=("weight",))
        chunk = im2col_module.flat_shift_chunk(spec, 4)
    assert calls and (chunk < x.shape[0]) == bool(limit)
    _, _, tgw, _ = torch_grads(g, x, w, np.zeros(w.shape[0], np.float32), **params)
    assert_close_scaled(gw, tgw, np.float32)


@pytest.mark.parametrize("x_shape, w_shape, params", [
    ((2, 3, 20, 18), (4, 3, 15, 14), dict()),                        # template matching, "valid"
    ((1, 4, 30), (6, 2, 12), dict(dilation=2, stride=3, groups=2)),   # polyphase plane
    ((2, 2, 7, 8, 6), (3, 2, 7, 7, 5), dict(padding=((1, 0), (0, 0), (0, 1)))),
])
def test_flat_shift_serves_forward_problems_too(x_shape, w_shape, params, rng, monkeypatch):
    # The path is chosen by the spec's shape, not by who asks: a forward correlation with a
    # kernel nearly as large as its input takes it as well.
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    forward, _, _ = normalize_conv(
        x.shape, w.shape, None, params.get("stride", 1), params.get("padding", 0),
        params.get("dilation", 1), params.get("groups", 1), "zeros", "correlation", "test",
        "float64")
    assert im2col_module.flat_shift_overhead(forward) is not None
    calls = spy_flat_shift(monkeypatch)
    got = trueconv.conv(x, w, **params, algorithm="im2col")
    assert calls
    assert_close_scaled(got, torch_conv(x, w, **params), np.float64)
