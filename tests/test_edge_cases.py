"""EDGE_CASES.md sections 2 A-H and M: bad input, degenerate sizes, dtypes, values,
memory layout, memory limits and threads. Each error is checked for its type and
for a message that names the function, the parameter and the shapes or values.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.signal as ss

import trueconv
from references import assert_close_scaled, conv_reference, fingerprint, torch_conv
from trueconv._api import conv_with_plan
from trueconv._spec import normalize_conv

ALGORITHM_NAMES = sorted(trueconv.ALGORITHMS)
EXACT_ALGORITHMS = [name for name in ALGORITHM_NAMES if trueconv.ALGORITHMS[name].exact]
X = np.arange(50.0).reshape(1, 2, 5, 5)
W = np.ones((3, 2, 3, 3))


def refusal(x, w, algorithm: str, **params) -> str | None:
    """What ``algorithm``'s supports() says about this call (None: it serves it)."""
    x, w = np.asarray(x), np.asarray(w)
    dtype = np.result_type(x, w)
    compute = np.int64 if dtype.kind in "iu" else (np.float32 if dtype == np.float16 else dtype)
    spec, _, _ = normalize_conv(
        x.shape, w.shape, None, params.get("stride", 1), params.get("padding", 0),
        params.get("dilation", 1), params.get("groups", 1), params.get("padding_mode", "zeros"),
        params.get("kind", "correlation"), "conv", compute)
    return trueconv.ALGORITHMS[algorithm].supports(spec)


def conv_or_refusal(x, w, bias=None, *, algorithm: str, **params):
    """trueconv.conv, or None after checking that a refusing algorithm says so clearly."""
    reason = refusal(x, w, algorithm, **params)
    if reason is None:
        return trueconv.conv(x, w, bias, algorithm=algorithm, **params)
    with pytest.raises(ValueError, match=rf"algorithm={algorithm!r} cannot serve this call"):
        trueconv.conv(x, w, bias, algorithm=algorithm, **params)
    return None


def raises_without_mutation(exc, match, fn, *arrays, **kwargs):
    """Check the exception and that no argument changed (values, strides, flags)."""
    before = fingerprint(*arrays)
    with pytest.raises(exc, match=match):
        fn(*arrays, **kwargs)
    assert fingerprint(*arrays) == before


