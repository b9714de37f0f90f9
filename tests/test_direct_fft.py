"""The compiled direct path and the tiled FFT path, against independent oracles.

Oracles: torch (CPU, float64), the float64 / exact-integer direct sum
(``conv_reference``), ``scipy.signal.oaconvolve`` / ``fftconvolve`` and
``np.correlate``. The registry-wide comparison lives in test_conv_vs_torch.py;
this module covers what is specific to the two algorithms: which formulation
ran (compiled or GEMM per tap), tile borders and chunking of overlap-save,
integer exactness near the guards, NaN/Inf footprints, the FFT error bound,
and honest workspace sizes.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.signal

from references import TOLERANCE, assert_close_scaled, conv_reference, fingerprint, torch_conv
from trueconv._spec import ConvSpec, normalize_conv
from trueconv.algorithms import fft as fft_module
from trueconv.algorithms.direct import Direct, uses_compiled_kernel
from trueconv.algorithms.fft import FFT, error_bound, tile_plan


def make_spec(x: np.ndarray, w: np.ndarray, stride=1, padding=0, dilation=1, groups=1) -> ConvSpec:
    spec, _, _ = normalize_conv(x.shape, w.shape, None, stride, padding, dilation, groups,
                                "zeros", "correlation", "test", x.dtype)
    return spec


def random_pair(rng, x_shape, w_shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        x = rng.standard_normal(x_shape) + 1j * rng.standard_normal(x_shape)
        w = rng.standard_normal(w_shape) + 1j * rng.standard_normal(w_shape)
    elif dtype.kind in "iu":
        x = rng.integers(-50 if dtype.kind == "i" else 0, 50, x_shape)
        w = rng.integers(-50 if dtype.kind == "i" else 0, 50, w_shape)
    else:
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    return x.astype(dtype), w.astype(dtype)


def torch_pairs(padding) -> list:
    return [tuple(p) for p in padding] if isinstance(padding, tuple) else padding


# (x shape, weight shape, stride, (before, after) pads, dilation, groups): every rank,
# stride, dilation, asymmetric pads, groups, depthwise and channel multipliers.
CASES = [
    ((2, 3, 41), (4, 3, 5), 2, ((3, 1),), 1, 1),
    ((1, 2, 9000), (2, 1, 7), 1, ((3, 3),), 2, 2),  # rows longer than ROW_BLOCK
    ((2, 4, 9, 10), (6, 2, 3, 2), (2, 1), ((1, 2), (2, 0)), (1, 2), 2),
    ((2, 8, 12, 11), (8, 1, 3, 3), 1, ((1, 1), (1, 1)), 1, 8),  # depthwise
    ((1, 3, 16, 15), (6, 1, 3, 3), (1, 2), ((0, 2), (1, 1)), 1, 3),  # multiplier 2
    ((1, 1, 23, 19), (1, 1, 5, 4), (3, 2), ((4, 0), (0, 3)), (1, 2), 1),  # pad > kernel
    ((1, 4, 7, 8, 9), (4, 1, 3, 2, 3), (1, 2, 1), ((1, 1), (0, 1), (2, 0)), (1, 1, 2), 4),
    ((2, 2, 5, 6, 7), (3, 2, 2, 3, 2), 1, ((0, 0), (1, 1), (1, 0)), 1, 1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[f"{len(c[0]) - 2}d-{i}" for i, c in enumerate(CASES)])
def test_compiled_direct_matches_torch(rng, case, dtype):
    x_shape, w_shape, stride, pads, dilation, groups = case
    x, w = random_pair(rng, x_shape, w_shape, dtype)
    spec = make_spec(x, w, stride, pads, dilation, groups)
    assert uses_compiled_kernel(spec)  # the compiled loop is what this test exercises
    before = fingerprint(x, w)
    out = Direct().run(x, w, spec)
    assert fingerprint(x, w) == before
    expected = torch_conv(x, w, None, stride, torch_pairs(pads), dilation, groups)
    assert_close_scaled(out, expected, dtype)


@pytest.mark.parametrize("case", CASES[:4] + CASES[6:7], ids=lambda c: f"{len(c[0]) - 2}d")
def test_fft_matches_torch(rng, case):
    x_shape, w_shape, stride, pads, dilation, groups = case
    x, w = random_pair(rng, x_shape, w_shape, "float64")
    spec = make_spec(x, w, stride, pads, dilation, groups)
    out = FFT().run(x, w, spec)
    expected = torch_conv(x, w, None, stride, torch_pairs(pads), dilation, groups)
    assert_close_scaled(out, expected, "float64")


def test_direct_on_views_and_flipped_weights(rng):
    """Non-contiguous inputs and a reversed (negative-stride) weight view: same as contiguous."""
    x = rng.standard_normal((2, 6, 20, 18))[:, ::2, :, ::2]
    w = rng.standard_normal((3, 3, 3, 3))[..., ::-1, ::-1]
    spec = make_spec(x, w, 1, 1)
    for algorithm in (Direct(), FFT()):
        assert_close_scaled(algorithm.run(x, w, spec), torch_conv(x, w, None, 1, 1), "float64")


@pytest.mark.parametrize("dtype", ["complex128", "uint64", "float16"])
def test_direct_fallback_dtypes(rng, dtype):
    """Dtypes without a compiled loop take the GEMM-per-tap path, still exact/accurate."""
    compute = "float32" if dtype == "float16" else dtype
    x, w = random_pair(rng, (2, 4, 10, 9), (4, 2, 3, 3), compute)
    spec = make_spec(x, w, (2, 1), ((1, 0), (2, 1)), 1, 2)
    assert uses_compiled_kernel(spec) == (compute == "float32")
    out = Direct().run(x, w, spec)
    expected = conv_reference(x, w, stride=(2, 1), pad_widths=((1, 0), (2, 1)), groups=2)
    expected = expected.astype(compute) if compute == "uint64" else expected
    assert_close_scaled(out, expected, compute)


def test_many_channels_use_gemm_per_tap(rng):
    x, w = random_pair(rng, (1, 16, 8, 8), (4, 16, 3, 3), "float64")
    spec = make_spec(x, w, 1, 1)
    assert not uses_compiled_kernel(spec)
    assert uses_compiled_kernel(spec.with_dtype("int64"))  # integers: always compiled
    assert_close_scaled(Direct().run(x, w, spec), torch_conv(x, w, None, 1, 1), "float64")


# --------------------------------------------------------------------------------------
# Integers: exact, near the overflow guard (direct) and the 2**50 guard (FFT)
# --------------------------------------------------------------------------------------
def test_direct_int64_exact_near_overflow_guard(rng):
    # max|x| * max|w| * terms = 2**40 * 2**18 * 18 ~ 2**62.2 < 2**63: allowed, must be exact
    x = rng.integers(-2**40, 2**40, (2, 2, 9, 8), dtype=np.int64)
    w = rng.integers(-2**18, 2**18, (3, 2, 3, 3), dtype=np.int64)
    x[0, 0, 0, 0], w[0, 0, 0, 0] = 2**40, -2**18
    spec = make_spec(x, w, 1, ((1, 1), (2, 0)))
    assert uses_compiled_kernel(spec)
    out = Direct().run(x, w, spec)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, conv_reference(x, w, pad_widths=((1, 1), (2, 0))))


def test_fft_integers_exact_below_guard(rng):
    # 2**20 * 2**20 * (C * K = 2 * 225 < 2**9) < 2**49: inside SciPy's exactness guard
    x = rng.integers(-2**20, 2**20, (1, 2, 60, 50), dtype=np.int64)
    w = rng.integers(-2**20, 2**20, (2, 2, 15, 15), dtype=np.int64)
    spec = make_spec(x, w, 1, 7)
    out = FFT().run(x, w, spec)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, conv_reference(x, w, pad_widths=((7, 7), (7, 7))))


def test_fft_refuses_large_integers_and_longdouble():
    import trueconv

    x = np.full((1, 1, 8), 2**40, dtype=np.int64)
    w = np.full((1, 1, 3), 2**12, dtype=np.int64)
    with pytest.raises(ValueError, match="algorithm='fft' cannot serve this call: integer"):
        trueconv.conv(x, w, algorithm="fft")
    spec = ConvSpec(1, 1, 1, 1, (8,), (3,), (1,), (1,), ((0, 0),), np.dtype(np.longdouble).name)
    reason = FFT().supports(spec)
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
        assert reason is not None and "float64" in reason and "direct" in reason
    else:  # platforms where longdouble is float64 lose nothing
        assert reason is None


# --------------------------------------------------------------------------------------
# NaN / Inf: the compiled loop keeps a direct sum's footprint
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_direct_nan_inf_footprint(rng, dtype):
    x, w = random_pair(rng, (1, 2, 12, 13), (2, 1, 3, 3), dtype)
    x[0, 0, 5, 6] = np.nan
    x[0, 1, 2, 3] = np.inf
    x[0, 1, 9, 0] = -np.inf
    spec = make_spec(x, w, 1, 1, 1, 2)
    assert uses_compiled_kernel(spec)
    out = Direct().run(x, w, spec)
    with np.errstate(invalid="ignore"):  # inf - inf in the oracle is the point
        expected = conv_reference(x, w, pad_widths=((1, 1), (1, 1)), groups=2)
    assert 0 < np.isnan(out).sum() < out.size // 4  # only the footprint, never everything
    assert_close_scaled(out, expected, dtype)


def test_direct_infinite_weight_meets_padding(rng):
    """``0 * inf`` is NaN: padded taps must not be skipped when the weight is infinite."""
    x = rng.uniform(1, 2, (1, 1, 6, 7))
    w = rng.standard_normal((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf
    spec = make_spec(x, w, 1, 1)
    with np.errstate(invalid="ignore"):  # 0 * inf in both is the point
        out = Direct().run(x, w, spec)
        expected = conv_reference(x, w, pad_widths=((1, 1), (1, 1)))
    assert np.isnan(out[0, 0, 0]).all() and np.isinf(out[0, 0, 1:, 1:]).all()
    assert_close_scaled(out, expected, "float64")


# --------------------------------------------------------------------------------------
# Overlap-save tiling: tile borders, chunking, strides
# --------------------------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """Force short tiles (about twice the kernel) and several tile chunks.

    The cost model would often transform small test problems whole; tile
    borders are what these tests are about.
    """
    def short_tiles(extent: int, effective: int, outputs: int, stride: int) -> list[int]:
        return [min(fft_module.fast_length(max(2 * effective, 8)), fft_module.fast_length(extent))]

    monkeypatch.setattr(fft_module, "TILE_CHUNK_BYTES", 2**14)
    monkeypatch.setattr(fft_module, "_candidates", short_tiles)
    tile_plan.cache_clear()
    yield
    tile_plan.cache_clear()


@pytest.mark.parametrize("length, taps", [(5003, 33), (4096, 300), (2999, 2)])
def test_fft_1d_tiles_match_oaconvolve(rng, small_chunks, length, taps):
    x = rng.standard_normal(length)
    w = rng.standard_normal(taps)
    spec = make_spec(x[None, None], w[None, None], 1, taps - 1)  # scipy 'full'
    plan = tile_plan(spec)
    assert plan.tile_counts[0] > 1 and plan.chunk_rows < plan.tile_counts[0]
    out = FFT().run(x[None, None], w[None, None], spec)[0, 0]
    # correlation with w == convolution with w reversed
    assert_close_scaled(out, scipy.signal.oaconvolve(x, w[::-1]), "float64")
    np.testing.assert_allclose(out, np.correlate(x, w, "full"), rtol=0,
                               atol=1e-10 * np.abs(out).max())


def test_fft_2d_tiles_and_chunks_match_fftconvolve(rng, small_chunks):
    x = rng.standard_normal((301, 257)).astype(np.float32)
    w = rng.standard_normal((9, 14)).astype(np.float32)
    spec = make_spec(x[None, None], w[None, None], 1, ((4, 4), (6, 7)))
    plan = tile_plan(spec)
    assert min(plan.tile_counts) > 1 and plan.chunk_rows < plan.tile_counts[0]
    out = FFT().run(x[None, None], w[None, None], spec)[0, 0]
    full = scipy.signal.fftconvolve(x.astype(np.float64), w[::-1, ::-1].astype(np.float64), "full")
    # 'full' pads k - 1 on each side; ours pads (4, 4) and (6, 7)
    expected = full[8 - 4:, 13 - 6:][:out.shape[0], :out.shape[1]]
    assert out.shape == (301, 257)
    assert_close_scaled(out, expected, "float32")


@pytest.mark.parametrize("stride, dilation", [(3, 1), (2, 3), ((1, 4), (2, 1))])
def test_fft_tiled_strided_dilated_multichannel(rng, small_chunks, stride, dilation):
    x, w = random_pair(rng, (2, 4, 90, 70), (6, 2, 5, 4), "float64")
    spec = make_spec(x, w, stride, ((2, 3), (0, 5)), dilation, 2)
    assert max(tile_plan(spec).tile_counts) > 1
    out = FFT().run(x, w, spec)
    expected = torch_conv(x, w, None, stride, [(2, 3), (0, 5)], dilation, 2)
    assert_close_scaled(out, expected, "float64")


@pytest.mark.parametrize("channels", [1, 3, 16])  # broadcast, small broadcast-sum, batched matmul
def test_fft_channel_sum_paths(rng, channels):
    x, w = random_pair(rng, (2, channels, 24, 21), (3, channels, 7, 6), "complex64")
    spec = make_spec(x, w, 1, 3)
    out = FFT().run(x, w, spec)
    assert out.dtype == np.complex64
    expected = conv_reference(x, w, pad_widths=((3, 3), (3, 3)))
    assert_close_scaled(out, expected, "complex64")


# --------------------------------------------------------------------------------------
# Accuracy: the FFT error bound the planner relies on
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape", [((1, 1, 20000), (1, 1, 501)),
                                              ((1, 1, 150, 140), (1, 1, 31, 31)),
                                              ((2, 32, 24, 24), (8, 32, 5, 5))])
def test_fft_error_within_bound(rng, dtype, x_shape, w_shape):
    x, w = random_pair(rng, x_shape, w_shape, dtype)
    spec = make_spec(x, w, 1, "same")
    out = FFT().run(x, w, spec)
    expected = torch_conv(x, w, None, 1, "same")
    relative = float(np.abs(out - expected).max() / np.abs(expected).max())
    assert relative <= error_bound(spec) < TOLERANCE[dtype]


def test_fft_dynamic_range_is_normwise_only(rng):
    """EDGE_CASES #55: float32 FFT meets the bound relative to max|y|, not elementwise.

    This is why ``error_bound`` is relative to the output's scale, and why no
    spec-only bound can promise elementwise accuracy: where one transform holds
    values 1e6 times larger (here alternating blocks), the outputs that only
    see small values lose most of their digits; direct keeps them.
    """
    x = rng.standard_normal((1, 1, 8192)).astype(np.float32)
    large = (np.arange(8192) // 256) % 2 == 0
    x[..., large] *= 1e6
    w = rng.standard_normal((1, 1, 33)).astype(np.float32)
    spec = make_spec(x, w, 1, 0)
    expected = torch_conv(x, w, None, 1, 0)
    # outputs whose whole window holds small values only
    small = np.convolve(large.astype(int), np.ones(33, dtype=int), "valid") == 0
    for algorithm in (FFT(), Direct()):
        out = algorithm.run(x, w, spec)
        relative = float(np.abs(out - expected).max() / np.abs(expected).max())
        error = np.abs(out - expected)[..., small] / np.abs(expected)[..., small]
        if algorithm.name == "fft":
            assert relative <= error_bound(spec)
            assert float(np.median(error)) > 1e-3
        else:
            assert float(np.median(error)) < 1e-5


def test_error_bound_excludes_fft_for_huge_channel_sums():
    """The planner drops FFT when the bound exceeds the dtype tolerance (float32: 1e-4)."""
    big = ConvSpec(1, 4096, 8, 1, (64, 64), (11, 11), (1, 1), (1, 1), ((5, 5), (5, 5)), "float32")
    assert error_bound(big) > TOLERANCE["float32"]
    assert error_bound(big.with_dtype("float64")) < TOLERANCE["float64"]
    assert FFT().error_bound(big) == error_bound(big)


# --------------------------------------------------------------------------------------
# Determinism and honest workspace
# --------------------------------------------------------------------------------------
def test_direct_bitwise_across_threads_and_batch_splits(rng, monkeypatch):
    from trueconv import _threads

    from trueconv.algorithms import _kernels_numba

    from trueconv.algorithms._pool import compiled_parallel

    parallel_calls = []
    real_parallel = _kernels_numba._correlate_parallel

    def spy(*args):
        parallel_calls.append(len(args[-1]) - 1)  # tile ranges of the parallel launch
        return real_parallel(*args)

    monkeypatch.setattr(_kernels_numba, "_correlate_parallel", spy)
    monkeypatch.setattr(_kernels_numba, "MIN_MACS_PER_THREAD", 1 << 18)

    # 1.2e6 multiply-adds: with 2**18 per thread, enough for the kernel to use both threads
    x, w = random_pair(rng, (4, 3, 64, 61), (3, 1, 5, 5), "float32")
    spec = make_spec(x, w, 1, 2, 1, 3)
    before = _threads.get_num_threads()
    try:
        _threads.set_num_threads(1)
        one = Direct().run(x, w, spec)
        _threads.set_num_threads(2)
        two = Direct().run(x, w, spec)
        # the parallel launch took part (where Numba's threading layer allows one)
        assert bool(parallel_calls) == compiled_parallel()
        assert all(ranges > 2 for ranges in parallel_calls)
    finally:
        _threads.set_num_threads(before)
    split = np.concatenate([Direct().run(x[i:i + 1], w, spec.with_batch(1)) for i in range(4)])
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, split)


@pytest.mark.parametrize("algorithm, x_shape, w_shape, padding", [
    (FFT(), (2, 3, 700, 500), (4, 3, 21, 17), 10),  # tiled, several chunks
    (FFT(), (1, 1, 200000), (1, 1, 999), 0),
    (Direct(), (2, 2, 300, 300), (2, 1, 5, 5), 2),
])
def test_workspace_bytes_is_an_upper_bound(rng, algorithm, x_shape, w_shape, padding):
    """Peak NumPy allocations during run() stay within workspace_bytes + the output."""
    groups = x_shape[1] // w_shape[1]
    x, w = random_pair(rng, x_shape, w_shape, "float32")
    spec = make_spec(x, w, 1, padding, 1, groups)
    output = int(np.prod(spec.full_output_shape)) * 4
    tracemalloc.start()
    try:
        algorithm.run(x, w, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= algorithm.workspace_bytes(spec) + output + 2**16


def test_direct_concurrent_calls_match_serial(rng):
    """EDGE_CASES #89: calls from several threads share the worker pool without cross-talk."""
    from concurrent.futures import ThreadPoolExecutor

    from trueconv import _threads

    problems = []
    for channels in (1, 2, 3, 4):
        # >= 6e5 multiply-adds each, so every call splits its tiles over two threads
        x, w = random_pair(rng, (2, channels, 160, 130 + channels), (channels, 1, 3, 5), "float32")
        problems.append((x, w, make_spec(x, w, 1, 2, 1, channels)))
    serial = [Direct().run(*problem) for problem in problems]
    before = _threads.get_num_threads()
    try:
        _threads.set_num_threads(2)
        with ThreadPoolExecutor(4) as callers:
            concurrent = list(callers.map(lambda p: Direct().run(*p), problems * 3))
    finally:
        _threads.set_num_threads(before)
    for got, expected in zip(concurrent, serial * 3):
        np.testing.assert_array_equal(got, expected)
