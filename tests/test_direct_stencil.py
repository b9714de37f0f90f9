"""The compiled direct stencil's three paths, against independent oracles.

``_kernels_numba`` computes a tile's interior in place from the input (small
kernels, stride 1), its border rows and all larger kernels through a
zero-padded window copy, its border columns through a transposed strip copy,
and strided problems one output row at a time. Every test here runs
``algorithm="direct"`` on shapes that put output elements on each of those
paths and on their seams (tile splits, rows longer than TILE_COLS, images
smaller than the kernel), and compares with scipy.signal, torch (float64) or
the longdouble / exact-integer direct sum ``conv_reference``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

import trueconv
from references import assert_close_scaled, conv_reference, torch_conv
from trueconv._spec import normalize_conv
from trueconv.algorithms import _kernels_numba as kernels
from trueconv.algorithms.direct import uses_compiled_kernel

DTYPES = ["float32", "float64", "int64"]


@pytest.fixture
def restore_threads():
    before = trueconv.get_num_threads()
    yield
    trueconv.set_num_threads(before)


def _pair(rng, x_shape, w_shape, dtype):
    if np.dtype(dtype).kind == "i":
        return (rng.integers(-60, 60, x_shape).astype(dtype),
                rng.integers(-60, 60, w_shape).astype(dtype))
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)


def _direct(x, w, **kwargs):
    spec, _, _ = normalize_conv(x.shape, w.shape, None, kwargs.get("stride", 1),
                                kwargs.get("padding", 0), kwargs.get("dilation", 1),
                                kwargs.get("groups", 1), "zeros", "correlation", "test", x.dtype)
    assert uses_compiled_kernel(spec)  # these tests are about the compiled loops
    return trueconv.conv(x, w, algorithm="direct", **kwargs)


def _check(x, w, **kwargs):
    actual = _direct(x, w, **kwargs)
    pads = kwargs.get("padding", 0)
    nd = x.ndim - 2
    pad_widths = pads if isinstance(pads, tuple) and isinstance(pads[0], tuple) else None
    if pad_widths is None:
        p = (pads,) * nd if isinstance(pads, int) else pads
        pad_widths = tuple((q, q) for q in p)
    expected = conv_reference(x, w, stride=kwargs.get("stride", 1), pad_widths=pad_widths,
                              dilation=kwargs.get("dilation", 1), groups=kwargs.get("groups", 1))
    assert_close_scaled(actual, expected, x.dtype)
    return actual


# (x shape, w shape, stride, (before, after) pads, dilation, groups): which path each exercises
CASES = [
    # 'same' 3x3, equal row pitches: interior as one flat run, 1-column border strips,
    # 1-row window-copy bands (test_tile_seams splits such images into row tiles)
    ((1, 1, 40, 300), (1, 1, 3, 3), 1, ((1, 1), (1, 1)), 1, 1),
    # depthwise with a channel multiplier, odd sizes
    ((2, 3, 13, 17), (6, 1, 3, 3), 1, ((1, 1), (1, 1)), 1, 3),
    # three channels x 3x3 = 27 taps: groups of 8, 8, 8, 2, 1 across channels
    ((1, 3, 11, 12), (2, 3, 3, 3), 1, ((1, 1), (1, 1)), 1, 1),
    # eight channels per group (72 taps), grouped
    ((1, 16, 9, 10), (4, 8, 3, 3), 1, ((1, 1), (1, 1)), 1, 2),
    # 5x5 (25 taps: in place), asymmetric pads: 2-column and 0-column strips
    ((1, 2, 12, 14), (2, 2, 5, 5), 1, ((3, 1), (4, 0)), 1, 1),
    # 'valid' 2x4: output rows shorter than input rows, one run per row
    ((2, 2, 9, 15), (3, 2, 2, 4), 1, ((0, 0), (0, 0)), 1, 1),
    # dilation with stride 1: in place with dilated offsets
    ((1, 2, 14, 13), (2, 1, 3, 3), 1, ((2, 2), (2, 2)), 2, 2),
    ((1, 1, 15, 16), (1, 1, 3, 2), 1, ((2, 0), (0, 3)), (2, 3), 1),
    # 7x7 (49 taps: in place, 9 + 5 x 8 taps per pass), 3-row and 3-column borders
    ((1, 1, 19, 23), (1, 1, 7, 7), 1, ((3, 3), (3, 3)), 1, 1),
    # 9x9 (81 taps > IN_PLACE_MAX_TAPS): window copy for every tile, 9 passes of 9 taps
    ((1, 1, 21, 20), (1, 1, 9, 9), 1, ((4, 4), (4, 4)), 1, 1),
    # 3x2 (6 taps: a short first group zero-fills its target), pads after only
    ((1, 1, 9, 11), (1, 1, 3, 2), 1, ((0, 2), (0, 1)), 1, 1),
    # 1 x 9 and 9 x 1 kernels
    ((1, 1, 10, 30), (1, 1, 1, 9), 1, ((0, 0), (4, 4)), 1, 1),
    ((1, 1, 30, 10), (1, 1, 9, 1), 1, ((4, 4), (0, 0)), 1, 1),
    # padding deeper than the kernel: output rows whose taps all read padding (in place
    # with finite weights: no tap left, the row is zero-filled)
    ((1, 1, 3, 10), (1, 1, 2, 3), 1, ((3, 3), (1, 1)), 1, 1),
    # images smaller than the kernel footprint: no interior at all
    ((1, 1, 2, 3), (1, 1, 5, 5), 1, ((2, 2), (2, 2)), 1, 1),
    ((1, 1, 1, 1), (1, 1, 3, 3), 1, ((1, 1), (1, 1)), 1, 1),
    ((1, 2, 3, 2), (2, 2, 4, 4), 1, ((3, 3), (3, 3)), 1, 1),  # 'full'
    # stride (strided path), with and without padding
    ((1, 2, 15, 16), (2, 2, 3, 3), (2, 1), ((1, 1), (1, 1)), 1, 1),
    ((2, 1, 17, 9), (1, 1, 3, 2), (1, 3), ((0, 2), (1, 0)), (2, 1), 1),
    # 1-D: rows longer than TILE_COLS split into column tiles, in place per tile
    ((1, 2, 4500), (2, 2, 5), 1, ((2, 2),), 1, 1),
    ((1, 2, 60), (4, 1, 3), 1, ((0, 0),), 3, 2),
    ((1, 1, 50), (1, 1, 4), 2, ((3, 1),), 1, 1),
    # 3-D: depth padding (window copy), interior depth slices in place, depth stride
    ((1, 2, 6, 7, 8), (2, 2, 3, 3, 3), 1, ((1, 1), (1, 1), (1, 1)), 1, 1),
    ((1, 2, 7, 8, 9), (2, 1, 3, 3, 3), (2, 1, 1), ((1, 0), (1, 1), (0, 2)), 1, 2),
    ((1, 1, 5, 6, 7), (1, 1, 2, 3, 3), 1, ((0, 0), (1, 1), (1, 1)), (2, 1, 1), 1),
    # depth padding after only: in-place slices first, then a whole-tile window copy
    # (the scratch grows from the border strips' size to a tile's)
    ((1, 1, 4, 9, 10), (1, 1, 2, 3, 3), 1, ((0, 1), (1, 1), (1, 1)), 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, pads, dilation, groups", CASES)
def test_paths_against_direct_sum(x_shape, w_shape, stride, pads, dilation, groups, dtype):
    rng = np.random.default_rng(abs(hash((x_shape, w_shape))) % 2**32)
    x, w = _pair(rng, x_shape, w_shape, dtype)
    _check(x, w, stride=stride, padding=pads, dilation=dilation, groups=groups)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size, k", [((64, 96), 3), ((45, 2100), 3), ((37, 41), 5), ((33, 35), 7),
                                     ((30, 31), 9)])
def test_image_same_matches_scipy(size, k, dtype):
    # single-channel 'same' filtering: equal row pitches (one flat run per band), rows
    # longer than TILE_COLS (one run per row and column tile), 9x9 through the window copy
    rng = np.random.default_rng(k)
    image = rng.standard_normal(size).astype(dtype)
    kernel = rng.standard_normal((k, k)).astype(dtype)
    ours = _direct(image[None, None], kernel[None, None], padding=k // 2)[0, 0]
    expected = scipy.signal.correlate2d(image.astype(np.float64), kernel.astype(np.float64),
                                        mode="same")
    assert_close_scaled(ours, expected, dtype)


def test_depthwise_layer_matches_torch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 30, 28)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    ours = _direct(x, w, padding=1, groups=6)
    assert_close_scaled(ours, torch_conv(x, w, padding=1, groups=6), np.float32)


def test_int64_is_exact_at_large_magnitudes():
    # products near 2**40 and sums of 27 of them: any float detour would round
    rng = np.random.default_rng(11)
    x = rng.integers(-(2**20), 2**20, (1, 3, 9, 11)).astype(np.int64)
    w = rng.integers(-(2**20), 2**20, (2, 3, 3, 3)).astype(np.int64)
    actual = _direct(x, w, padding=1)
    expected = conv_reference(x, w, pad_widths=((1, 1), (1, 1)))
    assert actual.dtype == np.int64
    np.testing.assert_array_equal(actual, expected)


def _assert_same_footprint(actual, expected, dtype):
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    if finite.any():
        assert_close_scaled(actual[finite], expected[finite], dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_nan_inf_footprints(dtype, k):
    # NaN/Inf in the interior (flat run), in a border column (strip) and in a border
    # row (window copy): each reaches exactly the outputs whose window holds it
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 1, 24, 25))
    x[0, 0, 12, 12] = np.nan
    x[0, 0, 5, 0] = np.inf
    x[0, 0, 20, 24] = -np.inf
    x[0, 0, 0, 9] = np.nan
    w = rng.standard_normal((1, 1, k, k))
    pads = ((k // 2, k // 2),) * 2
    actual = _direct(x.astype(dtype), w.astype(dtype), padding=pads)
    with np.errstate(invalid="ignore"):
        expected = conv_reference(x, w, pad_widths=pads)
    assert np.isnan(expected).any() and np.isinf(expected).any() and np.isfinite(expected).any()
    _assert_same_footprint(actual, expected, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_infinite_weight_meeting_padding_is_nan(dtype, k):
    # 0 * inf = NaN exactly where the infinite tap reads padding, +-inf elsewhere
    rng = np.random.default_rng(k)
    x = rng.uniform(0.5, 1.5, (1, 2, 15, 16))
    w = rng.standard_normal((2, 2, k, k))
    w[1, 1, 0, k - 1] = np.inf
    pads = ((k // 2, k // 2),) * 2
    actual = _direct(x.astype(dtype), w.astype(dtype), padding=pads)
    with np.errstate(invalid="ignore"):
        expected = conv_reference(x, w, pad_widths=pads)
    assert np.isnan(expected[0, 1]).any() and np.isposinf(expected[0, 1]).any()
    _assert_same_footprint(actual, expected, dtype)


@pytest.mark.parametrize("x_shape, w_shape, pads, groups", [
    ((3, 4, 37, 41), (4, 1, 3, 3), ((1, 1), (1, 1)), 4),  # in place
    ((2, 2, 33, 30), (3, 2, 7, 7), ((3, 3), (3, 3)), 1),  # window copy
    ((2, 1, 3000), (2, 1, 5), ((2, 2),), 1),  # 1-D, column tiles
])
def test_bitwise_reproducible_across_threads_and_batch(restore_threads, monkeypatch, x_shape,
                                                       w_shape, pads, groups):
    monkeypatch.setattr(kernels, "MIN_MACS_PER_THREAD", 1024)  # split these small problems
    rng = np.random.default_rng(9)
    x, w = _pair(rng, x_shape, w_shape, "float32")
    results = []
    for threads in (1, 2):
        trueconv.set_num_threads(threads)
        results.append(_direct(x, w, padding=pads, groups=groups))
        results.append(np.concatenate([_direct(x[i:i + 1], w, padding=pads, groups=groups)
                                       for i in range(x.shape[0])]))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0].view(np.int32), other.view(np.int32))


def test_output_placed_apart_from_input():
    for dtype in (np.float32, np.float64, np.int64):
        x = np.zeros((2, 3, 50, 64), dtype=dtype)
        out = kernels._empty_apart(x, (2, 4, 50, 64))
        assert out.shape == (2, 4, 50, 64) and out.dtype == dtype
        assert out.flags.c_contiguous and out.flags.writeable
        assert (out.ctypes.data - x.ctypes.data) % 4096 == 2048
        out[...] = 1  # the whole view lies inside its allocation
        assert out.sum() == out.size


def test_inputs_not_mutated_and_views_accepted():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((2, 3, 20, 24)).astype(np.float32)
    x = base[:, :, ::2, 1::2]  # a strided view
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)[:, :, ::-1]
    x_before, w_before = x.copy(), w.copy()
    _check(x, w, padding=1)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, w_before)


def _sequential_sum(x, w, pads):
    """The direct sum in x's dtype, tap by tap in the order (channel, kh, kw), from +0.

    NumPy's float32/float64 ufuncs round every product and every sum (no FMA), so
    this is bitwise the sum the compiled loops promise (fastmath off, fixed order).
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                out += w[None, :, ci, i, j, None, None] * xp[:, ci, None, i:i + oh, j:j + ow]
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k, in_place_max_taps", [(3, None), (3, 0), (5, None), (7, None),
                                                  (7, 0), (4, None)])