# -------------------------------------------------------------------------------------
# A. rank and shape; B. parameters  (deep-learning API)
# -------------------------------------------------------------------------------------
DL_ERRORS = [
    # (id, x, w, kwargs, exception, match)
    ("x-rank", np.zeros((1, 1, 2, 5, 5)), W, {}, ValueError,
     r"conv: expected 3-D \(unbatched\) or 4-D \(batched\) input for 4-D weight of shape "
     r"\(3, 2, 3, 3\), got 5-D input of shape \(1, 1, 2, 5, 5\)"),
    ("w-rank", np.zeros((1, 5)), np.zeros((1, 5)), {}, ValueError,
     r"weight must have at least 3 dimensions .* got weight of shape \(1, 5\)"),
    ("channels", np.zeros((1, 4, 5, 5)), W, {}, ValueError,
     r"given groups=1, weight of shape \(3, 2, 3, 3\), expected input of shape \(1, 4, 5, 5\) "
     r"to have 2 channels, but got 4"),
    ("groups-channels", np.zeros((1, 6, 5, 5)), np.zeros((4, 2, 3, 3)), dict(groups=2),
     ValueError, r"groups=2, weight of shape \(4, 2, 3, 3\), expected input of shape "
     r"\(1, 6, 5, 5\) to have 4 channels, but got 6"),
    ("groups-out", np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), dict(groups=2), ValueError,
     r"groups=2 must divide out_channels=3 \(weight of shape \(3, 2, 3, 3\)\)"),
    ("groups-0", X, W, dict(groups=0), ValueError, r"groups must be a positive integer, got 0"),
    ("groups-neg", X, W, dict(groups=-1), ValueError,
     r"groups must be a positive integer, got -1"),
    ("groups-float", X, W, dict(groups=2.0), TypeError, r"groups must be an integer, got float"),
    ("groups-bool", X, W, dict(groups=True), TypeError, r"groups must be an integer, got bool"),
    ("bias-shape", X, W, dict(bias=np.zeros(4)), ValueError,
     r"expected bias to be 1-dimensional with 3 elements \(weight of shape \(3, 2, 3, 3\)\), "
     r"but got bias of shape \(4,\)"),
    ("bias-2d", X, W, dict(bias=np.zeros((3, 1))), ValueError, r"bias of shape \(3, 1\)"),
    ("stride-0", X, W, dict(stride=0), ValueError, r"conv: stride must be positive, got \(0, 0\)"),
    ("stride-neg", X, W, dict(stride=(1, -2)), ValueError,
     r"stride must be positive, got \(1, -2\)"),
    ("stride-len", X, W, dict(stride=(1, 1, 1)), ValueError,
     r"stride must have length 2 \(or be an int\), got 3 values"),
    ("stride-float", X, W, dict(stride=1.5), TypeError,
     r"stride must be an integer, got float 1.5"),
    ("stride-float-int", X, W, dict(stride=2.0), TypeError, r"stride must be an integer"),
    ("stride-npfloat", X, W, dict(stride=np.float64(2)), TypeError, r"stride must be an integer"),
    ("stride-bool", X, W, dict(stride=True), TypeError, r"stride must be an integer, got bool"),
    ("stride-str", X, W, dict(stride="2"), TypeError, r"stride must be an int or a tuple"),
    ("stride-none", X, W, dict(stride=None), TypeError, r"stride must be an int or a tuple"),
    ("dilation-0", X, W, dict(dilation=0), ValueError, r"dilation must be positive, got \(0, 0\)"),
    ("dilation-neg", X, W, dict(dilation=-1), ValueError, r"dilation must be positive"),
    ("padding-neg", X, W, dict(padding=-1), ValueError,
     r"padding must be non-negative, got \(\(-1, -1\), \(-1, -1\)\)"),
    ("padding-neg-pair", X, W, dict(padding=((1, -1), (0, 0))), ValueError,
     r"padding must be non-negative"),
    ("padding-foo", X, W, dict(padding="foo"), ValueError,
     r"padding must be 'valid', 'same', an int, .* got 'foo'"),
    ("padding-float", X, W, dict(padding=1.0), TypeError, r"padding must be an integer"),
    ("padding-pairs", X, W, dict(padding=((1, 1),)), ValueError,
     r"padding as \(before, after\) pairs needs exactly 2 pairs"),
    ("padding-len", X, W, dict(padding=(1, 2, 3)), ValueError, r"padding must have length 2"),
    ("kernel-too-big", X, np.zeros((3, 2, 7, 7)), {}, ValueError,
     r"padded input size per channel \(5, 5\) is smaller than the effective kernel size "
     r"\(dilation \* \(kernel - 1\) \+ 1\) \(7, 7\) \(input of shape \(1, 2, 5, 5\), weight of "
     r"shape \(3, 2, 7, 7\), padding \(\(0, 0\), \(0, 0\)\)"),
    ("dilated-too-big", np.zeros((1, 2, 4, 4)), W, dict(dilation=2), ValueError,
     r"padded input size per channel \(4, 4\) is smaller than the effective kernel size .*"
     r"\(5, 5\)"),
    ("padding-mode", X, W, dict(padding_mode="xyz"), ValueError,
     r"padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', got 'xyz'"),
    ("padding-mode-int", X, W, dict(padding_mode=3), ValueError, r"padding_mode must be one of"),
    ("reflect-too-wide", X, W, dict(padding=5, padding_mode="reflect"), ValueError,
     r"padding_mode='reflect' needs padding < input size .* axis 0 of size 5"),
    ("circular-too-wide", X, W, dict(padding=6, padding_mode="circular"), ValueError,
     r"padding_mode='circular' needs padding <= input size"),
    ("kind", X, W, dict(kind="conv"), ValueError,
     r"kind must be one of 'correlation', 'convolution', got 'conv'"),
    ("algorithm", X, W, dict(algorithm="nope"), ValueError,
     r"algorithm must be one of 'auto', .*'direct'.*'im2col'.*, got 'nope'"),
    ("huge-padding", X, W, dict(padding=2**62), ValueError,
     r"padded input of shape .* would have \d+ elements; too large"),
    ("huge-padding-63", X, W, dict(padding=2**63 - 5), ValueError, r"too large"),
    ("huge-padding-mode", X, W, dict(padding=2**61, padding_mode="replicate"), ValueError,
     r"too large"),
    ("zero-kernel", X, np.zeros((3, 2, 0, 3)), {}, ValueError,
     r"weight of shape \(3, 2, 0, 3\) has a kernel dimension of size 0"),
    ("zero-spatial", np.zeros((1, 2, 0, 5)), W, {}, ValueError,
     r"input spatial dims must be > 0, got input of shape \(1, 2, 0, 5\)"),
    ("bool-x", X > 3, W, {}, TypeError, r"conv: input has dtype bool, which is not supported"),
    ("bool-w", X, W > 0, {}, TypeError, r"conv: weight has dtype bool"),
    ("object", X.astype(object), W, {}, TypeError, r"input has unsupported dtype object"),
    ("str", np.full((1, 2, 5, 5), "a"), W, {}, TypeError, r"input has unsupported dtype <U1"),
    ("datetime", np.zeros((1, 2, 5, 5), "datetime64[s]"), W, {}, TypeError,
     r"unsupported dtype datetime64"),
    ("none-x", None, W, {}, TypeError, r"conv: input must be an array-like of numbers, got None"),
    ("none-w", X, None, {}, TypeError, r"conv: weight must be an array-like of numbers"),
    ("ragged", [[[1.0, 2.0], [3.0]]], W, {}, TypeError, r"input must be an array-like of numbers"),
    ("bias-complex-on-real", X, W, dict(bias=np.ones(3) * 1j), TypeError,
     r"bias of dtype complex128 cannot be added to the float64 result"),
    ("bias-float-on-int", X.astype(int), W.astype(int), dict(bias=np.ones(3) / 2), TypeError,
     r"bias of dtype float64 cannot be added to the int64 result"),
]


