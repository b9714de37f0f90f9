"""The im2col algorithm's internal paths against torch (float64, CPU) and the direct sum.

im2col serves a call through one of four paths (``algorithms/im2col.py``):
pointwise (1x1, stride 1, no padding: a plain GEMM), the phase-plane path
(strided planes, row bands gathered by contiguous copies, "wide" or exact
rows), the shared GEMM for few output positions, and the flat-shift path for
kernels nearly the size of the plane. Each case below pins the path it takes
(so a change of routing cannot silently leave a path untested), then compares
the result with torch: float64 within 1e-10 and float32 within 1e-4 of the
output's scale, integers exactly against the exact direct sum.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from references import assert_close_scaled, conv_reference, torch_conv

import trueconv
from trueconv._api import prepare_conv
from trueconv.algorithms import ALGORITHMS
from trueconv.algorithms import im2col as im2col_module

IM2COL = ALGORITHMS["im2col"]


def spec_for(x: np.ndarray, w: np.ndarray, **params):
    """The ConvSpec the engine hands to im2col for ``trueconv.conv(x, w, **params)``."""
    return prepare_conv(x, w, None, params.get("stride", 1), params.get("padding", 0),
                        params.get("dilation", 1), params.get("groups", 1), "zeros",
                        "correlation", "im2col", "test")[3]


def path_of(spec) -> str:
    if im2col_module.is_pointwise(spec):
        return "pointwise"
    if im2col_module.flat_shift_overhead(spec) is not None:
        return "flat-shift"
    images, rows = im2col_module.column_chunk(spec)
    if im2col_module.output_positions(spec) < im2col_module.THIN_POSITIONS and \
            rows == spec.output_shape[0]:
        return "shifted" if im2col_module._shifted_gather(spec) else "shared"
    return "wide" if im2col_module.plane_geometry(spec).wide else "exact"


# (x shape, weight shape, params, path): 1-D, 2-D and 3-D; strides 1-3 (and per-axis),
# paddings (asymmetric too), dilations, groups (incl. depthwise), batch 1 and several.
CASES = [
    ((1, 6, 40, 36), (5, 6, 3, 3), dict(stride=2, padding=1), "wide"),
    ((3, 4, 37, 30), (6, 4, 3, 3), dict(stride=2, padding=1), "wide"),
    ((2, 3, 45, 41), (4, 3, 7, 7), dict(stride=2, padding=3), "wide"),
    ((1, 4, 33, 32), (4, 2, 3, 3), dict(stride=(2, 1), padding=(1, 2), groups=2), "wide"),
    ((2, 6, 50, 47), (6, 1, 3, 3), dict(stride=3, padding=2, groups=6), "wide"),
    ((1, 4, 40, 37), (3, 4, 3, 3), dict(stride=2, padding=((0, 2), (1, 0)), dilation=2), "wide"),
    ((2, 4, 34, 34), (5, 4, 2, 2), dict(stride=2), "wide"),
    ((1, 3, 64, 61), (4, 3, 4, 3), dict(stride=3, dilation=2, padding=2), "wide"),
    ((1, 2, 1100), (3, 2, 6), dict(stride=4, dilation=3, padding=5), "wide"),
    ((1, 5, 41, 36), (3, 5, 1, 1), dict(stride=2), "wide"),  # 1x1 strided: not pointwise
    ((1, 3, 18, 19), (4, 3, 4, 3), dict(stride=1, padding=(2, 1)), "wide"),
    ((2, 4, 50, 10), (4, 4, 3, 3), dict(stride=1, padding=1, dilation=(1, 3)), "exact"),
    ((1, 8, 100, 6), (4, 8, 3, 3), dict(stride=(1, 2), padding=1), "exact"),
    ((2, 3, 600), (4, 3, 5), dict(stride=2, padding=2), "wide"),
    ((1, 2, 700), (3, 2, 3), dict(stride=1, padding=1, dilation=3), "wide"),
    ((2, 2, 9, 40, 41), (3, 2, 3, 3, 3), dict(stride=2, padding=1), "wide"),
    ((2, 5, 30, 27), (4, 5, 3, 3), dict(), "exact"),  # stride 1 unpadded: read in place
    ((1, 4, 33, 29), (6, 2, 3, 2), dict(dilation=2, groups=2), "exact"),
    ((1, 4, 7, 7), (6, 4, 3, 3), dict(padding=1), "shifted"),
    ((3, 4, 7, 7), (6, 2, 3, 3), dict(padding=1, groups=2), "shifted"),
    ((2, 3, 9, 8), (4, 3, 4, 2), dict(padding=((1, 2), (0, 1))), "shifted"),  # asymmetric
    ((2, 3, 12, 5), (4, 3, 5, 3), dict(padding=(2, 1)), "shifted"),
    ((2, 3, 50), (4, 3, 5), dict(padding=2), "shifted"),
    ((2, 3, 30), (4, 3, 3), dict(padding="same", dilation=2), "shared"),
    ((1, 4, 7, 7), (6, 4, 3, 3), dict(), "shared"),
    ((2, 4, 9, 9), (5, 4, 3, 3), dict(padding=1, stride=2), "shared"),
    ((2, 6, 20, 18), (4, 6, 1, 1), dict(), "pointwise"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, weight_shape, params, path", CASES)
def test_paths_match_torch(shape, weight_shape, params, path, dtype) -> None:
    rng = np.random.default_rng(abs(hash((shape, weight_shape))) % 2**32)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(weight_shape).astype(dtype)
    assert path_of(spec_for(x, w, **params)) == path
    out = trueconv.conv(x, w, algorithm="im2col", **params)
    assert_close_scaled(out, torch_conv(x, w, **params), dtype=dtype)


def test_integers_are_exact_and_complex_matches() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-50, 50, (2, 3, 23, 21))
    w = rng.integers(-9, 9, (4, 3, 3, 3))
    out = trueconv.conv(x, w, stride=2, padding=1, algorithm="im2col")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, conv_reference(x, w, stride=2, pad_widths=((1, 1), (1, 1))))
    xc = rng.standard_normal((1, 2, 19, 17)) + 1j * rng.standard_normal((1, 2, 19, 17))
    wc = rng.standard_normal((3, 2, 3, 3)) - 1j * rng.standard_normal((3, 2, 3, 3))
    outc = trueconv.conv(xc, wc, stride=2, padding=1, algorithm="im2col")
    assert_close_scaled(outc, torch_conv(xc, wc, stride=2, padding=1), dtype=np.complex128)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.float32])
def test_shifted_gather_in_batch_chunks(dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled shifted-plane gather on chunks of images (n0 > 0), integers exactly."""
    # room for the columns of two and a half images: chunks of two
    per_image = 3 * 9 * 30 * np.dtype(dtype).itemsize
    monkeypatch.setattr(im2col_module, "THIN_COLUMN_BYTES", per_image * 5 // 2)
    rng = np.random.default_rng(8)
    x = rng.integers(-9, 9, (5, 3, 6, 5)).astype(dtype)
    w = rng.integers(-9, 9, (4, 3, 3, 3)).astype(dtype)
    if dtype == np.complex128:
        x = x + 1j * rng.integers(-9, 9, x.shape)
    spec = spec_for(x, w, padding=1)
    assert path_of(spec) == "shifted" and 1 < im2col_module.column_chunk(spec)[0] < 5
    out = trueconv.conv(x, w, padding=1, algorithm="im2col")
    expected = conv_reference(x, w, pad_widths=((1, 1), (1, 1)))
    if dtype == np.int64:
        np.testing.assert_array_equal(out, expected)
    else:
        assert_close_scaled(out, expected, dtype=dtype)


def test_phase_holding_only_padding() -> None:
    # Input height 1 with pad 2 and stride 2: the odd row phase holds padding only, so its
    # plane must be all zeros, also when the reused scratch buffer held other values.
    rng = np.random.default_rng(6)
    big = rng.standard_normal((1, 2, 40, 40)) * 1e6
    trueconv.conv(big, rng.standard_normal((3, 2, 3, 3)), stride=2, padding=1, algorithm="im2col")
    x = rng.standard_normal((2, 2, 1, 30))
    w = rng.standard_normal((3, 2, 3, 3))
    spec = spec_for(x, w, stride=2, padding=2)
    assert len(im2col_module.plane_geometry(spec).phases) == 4
    out = trueconv.conv(x, w, stride=2, padding=2, algorithm="im2col")
    assert_close_scaled(out, torch_conv(x, w, stride=2, padding=2), dtype=np.float64)


def test_reused_scratch_never_leaks_into_the_padding() -> None:
    # The planes' borders are zeroed piecewise (not the whole buffer): a call after one
    # that filled the same scratch with large values must still see zero padding.
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 3, 3, 3))
    for size, pad in [(30, 0), (28, 2), (31, 1), (29, 3)]:
        x = rng.standard_normal((1, 3, size, size)) + (1e8 if pad == 0 else 0)
        out = trueconv.conv(x, w, stride=2, padding=pad, algorithm="im2col")
        assert_close_scaled(out, torch_conv(x, w, stride=2, padding=pad), dtype=np.float64)