def test_bitwise_equal_to_sequential_sum(monkeypatch, dtype, k, in_place_max_taps):
    # the in-place passes and the window copy (IN_PLACE_MAX_TAPS = 0 sends every tile
    # there) both give exactly the plain left-to-right sum: grouping taps per pass
    # never reassociates, and no FMA contraction happens
    if in_place_max_taps is not None:
        monkeypatch.setattr(kernels, "IN_PLACE_MAX_TAPS", in_place_max_taps)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 2, 23, 26)).astype(dtype)
    w = rng.standard_normal((2, 2, k, k)).astype(dtype)
    pads = ((k // 2, (k - 1) // 2), (k // 2, (k - 1) // 2))
    actual = _direct(x, w, padding=pads)
    expected = _sequential_sum(x, w, pads)
    np.testing.assert_array_equal(actual.view(_uint(dtype)), expected.view(_uint(dtype)))


def _uint(dtype):
    return np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [3, 5])
def test_signed_zeros_bitwise(dtype, k):
    # products of +-0: the sum from +0 over a zero-padded input is +0, never -0, which is
    # what lets the border rows skip their padded taps; -0 inputs and negative weights
    # must still give exactly the sequential sum's bits (NaN-free, so compare the bits)
    rng = np.random.default_rng(20 + k)
    x = np.where(rng.random((1, 1, 12, 13)) < 0.5, -0.0, 0.0).astype(dtype)
    x[0, 0, 6, 6] = 1.5  # one nonzero: a cross of nonzero outputs in +0 / -0 surroundings
    w = -np.abs(rng.standard_normal((2, 1, k, k))).astype(dtype)
    w[1] *= -1
    pads = ((k // 2, k // 2), (k // 2, k // 2))
    actual = _direct(x, w, padding=pads)
    expected = _sequential_sum(x, w, pads)
    np.testing.assert_array_equal(actual.view(_uint(dtype)), expected.view(_uint(dtype)))


@pytest.mark.parametrize("x_shape, w_shape, pads", [
    ((1, 1, 40, 37), (1, 1, 3, 3), ((1, 1), (1, 1))),  # in place: row tiles of a flat run
    ((1, 2, 31, 30), (2, 2, 7, 7), ((3, 3), (3, 3))),  # in place, 3-row border bands
    ((1, 1, 33, 29), (1, 1, 9, 9), ((4, 4), (4, 4))),  # window copy, tile by tile
    ((1, 1, 3, 3100), (1, 1, 3, 5), ((1, 1), (2, 2))),  # row and column tiles
])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_tile_seams(monkeypatch, x_shape, w_shape, pads, dtype):
    # small tiles put seams between tiles (and between border bands and interiors)
    # everywhere; results must not change by a single bit
    rng = np.random.default_rng(len(x_shape) + w_shape[-1])
    x, w = _pair(rng, x_shape, w_shape, dtype)
    default = _direct(x, w, padding=pads)
    monkeypatch.setattr(kernels, "TILE_ELEMENTS", 300)
    assert kernels.tile_shape(w.shape[2:], (1, 1), (1, 1), default.shape[2:])[0] < x_shape[2]
    small = _check(x, w, padding=pads)
    np.testing.assert_array_equal(small, default)