@pytest.mark.parametrize("x,w,kwargs,exc,match", [c[1:] for c in DL_ERRORS],
                         ids=[c[0] for c in DL_ERRORS])
def test_conv_bad_input(x, w, kwargs, exc, match) -> None:
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", None)
    arrays = [a for a in (x, w, bias) if isinstance(a, np.ndarray)]
    before = fingerprint(*arrays)
    with pytest.raises(exc, match=match):
        trueconv.conv(x, w, bias, **kwargs)
    assert fingerprint(*arrays) == before  # not even error paths touch the inputs


def test_same_error_whatever_the_algorithm() -> None:
    """EDGE_CASES 3.4 #10: an invalid call fails the same way for every algorithm."""
    for name in ALGORITHM_NAMES:
        with pytest.raises(ValueError, match=r"expected input of shape \(1, 4, 5, 5\) to have 2"):
            trueconv.conv(np.zeros((1, 4, 5, 5)), W, algorithm=name)
        with pytest.raises(TypeError, match="bool"):
            trueconv.conv(X > 1, W, algorithm=name)


def test_huge_padding_never_allocates_or_hangs() -> None:
    """Huge pads that pass the element-count check still fail before any allocation."""
    x = np.ones((1, 1, 4))
    w = np.ones((1, 1, 1))
    for kwargs in [dict(padding=2**40), dict(padding=2**61, stride=2**60),
                   dict(padding=2**38, stride=2**30, padding_mode="replicate")]:
        with pytest.raises((MemoryError, ValueError), match=r"memory limit|too large"):
            trueconv.conv(x, w, **kwargs)


def test_huge_zero_pad_with_small_output_is_served_or_refused_cleanly() -> None:
    """A huge zero pad and stride leave a 33-element output: serve it, or refuse by the limit."""
    x = np.ones((1, 1, 4))
    w = np.ones((1, 1, 1))
    try:
        out = trueconv.conv(x, w, padding=((2**45, 0),), stride=2**40)
    except MemoryError as exc:
        assert "memory limit" in str(exc), str(exc)
    else:
        expected = np.zeros((1, 1, 33))
        expected[0, 0, -1] = 1.0  # 32 * 2**40 == 2**45: only the last output meets x[0]
        np.testing.assert_array_equal(out, expected)


def test_huge_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match=r"smaller than the effective kernel size"):
        trueconv.plan((1, 1, 10, 10), (1, 1, 2**32, 2**32))


# -------------------------------------------------------------------------------------
# D. empty and degenerate sizes
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_zero_batch_gives_empty_output(algorithm) -> None:
    out = trueconv.conv(np.zeros((0, 2, 5, 5)), W, np.ones(3), padding=1, algorithm=algorithm)
    assert out.shape == (0, 3, 5, 5) and out.dtype == np.float64


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_zero_channels_give_bias(algorithm) -> None:
    """EDGE_CASES #38: a sum over no channels is 0, so the output is exactly the bias."""
    bias = np.array([1.5, -2.0, 3.0])
    out = trueconv.conv(np.zeros((2, 0, 5, 4)), np.zeros((3, 0, 3, 3)), bias, stride=2,
                        algorithm=algorithm)
    assert out.shape == (2, 3, 2, 1)
    np.testing.assert_array_equal(out, np.broadcast_to(bias.reshape(1, 3, 1, 1), out.shape))
    ints = trueconv.conv(np.zeros((1, 0, 5), np.int32), np.zeros((2, 0, 2), np.int32))
    assert ints.dtype == np.int32 and not ints.any()


