"""The FFT algorithm's execution paths, against scipy.signal and torch.

``fft.convolve_tiles`` runs tiles in runs (see ``fft.tile_runs``): on several
threads or one, transforming into reused per-thread buffers (numpy.fft
``out=``, double precision) or with scipy.fft, gathering a zero-extended slab
or viewing the input in place, and pruning the inverse transform to the
lines that hold valid outputs. Each test forces a tiling with
``fft.plan_for_lengths`` (the cost model would transform small problems
whole) and checks every combination against an independent oracle:
``scipy.signal.correlate`` / ``convolve`` or torch. Shapes are small.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.signal

import trueconv
from references import assert_close_scaled, fingerprint, torch_conv
from trueconv._spec import normalize_conv
from trueconv.algorithms import fft as fft_module
from trueconv.algorithms.fft import FFT, convolve_tiles, plan_for_lengths, tile_plan, tile_runs


def make_spec(x, w, stride=1, padding=0, dilation=1, groups=1):
    spec, _, _ = normalize_conv(x.shape, w.shape, None, stride, padding, dilation, groups,
                                "zeros", "correlation", "test", x.dtype)
    return spec


def random(rng, shape, dtype):
    dtype = np.dtype(dtype)
    values = rng.standard_normal(shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    if dtype.kind in "iu":
        values = rng.integers(-20, 20, shape)
    return values.astype(dtype)


def correlate_oracle(x, w, pads, groups=1):
    """``(N, O, *out)`` cross-correlation with zero pads: scipy.signal 'valid' on the padded x."""
    x64 = x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
    w64 = w.astype(x64.dtype)
    n, cin = x.shape[:2]
    o, c = w.shape[:2]
    per_group = o // groups
    padded = np.pad(x64, ((0, 0), (0, 0), *pads))
    outputs = [s - k + 1 for s, k in zip(padded.shape[2:], w.shape[2:])]
    out = np.zeros((n, o, *outputs), dtype=x64.dtype)
    for i in range(n):
        for oi in range(o):
            g = oi // per_group
            for ci in range(c):
                # no conjugate (torch's cross-correlation): convolve with the flipped kernel
                flipped = w64[oi, ci][(slice(None, None, -1),) * (w.ndim - 2)]
                out[i, oi] += scipy.signal.convolve(padded[i, g * c + ci], flipped, "valid",
                                                    "direct")
    return out


@pytest.fixture(params=["buffered", "scipy"])
def transforms(request, monkeypatch):
    """Both transform back ends: numpy.fft into reused buffers, and scipy.fft."""
    if request.param == "scipy":
        monkeypatch.setattr(fft_module, "NUMPY_FFT_OUT", False)
    elif not fft_module.NUMPY_FFT_OUT:
        pytest.skip("numpy.fft has no out= before numpy 2.0")
    return request.param


# (x shape, w shape, pads, forced tile lengths): odd and even kernels, non-square,
# pads larger than the kernel, tiles shorter than the output on every axis, a run of
# several small tiles per transform call, and a tile barely longer than the kernel
CASES_2D = [
    ((1, 1, 61, 47), (1, 1, 7, 7), ((3, 3), (3, 3)), (16, 18)),
    ((1, 1, 50, 71), (1, 1, 8, 5), ((3, 4), (2, 2)), (20, 12)),
    ((1, 1, 40, 33), (1, 1, 6, 9), ((5, 5), (8, 8)), (12, 10)),  # 'full'
    ((1, 1, 45, 38), (1, 1, 9, 4), ((0, 0), (0, 0)), (10, 16)),  # 'valid', tile = kernel + 1
    ((1, 1, 30, 29), (1, 1, 5, 5), ((11, 0), (0, 13)), (8, 8)),  # pads > kernel: empty-input runs
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES_2D, ids=lambda c: f"{c[1][2]}x{c[1][3]}-L{c[3]}")
def test_tiled_2d_matches_scipy(rng, transforms, threads, case):
    x_shape, w_shape, pads, lengths = case
    x, w = random(rng, x_shape, "float64"), random(rng, w_shape, "float64")
    spec = make_spec(x, w, 1, pads)
    plan = plan_for_lengths(spec, lengths)
    assert len(tile_runs(spec, plan)) > 1
    before = fingerprint(x, w)
    out = convolve_tiles(x, w, spec, plan, threads)
    assert fingerprint(x, w) == before
    assert out.flags.c_contiguous and out.shape == spec.full_output_shape
    assert_close_scaled(out, correlate_oracle(x, w, pads), "float64")


@pytest.mark.parametrize("dtype", ["float32", "complex64", "complex128", "int32"])
def test_tiled_dtypes_match_scipy(rng, transforms, dtype):
    x, w = random(rng, (2, 1, 37, 41), dtype), random(rng, (1, 1, 6, 7), dtype)
    pads = ((2, 3), (3, 3))
    spec = make_spec(x, w, 1, pads)
    out = convolve_tiles(x, w, spec, plan_for_lengths(spec, (16, 12)), 2)
    expected = correlate_oracle(x, w, pads)
    if np.dtype(dtype).kind in "iu":
        np.testing.assert_array_equal(out, expected.astype(dtype))
    else:
        assert out.dtype == np.dtype(dtype)
        assert_close_scaled(out, expected, dtype)


@pytest.mark.parametrize("groups, w_shape", [(1, (3, 2, 5, 4)), (2, (4, 1, 5, 4)),
                                             (1, (1, 3, 4, 4)), (2, (8, 4, 5, 4))])
def test_tiled_channels_groups_batch(rng, transforms, groups, w_shape, monkeypatch):
    """Channel sums: O > 1 per group, C > 1, groups, a batch of 3; the last case is the
    batched matmul over chunks of tile rows."""
    monkeypatch.setattr(fft_module, "TILE_CHUNK_BYTES", 2**14)  # several matmul chunks
    x = random(rng, (3, w_shape[1] * groups, 23, 26), "float64")
    w = random(rng, w_shape, "float64")
    pads = ((2, 2), (1, 2))
    spec = make_spec(x, w, 1, pads, 1, groups)
    out = convolve_tiles(x, w, spec, plan_for_lengths(spec, (10, 9)), 2)
    assert_close_scaled(out, correlate_oracle(x, w, pads, groups), "float64")


@pytest.mark.parametrize("stride, dilation", [(2, 1), ((1, 3), (2, 1)), (1, 2)])
def test_tiled_strided_dilated(rng, transforms, stride, dilation):
    x, w = random(rng, (2, 2, 40, 37), "float64"), random(rng, (3, 2, 4, 3), "float64")
    spec = make_spec(x, w, stride, ((1, 2), (3, 0)), dilation)
    out = convolve_tiles(x, w, spec, plan_for_lengths(spec, (16, 15)), 2)
    expected = torch_conv(x, w, None, stride, [(1, 2), (3, 0)], dilation)
    assert_close_scaled(out, expected, "float64")


@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_1d_and_3d(rng, transforms, threads, monkeypatch):
    monkeypatch.setattr(fft_module, "TILE_RUN_BYTES", 2**13)  # runs of a few tiles
    x, w = random(rng, (1, 1, 3001), "float64"), random(rng, (1, 1, 40), "float64")
    spec = make_spec(x, w, 1, ((39, 39),))
    plan = plan_for_lengths(spec, (128,))
    assert len(tile_runs(spec, plan)) > 1
    out = convolve_tiles(x, w, spec, plan, threads)
    assert_close_scaled(out[0, 0], np.correlate(x[0, 0], w[0, 0], "full"), "float64")
    x3, w3 = random(rng, (1, 2, 13, 11, 12), "float64"), random(rng, (2, 2, 3, 4, 2), "float64")
    pads = ((1, 1), (2, 1), (0, 1))
    spec3 = make_spec(x3, w3, 1, pads)
    out3 = convolve_tiles(x3, w3, spec3, plan_for_lengths(spec3, (6, 8, 5)), threads)
    assert_close_scaled(out3, correlate_oracle(x3, w3, pads), "float64")


def test_many_small_tiles_form_runs(rng):
    """Small 1-D tiles go through the transforms several at a time; runs split evenly."""
    x, w = random(rng, (1, 1, 20000), "float64"), random(rng, (1, 1, 17), "float64")
    spec = make_spec(x, w, 1, 0)
    plan = plan_for_lengths(spec, (64,))
    runs = tile_runs(spec, plan)
    sizes = [stop - first for _, first, stop in runs]
    assert max(sizes) > 1 and max(sizes) - min(sizes) <= 1
    # every tile exactly once
    assert sorted(j for _, first, stop in runs for j in range(first, stop)) == \
        list(range(plan.tile_counts[0]))
    out = convolve_tiles(x, w, spec, plan, 2)
    assert_close_scaled(out[0, 0], np.correlate(x[0, 0], w[0, 0], "valid"), "float64")


def test_reused_buffers_do_not_leak_between_problems(rng):
    """A buffer left full of one problem's data must not show through another's padding."""
    big_x, big_w = random(rng, (1, 1, 64, 64), "float64"), random(rng, (1, 1, 9, 9), "float64")
    big = make_spec(big_x, big_w, 1, 0)
    convolve_tiles(big_x * 1e6, big_w, big, plan_for_lengths(big, (32, 32)), 1)
    x, w = random(rng, (1, 1, 40, 40), "float64"), random(rng, (1, 1, 9, 9), "float64")
    spec = make_spec(x, w, 1, ((8, 8), (8, 8)))
    out = convolve_tiles(x, w, spec, plan_for_lengths(spec, (32, 32)), 1)
    assert_close_scaled(out, correlate_oracle(x, w, ((8, 8), (8, 8))), "float64")


def test_concurrent_calls_match_serial(rng):
    """Calls from several threads share the pool and keep their buffers apart."""
    problems = []
    for k in (5, 6, 7, 8):
        x, w = random(rng, (1, 1, 60 + k, 50), "float64"), random(rng, (1, 1, k, k + 1), "float64")
        spec = make_spec(x, w, 1, "same")
        problems.append((x, w, spec, plan_for_lengths(spec, (24, 20))))
    serial = [convolve_tiles(*p, 2) for p in problems]
    with ThreadPoolExecutor(4) as callers:
        concurrent = list(callers.map(lambda p: convolve_tiles(*p, 2), problems * 3))
    for got, expected in zip(concurrent, serial * 3):
        np.testing.assert_array_equal(got, expected)
    for (x, w, spec, _), got in zip(problems, serial):
        pads = spec.pad_widths
        assert_close_scaled(got, correlate_oracle(x, w, pads), "float64")


def test_large_tiles_bypass_the_buffer_cache(rng, monkeypatch):
    """Scratch arrays over BUFFER_CACHE_BYTES are allocated per call, with the same results."""
    monkeypatch.setattr(fft_module, "BUFFER_CACHE_BYTES", 1024)
    x, w = random(rng, (1, 1, 50, 50), "float64"), random(rng, (1, 1, 7, 6), "float64")
    spec = make_spec(x, w, 1, 3)
    out = convolve_tiles(x, w, spec, plan_for_lengths(spec, (24, 24)), 2)
    assert_close_scaled(out, correlate_oracle(x, w, ((3, 3), (3, 3))), "float64")


def test_plan_for_lengths_rejects_short_tiles(rng):
    x, w = random(rng, (1, 1, 30, 30), "float64"), random(rng, (1, 1, 9, 9), "float64")
    spec = make_spec(x, w)
    with pytest.raises(ValueError, match="plan_for_lengths"):
        plan_for_lengths(spec, (8, 16))
    with pytest.raises(ValueError, match="plan_for_lengths"):
        plan_for_lengths(spec, (16,))


# --------------------------------------------------------------------------------------
# The public API on the planner's own tiling, against scipy.signal
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("shape, kernel", [((120, 97), (15, 15)), ((90, 111), (16, 11)),
                                           ((300,), (31,)), ((4000,), (256,))])
def test_convolve_method_fft_matches_scipy(rng, mode, shape, kernel):
    x, w = rng.standard_normal(shape), rng.standard_normal(kernel)
    out = trueconv.convolve(x, w, mode=mode, method="fft")
    assert_close_scaled(out, scipy.signal.convolve(x, w, mode=mode, method="direct"), "float64")
    corr = trueconv.correlate(x, w, mode=mode, method="fft")
    assert_close_scaled(corr, scipy.signal.correlate(x, w, mode=mode, method="direct"), "float64")


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_convolve_method_fft_dtypes(rng, dtype):
    x, w = random(rng, (70, 64), dtype), random(rng, (13, 12), dtype)
    out = trueconv.convolve(x, w, mode="same", method="fft")
    expected = scipy.signal.convolve(x.astype(np.complex128 if dtype[0] == "c" else np.float64),
                                     w.astype(np.complex128 if dtype[0] == "c" else np.float64),
                                     mode="same", method="direct")
    assert_close_scaled(out, expected, dtype)


def test_planner_tiling_is_used_by_run(rng):
    """FFT.run follows tile_plan: the same result as convolve_tiles with that plan."""
    x, w = random(rng, (1, 1, 200, 180), "float64"), random(rng, (1, 1, 31, 31), "float64")
    spec = make_spec(x, w, 1, "same")
    out = FFT().run(x, w, spec)
    np.testing.assert_array_equal(out, convolve_tiles(x, w, spec, tile_plan(spec),
                                                      trueconv.get_num_threads()))
    assert_close_scaled(out, correlate_oracle(x, w, spec.pad_widths), "float64")


def test_errors_in_threads_propagate(rng, monkeypatch):
    """A failure in the kernel transform (calling thread) or in a tile run (any thread)
    reaches the caller, and the pool stays usable."""
    x, w = random(rng, (1, 1, 60, 60), "float64"), random(rng, (1, 1, 5, 5), "float64")
    spec = make_spec(x, w, 1, 2)
    plan = plan_for_lengths(spec, (16, 16))

    def broken(*args, **kwargs):
        raise FloatingPointError("injected")

    with monkeypatch.context() as patch:
        patch.setattr(fft_module, "_kernel_spectrum", broken)
        with pytest.raises(FloatingPointError, match="injected"):
            convolve_tiles(x, w, spec, plan, 2)
    with monkeypatch.context() as patch:
        patch.setattr(fft_module, "_store", broken)
        with pytest.raises(FloatingPointError, match="injected"):
            convolve_tiles(x, w, spec, plan, 2)
    out = convolve_tiles(x, w, spec, plan, 2)
    assert_close_scaled(out, correlate_oracle(x, w, ((2, 2), (2, 2))), "float64")


def test_read_only_and_broadcast_inputs_are_viewed_not_written(rng):
    """Interior runs read the input in place: read-only and stride-0 inputs work, untouched."""
    row = rng.standard_normal((1, 1, 1, 90))
    inputs = [np.broadcast_to(row, (1, 1, 80, 90)), rng.standard_normal((1, 1, 80, 90))]
    inputs[1].setflags(write=False)
    w = random(rng, (1, 1, 5, 6), "float64")
    for x in inputs:
        spec = make_spec(x, w, 1, 0)
        plan = plan_for_lengths(spec, (16, 18))
        before = fingerprint(x, w)
        out = convolve_tiles(x, w, spec, plan, 2)
        assert fingerprint(x, w) == before
        assert_close_scaled(out, correlate_oracle(np.array(x), w, ((0, 0), (0, 0))), "float64")
