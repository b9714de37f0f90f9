"""trueconv.conv against torch (CPU) and the float64 / exact-integer reference.

The parameter space (rank x stride x padding form x padding_mode x dilation x
groups x bias x batch x kind x dtype) is far too large to run whole, so a
deterministic sample of its cartesian product runs instead (JAX
``jtu.sample_product``): every value of every axis appears in the sample, the
combinations are random but fixed by a seed. Each sampled case runs for every
registered algorithm (``sorted(trueconv.ALGORITHMS)``), so a new algorithm joins
this suite by registering; one that refuses a case must say so with a
``ValueError`` carrying its ``supports()`` reason (never a silent skip).
"""

from __future__ import annotations

import random
import warnings
import zlib

import numpy as np
import pytest

import trueconv
from references import assert_close_scaled, conv_reference, fingerprint, torch_conv
from trueconv._spec import normalize_conv

ALGORITHM_NAMES = sorted(trueconv.ALGORITHMS)


def sample_product(count: int, seed: int, **axes: list) -> list[dict]:
    """Return ``count`` combinations of ``axes``, covering every value of every axis.

    Each axis cycles through a freshly shuffled order of its values, independently
    of the other axes, so any ``count >= max(len(values))`` covers each value at
    least once while pairing them at random (deterministic for a given seed).
    """
    rng = random.Random(seed)
    orders: dict[str, list] = {name: [] for name in axes}
    cases = []
    for _ in range(count):
        case = {}
        for name, values in axes.items():
            if not orders[name]:
                orders[name] = list(values)
                rng.shuffle(orders[name])
            case[name] = orders[name].pop()
        cases.append(case)
    return cases