def test_zero_output_channels() -> None:
    out = trueconv.conv(X, np.zeros((0, 2, 3, 3)))
    assert out.shape == (1, 0, 3, 3)


def test_unbatched_degenerate() -> None:
    out = trueconv.conv(np.zeros((0, 5, 5)), np.zeros((3, 0, 3, 3)), np.ones(3))
    assert out.shape == (3, 3, 3) and (out == 1).all()


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_one_by_one_kernel_is_identity(algorithm, rng) -> None:
    """EDGE_CASES #36: a delta kernel reproduces the input (exactly for exact algorithms)."""
    x = rng.standard_normal((2, 3, 4, 5))
    w = np.eye(3).reshape(3, 3, 1, 1)
    delta = np.zeros((3, 3, 3, 3))
    delta[:, :, 1, 1] = np.eye(3)
    for weight, padding in [(w, 0), (delta, 1)]:
        out = conv_or_refusal(x, weight, np.zeros(3), padding=padding, algorithm=algorithm)
        if out is None:
            continue
        if trueconv.ALGORITHMS[algorithm].exact:
            np.testing.assert_array_equal(out, x)
        else:
            assert_close_scaled(out, x, np.float64)


# -------------------------------------------------------------------------------------
# E. dtypes
# -------------------------------------------------------------------------------------
def test_integer_overflow_raises_never_wraps() -> None:
    big = np.full((1, 1, 3, 3), 2**40, dtype=np.int64)
    with pytest.raises(OverflowError, match=r"could overflow the int64 accumulator"):
        trueconv.conv(big, big)
    small = np.full((1, 1, 2, 2), 200, dtype=np.uint8)
    with pytest.raises(OverflowError, match=r"do not fit the result dtype uint8 \[0, 255\]"):
        trueconv.conv(small, np.full((1, 1, 1, 1), 2, dtype=np.uint8))
    with pytest.raises(OverflowError, match=r"do not fit the result dtype uint8"):
        trueconv.convolve(np.array([200, 200], np.uint8), np.array([2, 2], np.uint8))
    for fn in ["convolve", "correlate", "fftconvolve"]:  # even two 0-d inputs never wrap
        with pytest.raises(OverflowError, match=rf"{fn}: the exact result .* int8"):
            getattr(trueconv, fn)(np.array(100, np.int8), np.array(100, np.int8))
    edge = np.full((1, 1, 1), 2**62, dtype=np.int64)
    with pytest.raises(OverflowError, match=r"adding bias\[0\] = 4611686018427387904"):
        trueconv.conv(edge, np.ones((1, 1, 1), np.int64), np.array([2**62]))
    # exact where it fits: an int8 result that fits int8
    out = trueconv.conv(np.full((1, 1, 3), 100, np.int8), np.ones((1, 1, 1), np.int8),
                        np.array([27], np.int8))
    assert out.dtype == np.int8 and (out == 127).all()


def test_integer_bias_of_another_integer_type(rng) -> None:
    x = rng.integers(0, 9, (1, 2, 4)).astype(np.uint64)
    w = rng.integers(0, 9, (2, 2, 2)).astype(np.uint64)
    out = trueconv.conv(x, w, np.array([50, -3]))
    assert out.dtype == np.uint64
    expected = conv_reference(x.astype(np.int64), w.astype(np.int64), np.array([50, -3]))
    np.testing.assert_array_equal(out.astype(np.int64), expected)


def test_float16_computes_in_float32_returns_float16(rng) -> None:
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float16)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    b = rng.standard_normal(4).astype(np.float16)
    out = trueconv.conv(x, w, b, padding=1)
    expected = conv_reference(x, w, b, pad_widths=((1, 1), (1, 1)))
    assert_close_scaled(out, expected.astype(np.float16), np.float16)
    # float32 accumulation: a long float16 sum stays accurate (float16 sums would drift)
    long_x = np.full((1, 1, 4096), 0.1, np.float16)
    total = trueconv.conv(long_x, np.ones((1, 1, 4096), np.float16))
    assert total.dtype == np.float16
    assert abs(float(total[0, 0, 0]) - 4096 * float(np.float16(0.1))) < 0.5