@pytest.mark.parametrize("params", [dict(stride=2, padding=1), dict()])
def test_non_contiguous_inputs(params) -> None:
    rng = np.random.default_rng(8)
    base = rng.standard_normal((2, 6, 41, 60))
    x = base[:, ::2, :, ::2]  # channel- and column-strided view
    w = np.asfortranarray(rng.standard_normal((5, 3, 3, 3)))
    out = trueconv.conv(x, w, algorithm="im2col", **params)
    assert_close_scaled(out, torch_conv(np.ascontiguousarray(x), w, **params), dtype=np.float64)


def test_unpadded_stride_one_reads_the_input_in_place() -> None:
    # a "valid" convolution needs no planes: its workspace is one band of columns
    x = np.zeros((1, 8, 12, 12))
    w = np.zeros((2, 8, 5, 5))
    spec = spec_for(x, w)
    geometry = im2col_module.plane_geometry(spec)
    assert geometry.direct and not geometry.wide and geometry.phases == ((0, 0),)
    items = im2col_module.plane_items(spec, geometry)
    rows = max(r1 - r0 for _, r0, r1 in items)
    assert IM2COL.workspace_bytes(spec) == 8 * 25 * rows * 8 * 8


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch, column_bytes, split_one", [
    (1, 8 * 2**20, False), (1, 8 * 2**20, True), (1, 9_000, False), (1, 9_000, True),
    (3, 8 * 2**20, False), (2, 9_000, True),
])
def test_bands_and_workers_cover_the_output_once(threads: int, batch: int, column_bytes: int,
                                                 split_one: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(im2col_module, "COLUMN_BYTES", column_bytes)
    monkeypatch.setattr(im2col_module, "SPLIT_ONE_IMAGE", split_one)
    monkeypatch.setattr(im2col_module, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((batch, 4, 31, 23))
    w = rng.standard_normal((6, 2, 3, 3))
    params = dict(stride=(2, 1), padding=1, groups=2)
    spec = spec_for(x, w, **params)
    geometry = im2col_module.plane_geometry(spec)
    items = im2col_module.plane_items(spec, geometry)
    covered = np.zeros((batch, spec.output_shape[0]), dtype=int)
    for i, r0, r1 in items:
        covered[i, r0:r1] += 1
        # a band's columns fit the budget unless it is a single row
        assert r1 - r0 == 1 or \
            (r1 - r0) * spec.in_channels * spec.kernel_size * geometry.row * 8 <= column_bytes
    assert (covered == 1).all()
    workers = im2col_module.plane_workers(spec, items)
    if batch > 1 or split_one:
        assert workers == min(threads, len(items))
        if split_one:
            assert len(items) >= min(threads, batch * spec.output_shape[0])
    else:
        assert workers == 1
    out = trueconv.conv(x, w, algorithm="im2col", **params)
    assert_close_scaled(out, torch_conv(x, w, **params), dtype=np.float64)


@pytest.mark.parametrize("shape, weight_shape, params", [
    ((2, 8, 120, 100), (8, 8, 3, 3), dict(stride=2, padding=1)),
    ((1, 4, 50, 12), (4, 4, 3, 3), dict(padding=1, dilation=(1, 3))),  # exact rows
    ((3, 16, 7, 7), (8, 16, 3, 3), dict(padding=1)),                     # shared GEMM
])
def test_workspace_is_honest(shape, weight_shape, params, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak NumPy allocation of run() stays within workspace_bytes + output (tracemalloc),
    and row bands keep the columns well below the whole column matrix."""
    monkeypatch.setattr(im2col_module, "COLUMN_BYTES", 40_000)
    monkeypatch.setattr(im2col_module, "THIN_COLUMN_BYTES", 40_000)
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    spec = spec_for(x, w, **params)
    with trueconv.memory_limit(64 * 2**10):  # scratch keeps nothing: every buffer is allocated
        IM2COL.run(x, w, spec)
        tracemalloc.start()
        try:
            out = IM2COL.run(x, w, spec)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        workspace = IM2COL.workspace_bytes(spec)
    output = math.prod(spec.full_output_shape) * spec.itemsize
    # slack for Python objects: pool futures, the BLAS limiter, a pool thread started lazily
    # (about 90 KB); one image's planes here are 400 KB
    assert peak <= workspace + output + 128 * 1024
    if path_of(spec) != "shared":
        # beyond the phase planes (about the padded input), a few bands of columns
        geometry = im2col_module.plane_geometry(spec)
        planes = len(geometry.phases) * spec.in_channels * geometry.flat * 4  # one image
        padded_image = x[0].nbytes * math.prod(spec.padded_shape) / math.prod(spec.input_shape)
        assert planes <= 1.3 * padded_image
        assert workspace - 2 * planes <= 3 * 40_000
    assert_close_scaled(out, torch_conv(x, w, **params), dtype=np.float32)


def test_geometry_reads_one_contiguous_run_per_tap() -> None:
    # 3x3 stride 2 pad 1 on 56x56: four 29x29 phase planes; tap (i, j) reads phase
    # (i mod 2, j mod 2) from plane position (i // 2, j // 2); wide rows of 29 columns.
    x = np.zeros((1, 2, 56, 56), np.float32)
    w = np.zeros((2, 2, 3, 3), np.float32)
    geometry = im2col_module.plane_geometry(spec_for(x, w, stride=2, padding=1))
    assert geometry.plane == (29, 29) and geometry.wide and geometry.row == 29
    assert geometry.phases == ((0, 0), (0, 1), (1, 0), (1, 1))
    assert geometry.tap_phase == (0, 1, 0, 2, 3, 2, 0, 1, 0)
    assert geometry.tap_shift == (0, 0, 1, 0, 0, 1, 29, 29, 30)
    # the last tap's band of 28 wide rows stays inside the (tail-padded) plane
    assert geometry.flat >= max(geometry.tap_shift) + 28 * 29
    # the taps of one phase form a lattice read by one strided view: phase (1, 0) holds
    # taps (1, 0) and (1, 2), starting at plane position (0, 0), one column apart
    index, taps, counts, flat_steps, base = geometry.groups[2]
    assert geometry.phases[index] == (1, 0)
    assert taps == (slice(1, None, 2), slice(0, None, 2)) and counts == (1, 2)
    assert flat_steps == (29, 1) and base == 0
    covered = np.zeros((3, 3), int)
    for _, taps, *_ in geometry.groups:
        covered[taps] += 1
    assert (covered == 1).all()
