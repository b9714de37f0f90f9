"""trueconv's SciPy-style functions against scipy.signal itself.

Same values (scaled tolerance by dtype; integers exact), same output shape,
and the same result dtype as SciPy in every case.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.signal as ss

import trueconv
from references import assert_close_scaled, fingerprint

MODES = ["full", "same", "valid"]
METHODS = ["auto", "direct", "fft"]


def random_array(shape, dtype, rng) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        low = 0 if dtype.kind == "u" else -5
        return rng.integers(low, 6, size=shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def assert_like_scipy(actual, expected) -> None:
    """Shape, dtype (equal to SciPy's) and values."""
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != scipy's {expected.dtype}"
    assert_close_scaled(actual, expected, expected.dtype)


def scipy_call(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        return fn(*args, **kwargs)


# -------------------------------------------------------------------------------------
# convolve / correlate, N-d
# -------------------------------------------------------------------------------------
SHAPE_PAIRS = [
    ((7,), (3,)), ((8,), (4,)), ((3,), (7,)), ((5,), (5,)), ((1,), (1,)),   # 1-D, odd/even
    ((6, 5), (3, 2)), ((4, 7), (4, 2)), ((3, 3), (5, 4)), ((6, 6), (2, 2)),  # 2-D
    ((5, 4, 6), (2, 3, 3)), ((3, 4, 3), (3, 2, 2)),                         # 3-D
]


@pytest.mark.parametrize("fn", ["convolve", "correlate"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_convolve_correlate_match_scipy(fn, method, shapes, rng) -> None:
    a = random_array(shapes[0], np.float64, rng)
    b = random_array(shapes[1], np.float64, rng)
    for mode in MODES:
        valid_possible = all(x >= y for x, y in zip(*shapes)) or all(
            x <= y for x, y in zip(*shapes))
        if mode == "valid" and not valid_possible:
            with pytest.raises(ValueError, match="one must be at least as large as the other"):
                getattr(trueconv, fn)(a, b, mode, method)
            continue
        expected = getattr(ss, fn)(a, b, mode, method)
        assert_like_scipy(getattr(trueconv, fn)(a, b, mode, method), expected)


DTYPES = ["int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64",
          "complex64", "complex128"]


@pytest.mark.parametrize("fn", ["convolve", "correlate"])
@pytest.mark.parametrize("dtypes", list(itertools.combinations_with_replacement(DTYPES, 2))[::3]
                         + [("int8", "int8"), ("uint8", "int64"), ("float16", "float16"),
                            ("complex64", "float64"), ("int32", "float32")], ids=str)
def test_result_dtype_equals_scipy(fn, dtypes, rng) -> None:
    """Result dtype equals SciPy's (np.result_type); integers exact (small values)."""
    a = random_array((6, 5), dtypes[0], rng)
    b = random_array((3, 2), dtypes[1], rng)
    for mode, method in itertools.product(MODES, ["direct", "auto"]):
        actual = getattr(trueconv, fn)(a, b, mode, method)
        if np.result_type(a, b) == np.float16:
            # SciPy's N-d direct path refuses float16 ("Unsupported type"); its 1-D path
            # returns float16 (np.result_type). We compute in float32 and return float16.
            assert np.dtype(ss.convolve(a.ravel(), b.ravel()).dtype) == np.float16
            reference = getattr(ss, fn)(a.astype(np.float64), b.astype(np.float64), mode)
            assert_close_scaled(actual, reference.astype(np.float16), np.float16)
        else:
            assert_like_scipy(actual, getattr(ss, fn)(a, b, mode, method))


def test_integer_results_are_exact_beyond_float53(rng) -> None:
    """Values whose sums exceed 2**53: float64 would round, int64 accumulation does not."""
    a = np.array([2**40 + 1, 3, 2**40 - 7, 5], dtype=np.int64)
    b = np.array([2**12 + 1, 1, 2**11 + 3], dtype=np.int64)
    expected = np.array([sum(int(a[i - j]) * int(b[j]) for j in range(3) if 0 <= i - j < 4)
                         for i in range(6)], dtype=object)
    for method in ["auto", "direct"]:
        actual = trueconv.convolve(a, b, method=method)
        assert actual.dtype == np.int64
        assert [int(v) for v in actual] == list(expected)
    # SciPy's method='fft' would round silently; we refuse and say why
    with pytest.raises(ValueError, match="convolve: method='fft' cannot serve this call: .*too "
                                         "large for an exact"):
        trueconv.convolve(a, b, method="fft")
    small = trueconv.convolve(a % 1000, b % 1000, method="fft")  # small ints: fft is exact
    np.testing.assert_array_equal(small, ss.convolve(a % 1000, b % 1000, method="direct"))


@pytest.mark.parametrize("fn", ["convolve", "correlate"])
@pytest.mark.parametrize("method", METHODS)
def test_complex_conjugation_and_valid_swap(fn, method, rng) -> None:
    """correlate conjugates in2; 'valid' with in2 larger swaps (and correlate reverses+conj)."""
    a = random_array((4, 3), np.complex128, rng)
    b = random_array((6, 5), np.complex128, rng)
    for first, second in [(a, b), (b, a)]:
        for mode in MODES:
            expected = getattr(ss, fn)(first, second, mode, method)
            assert_like_scipy(getattr(trueconv, fn)(first, second, mode, method), expected)


def test_valid_swap_literal() -> None:
    """EDGE_CASES #30: convolve([1, 1], [1, 2, 3], 'valid') == [3, 5]."""
    np.testing.assert_array_equal(trueconv.convolve([1, 1], [1, 2, 3], "valid"), [3, 5])
    np.testing.assert_array_equal(trueconv.correlate([1, 1], [1, 2, 3], "valid"),
                                  ss.correlate([1, 1], [1, 2, 3], "valid"))


def test_same_even_kernel_and_long_kernel_literals() -> None:
    """EDGE_CASES #23 and #32, the probe numbers."""
    np.testing.assert_array_equal(trueconv.convolve(np.arange(5), [1, 2, 3, 4], "same"),
                                  [1, 4, 10, 20, 25])
    np.testing.assert_array_equal(trueconv.convolve(np.arange(3), np.arange(7), "same"),
                                  [4, 7, 10])


def test_zero_rank(rng) -> None:
    """EDGE_CASES #29: two 0-d arrays give their product (correlate: times conj)."""
    a, b = np.array(2 + 1j), np.array(3 - 2j)
    for fn in ["convolve", "correlate", "fftconvolve"]:
        expected = getattr(ss, fn)(a, b)
        actual = getattr(trueconv, fn)(a, b)
        assert actual.shape == () and actual.dtype == expected.dtype
        assert actual == expected
    assert trueconv.convolve(np.array(3), np.array(4)) == 12
    assert trueconv.convolve(np.array(3), np.array(4)).dtype == ss.convolve(3, 4).dtype


def test_single_element_exact() -> None:
    assert_like_scipy(trueconv.convolve([3], [4]), ss.convolve([3], [4]))
    assert_like_scipy(trueconv.correlate([[3.5]], [[2.0]]), ss.correlate([[3.5]], [[2.0]]))


def test_signal_inputs_not_mutated(rng) -> None:
    a = np.asfortranarray(random_array((6, 7), np.float32, rng))[::-1]
    b = random_array((3, 2), np.float64, rng)
    b.flags.writeable = False
    before = fingerprint(a, b)
    for fn in ["convolve", "correlate", "fftconvolve"]:
        for mode in MODES:
            getattr(trueconv, fn)(a, b, mode)
    trueconv.convolve2d(a, b, boundary="symm")
    trueconv.correlate2d(a, b, boundary="wrap")
    assert fingerprint(a, b) == before


# -------------------------------------------------------------------------------------
# convolve2d / correlate2d
# -------------------------------------------------------------------------------------
BOUNDARIES = ["fill", "pad", "wrap", "circular", "symm", "symmetric"]


@pytest.mark.parametrize("fn", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shapes", [((6, 7), (3, 3)), ((5, 6), (2, 4)), ((4, 4), (4, 4)),
                                    ((3, 5), (4, 2)), ((2, 3), (5, 6))], ids=str)
def test_2d_boundaries_and_modes(fn, boundary, shapes, rng) -> None:
    for dtype in ["float64", "complex128", "int64"]:
        a = random_array(shapes[0], dtype, rng)
        b = random_array(shapes[1], dtype, rng)
        for mode in MODES:
            try:
                expected = scipy_call(getattr(ss, fn), a, b, mode, boundary)
            except ValueError as exc:
                with pytest.raises(ValueError, match="one must be at least as large"):
                    getattr(trueconv, fn)(a, b, mode, boundary)
                assert "valid" in mode, exc
                continue
            assert_like_scipy(getattr(trueconv, fn)(a, b, mode, boundary), expected)


@pytest.mark.parametrize("fillvalue", [0, 1, -2.5, 7, np.float32(0.5), 2 + 0j])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "complex128"])
def test_2d_fillvalue(fillvalue, dtype, rng) -> None:
    a = random_array((4, 5), dtype, rng)
    b = random_array((3, 2), dtype, rng)
    for fn, mode in itertools.product(["convolve2d", "correlate2d"], MODES):
        if isinstance(fillvalue, complex) and a.dtype.kind != "c":
            # SciPy refuses any complex fillvalue for a real output, even 2+0j
            with pytest.raises(ValueError, match="could not cast fillvalue"):
                getattr(trueconv, fn)(a, b, mode, "fill", fillvalue)
            continue
        expected = scipy_call(getattr(ss, fn), a, b, mode, "fill", fillvalue)
        assert_like_scipy(getattr(trueconv, fn)(a, b, mode, "fill", fillvalue), expected)


@pytest.mark.parametrize("fn", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("boundary,expected", [("symm", [[37.0, 42.0, 44.0, 45.0]]),
                                               ("wrap", [[43.0, 44.0, 42.0, 39.0]])])
def test_kernel_longer_than_image_multi_fold(fn, boundary, expected) -> None:
    """EDGE_CASES #33 (SciPy gh-8684/gh-8814): the image is extended more than once."""
    image = np.array([[2.0, -1.0, 3.0, 4.0]])
    kernel = np.ones((1, 21))
    actual = getattr(trueconv, fn)(image, kernel, mode="same", boundary=boundary)
    assert_like_scipy(actual, np.array(expected))
    for mode in ["full", "valid"]:
        assert_like_scipy(getattr(trueconv, fn)(image, kernel, mode, boundary),
                          getattr(ss, fn)(image, kernel, mode, boundary))


def test_2d_literals_from_scipy_tests() -> None:
    a = np.array([[1, 2, 3], [3, 4, 5]])
    b = np.array([[2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(
        trueconv.convolve2d(a, b, "full", "symm"),
        [[34, 30, 44, 62, 66], [52, 48, 62, 80, 84], [82, 78, 92, 110, 114]])


# -------------------------------------------------------------------------------------
# fftconvolve
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes", [("float64", "float64"), ("float32", "float32"),
                                    ("float16", "float16"), ("int64", "int32"),
                                    ("complex64", "float32"), ("complex128", "float64"),
                                    ("float32", "float64")], ids=str)
@pytest.mark.parametrize("shapes", SHAPE_PAIRS[:9], ids=str)
def test_fftconvolve_matches_scipy(dtypes, shapes, rng) -> None:
    a = random_array(shapes[0], dtypes[0], rng)
    b = random_array(shapes[1], dtypes[1], rng)
    for mode in MODES:
        try:
            expected = ss.fftconvolve(a, b, mode)
        except ValueError:
            with pytest.raises(ValueError, match="one must be at least as large"):
                trueconv.fftconvolve(a, b, mode)
            continue
        actual = trueconv.fftconvolve(a, b, mode)
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
        assert_close_scaled(actual, expected, expected.dtype,
                            rtol=1e-3 if expected.dtype == np.float16 else None)


@pytest.mark.parametrize(
    "shape1,shape2,axes",
    [
        ((5, 6, 2), (5, 3, 2), 1),            # non-convolved axes equal
        ((5, 6, 2), (1, 3, 2), [1]),          # broadcast a size-1 axis
        ((5, 6, 1), (5, 3, 4), (1, -1)),      # convolve the broadcast axis too
        ((4, 7, 3), (2, 2, 1), [0, 1]),       # size-1 broadcast on an unconvolved axis
        ((6, 5), (3, 4), None),
        ((3, 8, 4), (3, 3, 1), [-2]),
        ((5, 6, 1), (1, 3, 2), [1]),          # 'same' crops broadcast axes to in1 too
        ((4, 1), (1, 5), None),               # no axis transformed at all: a plain product
    ],
)
def test_fftconvolve_axes_and_broadcasting(shape1, shape2, axes, rng) -> None:
    a = random_array(shape1, np.float64, rng)
    b = random_array(shape2, np.complex128, rng)
    for mode, (first, second) in itertools.product(MODES, [(a, b), (b, a), (a, a.astype(int))]):
        try:
            expected = ss.fftconvolve(first, second, mode, axes)
        except ValueError:
            with pytest.raises(ValueError):
                trueconv.fftconvolve(first, second, mode, axes)
            continue
        assert_like_scipy(trueconv.fftconvolve(first, second, mode, axes), expected)