def test_longdouble_keeps_precision(rng) -> None:
    x = rng.standard_normal((1, 2, 6)).astype(np.longdouble)
    w = rng.standard_normal((2, 2, 3)).astype(np.longdouble)
    x[0, 0, 0] += np.longdouble(1) / 3 * np.finfo(np.longdouble).eps
    for algorithm in ["auto", *EXACT_ALGORITHMS]:
        out = trueconv.conv(x, w, algorithm=algorithm)
        assert out.dtype == np.longdouble
        assert_close_scaled(out, conv_reference(x, w).astype(np.longdouble), np.longdouble)
    a, b = x[0, 0], w[0, 0]
    for fn in ["convolve", "correlate"]:  # the SciPy-style face keeps longdouble too
        got = getattr(trueconv, fn)(a, b)
        assert got.dtype == np.longdouble
        expected = getattr(ss, fn)(a, b, method="direct")
        assert expected.dtype == np.longdouble
        assert_close_scaled(got, expected, np.longdouble, rtol=1e-15)
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant and "fft" in ALGORITHM_NAMES:
        with pytest.raises(ValueError,
                           match=r"algorithm='fft' cannot serve this call: .*precision"):
            trueconv.conv(x, w, algorithm="fft")


@pytest.mark.parametrize("dtypes", [("float32", "float64"), ("int32", "float32"),
                                    ("complex64", "float64"), ("int8", "int16"),
                                    ("uint8", "int8"), ("float16", "float32")], ids=str)
def test_mixed_dtypes_promote_like_numpy(dtypes, rng) -> None:
    x = (rng.standard_normal((1, 2, 5)) * 4).astype(dtypes[0])
    w = (rng.standard_normal((3, 2, 2)) * 4).astype(dtypes[1])
    out = trueconv.conv(x, w)
    want = np.result_type(x, w)
    assert out.dtype == want
    assert_close_scaled(out, conv_reference(x, w).astype(want), want)


def test_bias_follows_result_dtype(rng) -> None:
    x = rng.standard_normal((1, 2, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 2)).astype(np.float32)
    out = trueconv.conv(x, w, np.array([1.0, 2.0, 3.0]))  # float64 bias onto float32
    assert out.dtype == np.float32
    out = trueconv.conv(x.astype(np.complex64), w, np.array([1.0, 2.0, 3.0]))
    assert out.dtype == np.complex64
    out = trueconv.conv(x, w, [1, 2, 3])  # a list works
    assert_close_scaled(out, conv_reference(x, w, [1, 2, 3]).astype(np.float32), np.float32)


@pytest.mark.parametrize("fn", ["convolve", "correlate", "fftconvolve", "convolve2d"])
def test_signal_bad_input(fn) -> None:
    f = getattr(trueconv, fn)
    two_d = fn.endswith("2d")
    a = np.ones((3, 3)) if two_d else np.ones(3)
    with pytest.raises(TypeError, match=rf"{fn}: in1 must be an array-like of numbers, got None"):
        f(None, a)
    with pytest.raises(TypeError, match=rf"{fn}: in1 has dtype bool"):
        f(a > 0, a)
    with pytest.raises(TypeError, match=rf"{fn}: in2 has unsupported dtype object"):
        f(a, a.astype(object))
    with pytest.raises(ValueError, match=r"acceptable mode flags are 'valid', 'same', or 'full'"):
        f(a, a, "spam")
    if two_d:
        with pytest.raises(ValueError, match=r"convolve2d inputs must both be 2-D arrays, got "
                                             r"in1 of shape \(3,\) and in2 of shape \(3, 3\)"):
            f(np.ones(3), a)
        with pytest.raises(ValueError, match=r"acceptable boundary flags .* got 'foo'"):
            f(a, a, boundary="foo")
        return
    with pytest.raises(TypeError, match=r"in1 must be an array-like of numbers"):
        f([[1, 2], [3]], a)
    with pytest.raises(ValueError, match=r"in1 and in2 should have the same dimensionality, got "
                                         r"in1 of shape \(3,\) and in2 of shape \(1, 1\)"):
        f(a, [[1]])
    with pytest.raises(ValueError, match=r"should have the same dimensionality"):
        f(3, a)
    with pytest.raises(ValueError,
                       match=r"in1 and in2 must not be empty, got in1 of shape \(0,\)"):
        f([], a)
    with pytest.raises(ValueError, match=r"for 'valid' mode, one must be at least as large as "
                                         r"the other .* \(2, 3\) and in2 of shape \(3, 2\)"):
        f(np.ones((2, 3)), np.ones((3, 2)), "valid")
    if fn != "fftconvolve":
        with pytest.raises(ValueError, match=r"acceptable method flags are 'auto', 'direct', or "
                                             r"'fft', got 'bacon'"):
            f(a, a, method="bacon")