# -------------------------------------------------------------------------------------
# Building one concrete problem from a sampled combination
# -------------------------------------------------------------------------------------
def torch_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """'same' pads written out by hand (independent of trueconv._spec).

    stride 1: torch's rule, total = d*(k-1), extra element after. stride > 1:
    TensorFlow's SAME, out = ceil(size / stride) and the pads that reach it.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def build_case(params: dict, rng: np.random.Generator) -> dict:
    nd = params["nd"]
    kernel = [(2, 3, 1), (3, 2, 3), (1, 3, 2), (3, 3, 3)][params["kernel"]][:nd]
    dilation = params["dilation"]
    dilation = tuple((dilation, 1, dilation)[:nd]) if dilation != 1 else 1
    dil_t = (dilation,) * nd if isinstance(dilation, int) else dilation
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dil_t)]
    spatial = [e + int(rng.integers(1, 4)) for e in eff]
    stride = params["stride"]
    stride = tuple((2, 1, 3)[:nd]) if stride == "mixed" else stride
    stride_t = (stride,) * nd if isinstance(stride, int) else stride

    padding = params["padding"]
    if padding == "asymmetric":
        pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd))
        padding = pads
    elif padding == "per-axis":
        padding = tuple(int(p) for p in rng.integers(0, 3, size=nd))
        pads = tuple((p, p) for p in padding)
    elif padding == "same":
        pads = tuple(map(torch_same_pads, spatial, kernel, stride_t, dil_t))
    elif padding == "valid":
        pads = ((0, 0),) * nd
    else:
        pads = ((padding, padding),) * nd
    if params["padding_mode"] == "reflect":  # torch: reflect pad must be < size
        spatial = [max(n, max(p) + 1) for n, p in zip(spatial, pads)]

    groups_kind = params["groups"]
    groups = {"1": 1, "2": 2, "depthwise": 3}[groups_kind]
    in_per_group = 1 if groups_kind == "depthwise" else 2
    out_per_group = 2 if groups_kind == "depthwise" else int(rng.integers(1, 3))
    c_in, c_out = groups * in_per_group, groups * out_per_group

    dtype = np.dtype(params["dtype"])
    x_shape = (c_in, *spatial) if params["batch"] is None else (params["batch"], c_in, *spatial)
    w_shape = (c_out, in_per_group, *kernel)
    if dtype.kind in "iu":
        x = rng.integers(-9, 10, size=x_shape).astype(dtype)
        w = rng.integers(-9, 10, size=w_shape).astype(dtype)
        bias = rng.integers(-9, 10, size=c_out).astype(dtype)
    elif dtype.kind == "c":
        x = (rng.standard_normal(x_shape) + 1j * rng.standard_normal(x_shape)).astype(dtype)
        w = (rng.standard_normal(w_shape) + 1j * rng.standard_normal(w_shape)).astype(dtype)
        bias = (rng.standard_normal(c_out) + 1j * rng.standard_normal(c_out)).astype(dtype)
    else:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        bias = rng.standard_normal(c_out).astype(dtype)
    return dict(
        x=x, w=w, bias=bias if params["bias"] else None, stride=stride, padding=padding,
        pads=pads, dilation=dilation, groups=groups, padding_mode=params["padding_mode"],
        kind=params["kind"], dtype=dtype,
    )


def call_kwargs(case: dict) -> dict:
    return dict(padding_mode=case["padding_mode"], kind=case["kind"])


def refusal(case: dict, algorithm: str) -> str | None:
    """The reason the algorithm gives for refusing this case, if it refuses."""
    x, w = case["x"], case["w"]
    compute = np.float32 if case["dtype"] == np.float16 else case["dtype"]
    compute = np.int64 if np.dtype(compute).kind in "iu" else compute
    spec, _, _ = normalize_conv(
        x.shape, w.shape, None, case["stride"], case["padding"], case["dilation"],
        case["groups"], case["padding_mode"], case["kind"], "conv", compute,
    )
    return trueconv.ALGORITHMS[algorithm].supports(spec)


def reference_for(case: dict) -> np.ndarray:
    x, w = case["x"], case["w"]
    batched = x.ndim == w.ndim
    xb = x if batched else x[np.newaxis]
    ref = conv_reference(xb, w, case["bias"], case["stride"], case["pads"], case["dilation"],
                         case["groups"], case["padding_mode"], case["kind"])
    return ref if batched else ref[0]


def torch_for(case: dict, use_torch_same: bool) -> np.ndarray:
    padding = case["padding"] if use_torch_same else case["pads"]
    with warnings.catch_warnings():
        # torch warns that 'same' with an even kernel copies the input; not our concern
        warnings.simplefilter("ignore", UserWarning)
        return torch_conv(case["x"], case["w"], case["bias"], case["stride"], padding,
                          case["dilation"], case["groups"], case["padding_mode"], case["kind"])


FLOAT_CASES = sample_product(
    72, seed=2,
    nd=[1, 2, 3],
    kernel=[0, 1, 2, 3],
    stride=[1, 1, 2, "mixed"],
    padding=[0, 1, "per-axis", "asymmetric", "same", "valid"],
    padding_mode=["zeros", "reflect", "replicate", "circular"],
    dilation=[1, 1, 2],
    groups=["1", "2", "depthwise"],
    bias=[True, False],
    batch=[1, 3, None],
    kind=["correlation", "convolution"],
    dtype=["float32", "float64"],
)


def case_id(params: dict) -> str:
    return "-".join(f"{v}" for v in params.values()).replace(" ", "")


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("params", FLOAT_CASES, ids=case_id)
def test_float_matches_torch_and_reference(params: dict, algorithm: str) -> None:
    case = build_case(params, np.random.default_rng(zlib.crc32(case_id(params).encode())))
    args = (case["x"], case["w"], case["bias"], case["stride"], case["padding"],
            case["dilation"], case["groups"])
    before = fingerprint(case["x"], case["w"], case["bias"])
    reason = refusal(case, algorithm)
    if reason is not None:
        with pytest.raises(ValueError, match=f"algorithm={algorithm!r} cannot serve this call"):
            trueconv.conv(*args, **call_kwargs(case), algorithm=algorithm)
        return
    actual = trueconv.conv(*args, **call_kwargs(case), algorithm=algorithm)
    assert fingerprint(case["x"], case["w"], case["bias"]) == before
    # torch's own 'same' only for stride 1 and zero padding; otherwise explicit hand pads
    torch_same = params["padding"] == "same" and params["stride"] == 1 and \
        params["padding_mode"] == "zeros"
    assert_close_scaled(actual, torch_for(case, torch_same).astype(case["dtype"]), case["dtype"],
                        scale=None)
    assert_close_scaled(actual, reference_for(case).astype(case["dtype"]), case["dtype"])


EXACT_CASES = sample_product(
    18, seed=3,
    nd=[1, 2, 3],
    kernel=[0, 1, 2, 3],
    stride=[1, 2, "mixed"],
    padding=[0, "asymmetric", "same", "valid"],
    padding_mode=["zeros", "reflect", "replicate", "circular"],
    dilation=[1, 2],
    groups=["1", "2", "depthwise"],
    bias=[True, False],
    batch=[1, 2, None],
    kind=["correlation", "convolution"],
    dtype=["int64", "int32", "int16", "complex128", "complex64"],
)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("params", EXACT_CASES, ids=case_id)
def test_integer_exact_and_complex_match_reference(params: dict, algorithm: str) -> None:
    case = build_case(params, np.random.default_rng(zlib.crc32(case_id(params).encode())))
    args = (case["x"], case["w"], case["bias"], case["stride"], case["padding"],
            case["dilation"], case["groups"])
    reason = refusal(case, algorithm)
    if reason is not None:
        with pytest.raises(ValueError, match=f"algorithm={algorithm!r} cannot serve this call"):
            trueconv.conv(*args, **call_kwargs(case), algorithm=algorithm)
        return
    actual = trueconv.conv(*args, **call_kwargs(case), algorithm=algorithm)
    expected = reference_for(case)
    # integers: exact and the promoted integer dtype; complex: the reference within tolerance
    assert_close_scaled(actual, expected.astype(case["dtype"]), case["dtype"])
    if case["dtype"].kind == "c":
        assert_close_scaled(actual, torch_for(case, False).astype(case["dtype"]), case["dtype"])


def test_sample_covers_every_value() -> None:
    """The sampler is what makes the product affordable; check that it does cover it."""
    cases = sample_product(20, seed=0, a=[1, 2, 3], b=list("xyzuvw"))
    assert {c["a"] for c in cases} == {1, 2, 3}
    assert {c["b"] for c in cases} == set("xyzuvw")
    assert cases == sample_product(20, seed=0, a=[1, 2, 3], b=list("xyzuvw"))


# -------------------------------------------------------------------------------------
# 'same' padding: torch's even-kernel rule and TensorFlow's strided rule, pinned by hand
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,dilation", [(2, 1), (4, 1), (3, 2), (4, 3), (5, 1)])
def test_same_stride1_equals_torch_same(kernel: int, dilation: int, rng) -> None:
    x = rng.standard_normal((2, 2, 9, 8))
    w = rng.standard_normal((3, 2, kernel, kernel - 1 or 1))
    actual = trueconv.conv2d(x, w, None, 1, "same", dilation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = torch_conv(x, w, None, 1, "same", dilation)
    assert actual.shape == x.shape[:1] + (3,) + x.shape[2:]
    assert_close_scaled(actual, expected, np.float64)


@pytest.mark.parametrize(
    "size,kernel,stride,dilation,expected_out,expected_pads",
    [
        # out = ceil(size / stride); total pad = (out-1)*stride + eff - size, extra after
        (7, 3, 2, 1, 4, (1, 1)),   # total = 3*2 + 3 - 7 = 2
        (8, 3, 2, 1, 4, (0, 1)),   # total = 3*2 + 3 - 8 = 1
        (8, 4, 3, 1, 3, (1, 1)),   # total = 2*3 + 4 - 8 = 2
        (5, 2, 2, 1, 3, (0, 1)),   # total = 2*2 + 2 - 5 = 1
        (6, 3, 2, 2, 3, (1, 2)),   # eff 5, total = 2*2 + 5 - 6 = 3
        (9, 1, 4, 1, 3, (0, 0)),   # total = 2*4 + 1 - 9 = 0
        (4, 1, 3, 1, 2, (0, 0)),   # total = 1*3 + 1 - 4 = 0
    ],
)
def test_same_strided_follows_tensorflow(size, kernel, stride, dilation, expected_out,
                                         expected_pads, rng) -> None:
    x = rng.standard_normal((1, 1, size))
    w = rng.standard_normal((1, 1, kernel))
    actual = trueconv.conv1d(x, w, None, stride, "same", dilation)
    assert actual.shape == (1, 1, expected_out)
    with pytest.raises(RuntimeError, match="not supported for strided"):  # torch refuses it
        torch_conv(x, w, None, stride, "same", dilation)
    expected = torch_conv(x, w, None, stride, [expected_pads], dilation)
    assert_close_scaled(actual, expected, np.float64)


def test_conv_nd_wrappers_check_rank(rng) -> None:
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    assert_close_scaled(trueconv.conv2d(x, w), torch_conv(x, w), np.float64)
    with pytest.raises(ValueError, match=r"conv1d: expected a 3-D weight .* \(3, 2, 3, 3\)"):
        trueconv.conv1d(x, w)
    with pytest.raises(ValueError, match=r"conv3d: expected a 5-D weight .* \(3, 2, 3, 3\)"):
        trueconv.conv3d(x, w)


def test_positional_order_matches_torch(rng) -> None:
    """conv2d(input, weight, bias, stride, padding, dilation, groups) as torch's."""
    x = rng.standard_normal((2, 4, 9, 9))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    actual = trueconv.conv2d(x, w, b, 2, 1, 2, 2)
    assert_close_scaled(actual, torch_conv(x, w, b, 2, 1, 2, 2), np.float64)