def test_fillvalue_errors() -> None:
    with pytest.raises(ValueError, match=r"could not cast fillvalue of dtype complex128 to the "
                                         r"output type int64"):
        trueconv.convolve2d([[1]], [[1, 2]], fillvalue=1j)
    with pytest.raises(ValueError, match=r"fillvalue must be scalar or an array with one element"):
        trueconv.convolve2d([[1]], [[1, 2]], fillvalue=[1, 2])
    with pytest.raises(ValueError, match=r"fillvalue cannot be an empty array"):
        trueconv.convolve2d([[1]], [[1, 2]], fillvalue=[])
    with pytest.raises(TypeError, match=r"fillvalue must be a number, got str 'a'"):
        trueconv.convolve2d([[1]], [[1, 2]], fillvalue="a")
    # SciPy wraps -1 to 255 for uint8; exact results refuse instead
    with pytest.raises(ValueError, match=r"fillvalue -1 does not fit the output type uint8"):
        trueconv.convolve2d(np.ones((2, 2), np.uint8), np.ones((1, 2), np.uint8), fillvalue=-1)
    with pytest.raises(ValueError, match=r"fillvalue nan does not fit the output type int64"):
        trueconv.correlate2d([[1]], [[1, 2]], fillvalue=np.nan)


def test_axes_errors() -> None:
    a = np.ones((4, 5))
    cases = [([], r"when provided, axes cannot be empty"),
             ([0, 0], r"all axes must be unique"), ([1, -1], r"all axes must be unique"),
             ([2], r"axes \(2,\) exceeds dimensionality of input \(2\)"),
             ([0.5], r"axes must be a scalar or iterable of integers"),
             ([[0]], r"axes must be a scalar or iterable of integers"),
             ("0", r"axes must be a scalar or iterable of integers")]
    for axes, match in cases:
        with pytest.raises(ValueError, match=match):
            trueconv.fftconvolve(a, a, axes=axes)
    with pytest.raises(ValueError, match=r"incompatible shapes for in1 and in2: \(5, 6, 2, 1\) "
                                         r"and \(5, 6, 3, 1\)"):
        trueconv.fftconvolve(np.ones((5, 6, 2, 1)), np.ones((5, 6, 3, 1)), axes=[0, 1])


# -------------------------------------------------------------------------------------
# F. NaN and Inf pass through like the references
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["auto", *EXACT_ALGORITHMS])
def test_nan_inf_only_in_the_footprint(algorithm) -> None:
    x = np.zeros((1, 1, 40))
    x[0, 0, 10] = np.nan
    x[0, 0, 30] = np.inf
    w = np.ones((1, 1, 5))
    out = trueconv.conv(x, w, algorithm=algorithm)
    expected = torch_conv(x, w)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(out[np.isinf(expected)], expected[np.isinf(expected)])
    assert np.isnan(out).sum() == 5 and np.isinf(out).sum() == 5  # the footprint, no more
    # SciPy-style: same footprint as scipy's direct method, with the default method too
    long_x = np.zeros(600)
    long_x[300] = np.nan
    got = trueconv.convolve(long_x, np.ones(100))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ss.convolve(long_x, np.ones(100),
                                                                      method="direct")))


def test_transform_algorithms_refuse_non_finite_input() -> None:
    x = np.zeros((1, 1, 8))
    x[0, 0, 3] = np.nan
    for name in ALGORITHM_NAMES:
        if trueconv.ALGORITHMS[name].exact:
            continue
        with pytest.raises(ValueError, match=rf"algorithm={name!r} cannot serve this call: .*NaN"):
            trueconv.conv(x, np.ones((1, 1, 3)), algorithm=name)


# -------------------------------------------------------------------------------------
# G. memory layout: never mutated, any strides, read-only, big-endian
# -------------------------------------------------------------------------------------
def layouts(rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    base_x = rng.standard_normal((2, 4, 9, 8))
    base_w = rng.standard_normal((3, 4, 3, 2))
    read_only_x = base_x.copy()
    read_only_x.flags.writeable = False
    return {
        "strided": (np.repeat(base_x, 2, axis=3)[:, :, :, ::2], base_w),
        "negative": (base_x[:, :, ::-1, ::-1].copy()[:, :, ::-1, ::-1],
                     base_w[:, :, ::-1].copy()[:, :, ::-1]),
        "fortran": (np.asfortranarray(base_x), np.asfortranarray(base_w)),
        "broadcast": (np.broadcast_to(base_x[:1], base_x.shape),
                      np.broadcast_to(base_w[:, :1], base_w.shape)),
        "read-only": (read_only_x, base_w),
        "big-endian": (base_x.astype(">f8"), base_w.astype(">f4")),
        "transposed-channels": (base_x.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3), base_w),
    }


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_any_layout_works_and_is_not_mutated(algorithm, rng) -> None:
    for name, (x, w) in layouts(rng).items():
        bias = np.arange(3.0)[::-1]
        before = fingerprint(x, w, bias)
        for kwargs in [dict(padding=1), dict(padding=2, padding_mode="reflect", stride=2),
                       dict(kind="convolution", dilation=(2, 1))]:
            out = conv_or_refusal(x, w, bias, **kwargs, algorithm=algorithm)
            if out is None:
                continue
            expected = torch_conv(np.array(x), np.array(w), bias.copy(), **kwargs)  # writable
            assert out.flags.writeable, name
            assert_close_scaled(out, expected, np.result_type(x, w))
        assert fingerprint(x, w, bias) == before, name


def test_signal_layouts_match_scipy(rng) -> None:
    for name, (x, w) in layouts(rng).items():
        a, b = x[0, 0], w[0, 0]
        before = fingerprint(a, b)
        for fn in ["convolve", "correlate", "convolve2d", "correlate2d", "fftconvolve"]:
            expected = getattr(ss, fn)(np.ascontiguousarray(a), np.ascontiguousarray(b))
            actual = getattr(trueconv, fn)(a, b)
            assert actual.dtype == expected.dtype, (name, fn)
            assert_close_scaled(actual, expected, expected.dtype)
        assert fingerprint(a, b) == before


def test_output_does_not_alias_input() -> None:
    """A 1x1 identity conv must still return a new array, not a view of the input."""
    x = np.arange(6.0).reshape(1, 1, 6)
    out = trueconv.conv(x, np.ones((1, 1, 1)))
    assert not np.shares_memory(out, x)
    out = trueconv.convolve(np.arange(4.0), [1.0])
    out[0] = 99
    assert trueconv.convolve(np.arange(4.0), [1.0])[0] == 0


# -------------------------------------------------------------------------------------
# H. memory limits: chunk the workspace, refuse an output that cannot fit
# -------------------------------------------------------------------------------------
def test_workspace_over_limit_is_chunked_over_batch(rng) -> None:
    x = rng.standard_normal((6, 3, 10, 10))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    expected = conv_reference(x, w, b)
    with trueconv.memory_limit(10**9):
        _, roomy = conv_with_plan(x, w, b, algorithm="im2col")
    assert roomy.batch_chunk == 6
    with trueconv.memory_limit(60_000):
        out, plan = conv_with_plan(x, w, b, algorithm="im2col")
        assert plan.algorithm == "im2col" and 1 <= plan.batch_chunk < 6
        assert plan.workspace_bytes + out.nbytes <= 60_000
        assert_close_scaled(out, expected, np.float64)
        auto_out, auto_plan = conv_with_plan(x, w, b)
        assert auto_plan.batch_chunk <= 6
        assert_close_scaled(auto_out, expected, np.float64)


def test_auto_falls_back_when_one_item_workspace_does_not_fit(rng, monkeypatch) -> None:
    """If im2col's workspace for ONE batch item exceeds the limit, auto still serves the call.

    im2col chunks within an image today, so its real workspace always fits; an im2col
    whose one-item workspace cannot fit is simulated by patching its estimate.
    """
    x = rng.standard_normal((3, 8, 12, 12))
    w = rng.standard_normal((2, 8, 5, 5))
    im2col = type(trueconv.ALGORITHMS["im2col"])
    monkeypatch.setattr(im2col, "workspace_bytes", lambda self, spec: 2**50 * max(spec.batch, 1))
    with trueconv.memory_limit(10**8 + 12345):  # a limit no earlier plan was cached under
        with pytest.raises(MemoryError, match=r"algorithm='im2col' would need .* of workspace for "
                                              r"one batch item"):
            trueconv.conv(x, w, algorithm="im2col")
        out, plan = conv_with_plan(x, w)
        assert plan.algorithm != "im2col"
        assert plan.workspace_bytes + out.nbytes <= 10**8 + 12345
        assert_close_scaled(out, conv_reference(x, w), np.float64)