def test_named_layer_shapes() -> None:
    """Shapes the seed documents print for real layers (ResNet/VGG-like)."""
    cases = [
        ((1, 3, 32, 32), (32, 3, 3, 3), dict(padding=1), (1, 32, 32, 32)),
        ((1, 1, 28, 28), (16, 1, 3, 3), dict(stride=2, padding=1), (1, 16, 14, 14)),
        # the seed's comment says 12x12 here; (28 - 3) // 2 + 1 = 13 is what torch returns
        ((1, 1, 28, 28), (16, 1, 3, 3), dict(stride=2), (1, 16, 13, 13)),
        ((1, 64, 64, 64), (128, 64, 5, 5), dict(), (1, 128, 60, 60)),
    ]
    for x_shape, w_shape, params, expected in cases:
        x = np.broadcast_to(np.float32(1), x_shape)  # no big allocation for the input
        w = np.broadcast_to(np.float32(1), w_shape)
        if np.prod(expected) * np.prod(w_shape[1:]) < 2**22:
            out = trueconv.conv2d(x, w, **params)
            assert out.shape == expected
            assert out.dtype == np.float32
        spec, _, _ = normalize_conv(x_shape, w_shape, None, params.get("stride", 1),
                                    params.get("padding", 0), 1, 1, "zeros", "correlation", "conv")
        assert spec.full_output_shape == expected