def test_tight_limit_every_algorithm_serves_or_refuses_clearly(rng) -> None:
    x = rng.standard_normal((3, 8, 12, 12))
    w = rng.standard_normal((2, 8, 5, 5))
    expected = conv_reference(x, w)
    limit = expected.nbytes + 20_000
    with trueconv.memory_limit(limit):
        out, plan = conv_with_plan(x, w)
        assert plan.workspace_bytes + out.nbytes <= limit
        assert_close_scaled(out, expected, np.float64)
        for name in ALGORITHM_NAMES:
            if refusal(x, w, name) is not None:
                continue
            try:
                out, plan = conv_with_plan(x, w, algorithm=name)
            except MemoryError as exc:
                assert f"algorithm={name!r} would need" in str(exc)
                continue
            assert plan.workspace_bytes + out.nbytes <= limit
            assert_close_scaled(out, expected, np.float64)


def test_output_that_cannot_fit_is_refused_before_allocation() -> None:
    # nothing big exists: the input is a broadcast view, the plan has no data at all
    huge = np.broadcast_to(np.float64(1), (1, 1, 2**17, 2**17))
    with trueconv.memory_limit("1G"):
        with pytest.raises(MemoryError,
                           match=r"conv: the output of shape \(1, 1, 131072, 131072\) needs "
                                 r"128.0 GiB, over the memory limit of 1.0 GiB"):
            trueconv.conv(huge, np.ones((1, 1, 1, 1)))
        with pytest.raises(MemoryError,
                           match=r"plan: the output of shape \(8, 64, 65536, 65536\)"):
            trueconv.plan((8, 64, 2**16, 2**16), (64, 64, 3, 3), padding=1)
        with pytest.raises(MemoryError, match=r"the padded/converted copy of the input"):
            trueconv.conv(huge, np.ones((1, 1, 2**10, 2**10)), stride=2**10,
                          padding_mode="reflect", padding=1)
        with pytest.raises(MemoryError, match=r"convolve: the output"):
            trueconv.convolve(np.broadcast_to(1.0, (2**33,)), np.broadcast_to(1.0, (2**20,)))


def test_memory_limit_configuration() -> None:
    default = trueconv.get_memory_limit()
    with trueconv.memory_limit("64M"):
        assert trueconv.get_memory_limit() == 64 * 2**20
    assert trueconv.get_memory_limit() == default
    with pytest.raises(ValueError, match="memory limit must be positive"):
        trueconv.set_memory_limit(0)


# -------------------------------------------------------------------------------------
# M. threads (EDGE_CASES #89)
# -------------------------------------------------------------------------------------
def test_concurrent_calls_equal_serial(rng) -> None:
    problems = [(rng.standard_normal((2, 3, 12, 11)), rng.standard_normal((4, 3, k, k)), k)
                for k in (1, 2, 3, 5)]
    jobs = [(x, w, dict(padding=k // 2, algorithm=a, kind=kind))
            for x, w, k in problems for a in ["auto", *ALGORITHM_NAMES]
            for kind in ("correlation", "convolution")
            if a == "auto" or refusal(x, w, a, padding=k // 2) is None]
    serial = [trueconv.conv(x, w, **kw) for x, w, kw in jobs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(jobs), 4):
                x, w, kw = jobs[i]
                results[i] = trueconv.conv(x, w, **kw)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, expected in enumerate(serial):
        np.testing.assert_array_equal(results[i], expected)


def test_no_algorithm_fits_is_a_memory_error() -> None:
    """Output fits, but no algorithm's one-item workspace does: MemoryError, never a crash."""
    x = np.ones((6, 3, 10, 10))
    w = np.ones((4, 3, 3, 3))
    with trueconv.memory_limit(13_000):  # the output alone is 12 KiB
        with pytest.raises(MemoryError, match=r"memory limit"):
            trueconv.conv(x, w)
        for name in ALGORITHM_NAMES:
            if refusal(x, w, name) is None:
                with pytest.raises(MemoryError, match=rf"algorithm={name!r} would need"):
                    trueconv.conv(x, w, algorithm=name)


def test_memory_limit_block_is_scoped_to_its_thread() -> None:
    """A tight ``with memory_limit`` in one thread does not shrink another thread's limit."""
    seen: dict[str, int] = {}
    inside = threading.Event()
    done = threading.Event()

    def tight() -> None:
        with trueconv.memory_limit(1000):
            seen["tight"] = trueconv.get_memory_limit()
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=tight)
    thread.start()
    assert inside.wait(10)
    seen["other"] = trueconv.get_memory_limit()
    out = trueconv.conv(np.ones((1, 1, 64)), np.ones((1, 1, 3)))  # would not fit in 1000 bytes
    done.set()
    thread.join()
    assert seen["tight"] == 1000 and seen["other"] > 1000
    np.testing.assert_array_equal(out, np.full((1, 1, 62), 3.0))
