"""trueconv.dask against independent oracles, on a real multi-process dask.distributed cluster.

Oracles: scipy.signal (convolve/correlate/convolve2d, with np.pad for the boundary
rules in N-d) for ``trueconv.dask.convolve``; torch on CPU (tests/references.py)
for ``trueconv.dask.conv``. Each result is also compared with the in-memory
trueconv call on the whole array, which is the contract ("chunked = whole").

Cases are computed in one ``dask.compute`` per test, so the process cluster's
per-call overhead is paid a few times, not once per case. The cluster cases pin
``algorithm`` to im2col (BLAS) or fft: the workers are fresh processes, and the
direct algorithm's Numba loops would be JIT-compiled again in each of them
(seconds per signature on a busy machine); ``auto`` runs on the threaded
scheduler below, where the compiled loops are shared with the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import dask  # noqa: E402
import scipy.signal as ss  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import trueconv  # noqa: E402
import trueconv.dask as tdask  # noqa: E402
from references import assert_close_scaled, fingerprint, torch_conv  # noqa: E402

NUMPY_BOUNDARY = {"fill": "constant", "wrap": "wrap", "symm": "symmetric"}
CLUSTER_ALGORITHMS = ("im2col", "fft")


@pytest.fixture(scope="module")
def client():
    """Two worker *processes*, one thread each: results travel by pickle, as on a real cluster."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
        # ":0": the scheduler's HTTP server takes a free port. None still binds 8787,
        # which another cluster on the machine may hold (a UserWarning, an error here).
        dashboard_address=":0",
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# --------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------
def signal_oracle(a, kernel, mode, boundary, fillvalue, kind):
    """scipy.signal on the np.pad-extended input ('same' centring: pads (k//2, (k-1)//2))."""
    if mode == "same":
        pads = [(k // 2, (k - 1) // 2) for k in kernel.shape]
        extra = {"constant_values": fillvalue} if boundary == "fill" else {}
        a = np.pad(a, pads, mode=NUMPY_BOUNDARY[boundary], **extra)
    fn = ss.convolve if kind == "convolution" else ss.correlate
    return fn(a, kernel, "valid", method="direct")


def check_signal(case, got):
    a, kernel, mode, boundary, fillvalue, kind = case
    expected = signal_oracle(a, kernel, mode, boundary, fillvalue, kind)
    assert_close_scaled(got, expected, np.result_type(a, kernel))
    if boundary == "fill" and fillvalue == 0:  # the in-memory trueconv call, whole array
        in_memory = trueconv.convolve if kind == "convolution" else trueconv.correlate
        whole = in_memory(a, kernel, mode)
        assert_close_scaled(got, whole)
        # and SciPy's own 'same'/'valid' (checks the oracle's centring too)
        fn = ss.convolve if kind == "convolution" else ss.correlate
        assert_close_scaled(got, fn(a, kernel, mode, method="direct"), whole.dtype)
    if a.ndim == 2 and kind == "convolution" and mode == "same":
        expected2d = ss.convolve2d(a, kernel, "same", boundary, fillvalue)
        assert_close_scaled(got, expected2d, np.result_type(a, kernel))


def threads(result):
    """Compute on dask's threaded scheduler (in this process)."""
    return result.compute(scheduler="threads")


# shape, chunks, kernel shape, mode, boundary, fillvalue, kind
SIGNAL_CASES = [
    # chunks that do not divide the shape, odd and even kernels, every boundary
    ((17, 13), (5, 4), (3, 3), "same", "fill", 0, "convolution"),
    ((17, 13), (5, 4), (4, 2), "same", "fill", 0, "convolution"),
    ((17, 13), (5, 4), (4, 2), "same", "fill", 0, "correlation"),
    ((17, 13), (6, 5), (3, 4), "same", "fill", 1.5, "convolution"),
    ((17, 13), (5, 4), (4, 3), "same", "wrap", 0, "convolution"),
    ((17, 13), (5, 4), (2, 5), "same", "symm", 0, "convolution"),
    ((17, 13), (5, 4), (4, 4), "same", "symm", 0, "correlation"),
    ((17, 13), (5, 4), (4, 3), "same", "wrap", 0, "correlation"),
    # kernels larger than a chunk's interior (chunks get merged)
    ((23, 19), (3, 2), (9, 8), "same", "symm", 0, "convolution"),
    ((23, 19), (3, 2), (8, 7), "same", "wrap", 0, "correlation"),
    ((23, 19), (4, 3), (7, 6), "valid", "fill", 0, "convolution"),
    ((23, 19), (4, 3), (6, 7), "valid", "fill", 0, "correlation"),
    # halo larger than the whole array: wrap/symm extend fold by fold, like np.pad
    ((5, 4), (2, 3), (13, 11), "same", "symm", 0, "convolution"),
    ((5, 4), (2, 3), (12, 10), "same", "wrap", 0, "correlation"),
    ((5, 4), (2, 3), (12, 9), "same", "fill", -2.0, "convolution"),
    # 1-D and 3-D
    ((31,), (7,), (6,), "same", "symm", 0, "convolution"),
    ((31,), (7,), (5,), "valid", "fill", 0, "correlation"),
    ((9, 8, 7), (4, 3, 5), (3, 4, 2), "same", "wrap", 0, "convolution"),
    ((9, 8, 7), (4, 3, 5), (2, 3, 4), "same", "symm", 0, "correlation"),
    ((9, 8, 7), (4, 3, 5), (3, 2, 3), "valid", "fill", 0, "convolution"),
]


def make_signal_cases(rng, complex_every=4):
    cases = []
    for i, (shape, chunks, kshape, mode, boundary, fill, kind) in enumerate(SIGNAL_CASES):
        a = rng.standard_normal(shape)
        kernel = rng.standard_normal(kshape)
        if i % complex_every == 2:  # complex: SciPy's correlate conjugates the kernel
            a = a + 1j * rng.standard_normal(shape)
            kernel = kernel + 1j * rng.standard_normal(kshape)
        cases.append(((a, kernel, mode, boundary, fill, kind), chunks))
    return cases


# --------------------------------------------------------------------------
# convolve
# --------------------------------------------------------------------------
def test_convolve_equals_scipy_and_in_memory_on_process_cluster(client, rng):
    cases = make_signal_cases(rng)
    lazy = []
    for (a, kernel, mode, boundary, fill, kind), chunks in cases:
        before = fingerprint(a, kernel)
        algorithm = CLUSTER_ALGORITHMS[len(lazy) % 2]
        result = tdask.convolve(da.from_array(a, chunks=chunks), kernel, mode, boundary, fill,
                                kind, algorithm=algorithm)
        assert fingerprint(a, kernel) == before
        assert isinstance(result, da.Array)
        lazy.append(result)
    computed = dask.compute(*lazy, scheduler=client)
    for (case, chunks), result, got in zip(cases, lazy, computed):
        assert result.shape == got.shape and result.dtype == got.dtype, case[2:]
        check_signal(case, got)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(data=st.data())
def test_convolve_any_chunking_equals_scipy(data):
    """Random shapes, chunkings (including chunks smaller than the halo), kernels and rules."""
    ndim = data.draw(st.integers(1, 3), label="ndim")
    sizes = st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)
    shape = tuple(data.draw(sizes, label="shape"))
    chunks = tuple(data.draw(st.integers(1, n), label="chunk") for n in shape)
    kshape = tuple(data.draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    fits = all(k <= n for k, n in zip(kshape, shape))
    mode = "valid" if fits and data.draw(st.booleans(), label="valid") else "same"
    boundary = data.draw(st.sampled_from(["fill", "wrap", "symm"]), label="boundary")
    kind = data.draw(st.sampled_from(["convolution", "correlation"]), label="kind")
    fill = data.draw(st.sampled_from([0.0, 2.5]), label="fill") if boundary == "fill" else 0
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape) * 10 + sum(kshape))
    a, kernel = rng.standard_normal(shape), rng.standard_normal(kshape)
    got = tdask.convolve(da.from_array(a, chunks=chunks), kernel, mode, boundary, fill, kind)
    check_signal((a, kernel, mode, boundary, fill, kind), got.compute(scheduler="threads"))


def test_convolve_same_keeps_the_input_chunks_and_exchanges_exactly_the_halo(monkeypatch):
    # Record the blocks the per-chunk function receives: each must be its chunk
    # plus (k // 2, (k - 1) // 2) neighbours per axis, nothing more, and the
    # output chunks must be the input chunks.
    seen = []
    original = tdask._correlate_block

    def spy(block, **kwargs):
        seen.append(block.shape)
        return original(block, **kwargs)

    monkeypatch.setattr(tdask, "_correlate_block", spy)
    a = np.arange(20.0 * 18).reshape(20, 18)
    kernel = np.ones((4, 3))
    result = tdask.convolve(da.from_array(a, chunks=(7, 6)), kernel, boundary="symm")
    assert result.chunks == ((7, 7, 6), (6, 6, 6))
    got = result.compute(scheduler="sync")
    assert sorted(set(seen)) == sorted({(r + 3, c + 2) for r in (7, 6) for c in (6,)})
    assert_close_scaled(got, ss.convolve2d(a, kernel, "same", "symm"))


def test_convolve_merges_chunks_smaller_than_the_halo():
    a = da.ones((30, 7), chunks=(2, 7))
    result = tdask.convolve(a, np.ones((9, 1)))
    assert all(c >= 4 for c in result.chunks[0]) and sum(result.chunks[0]) == 30
    expected = ss.convolve(np.ones((30, 7)), np.ones((9, 1)), "same")
    assert_close_scaled(threads(result), expected)


def test_convolve_threaded_scheduler_dtypes(rng):
    # float32 within the core tolerance, integers exact, float16 computed in float32
    a32 = rng.standard_normal((19, 23)).astype(np.float32)
    k32 = rng.standard_normal((5, 4)).astype(np.float32)
    got = threads(tdask.convolve(da.from_array(a32, chunks=(6, 7)), k32, boundary="wrap"))
    expected = signal_oracle(a32.astype(np.float64), k32.astype(np.float64), "same", "wrap", 0,
                             "convolution")
    assert_close_scaled(got, expected, np.float32)
    a16 = rng.integers(-100, 100, (15, 14)).astype(np.int16)
    k8 = rng.integers(-3, 4, (4, 3)).astype(np.int8)
    got = threads(tdask.convolve(da.from_array(a16, chunks=(4, 5)), k8, kind="correlation"))
    assert got.dtype == np.int16
    expected = ss.correlate(a16.astype(np.int64), k8.astype(np.int64), "same")
    np.testing.assert_array_equal(got, expected)
    h = rng.standard_normal((12, 9)).astype(np.float16)
    got = threads(tdask.convolve(da.from_array(h, chunks=5), np.ones((2, 3), np.float16)))
    assert_close_scaled(got, trueconv.convolve(h, np.ones((2, 3), np.float16), "same"), np.float16)


def test_convolve_integer_overflow_raises_not_wraps():
    a = da.from_array(np.full((6, 6), 100, np.int8), chunks=3)
    with pytest.raises(OverflowError, match="do not fit the result dtype int8"):
        tdask.convolve(a, np.ones((3, 3), np.int8)).compute(scheduler="threads")


def test_convolve_pins_one_algorithm_and_keeps_nan_local(monkeypatch, rng):
    used = []
    original = tdask.conv_with_plan
    this_thread = threading.get_ident()

    def spy(*args, **kwargs):
        out, plan = original(*args, **kwargs)
        # scheduler="sync" runs every block here; a call from another thread is some earlier
        # test's computation still draining (seen once in CI: 10 calls for 9 blocks)
        if threading.get_ident() == this_thread:
            used.append(plan.algorithm)
        return out, plan

    monkeypatch.setattr(tdask, "conv_with_plan", spy)
    a = rng.standard_normal((48, 40))
    kernel = rng.standard_normal((9, 9))  # 81 taps: the planner picks a transform
    # 3 x 3 blocks of 16 x 16 (8 x 16 at the end), extended by the 4 + 4 halo: 24 x 24 at most
    expected_plan = trueconv.plan((1, 1, 24, 24), (1, 1, 9, 9), np.float64).algorithm
    tdask.convolve(da.from_array(a, chunks=(16, 16)), kernel).compute(scheduler="sync")
    assert len(used) == 9 and set(used) == {expected_plan}

    used.clear()
    a[20, 20] = np.nan  # inside block (1, 1) and no neighbour's halo
    got = tdask.convolve(da.from_array(a, chunks=(16, 16)), kernel).compute(scheduler="sync")
    expected = ss.convolve(a, kernel, "same", method="direct")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))  # NaN stays in its footprint
    assert_close_scaled(got, expected)
    assert used.count(expected_plan) == 8 + tdask.ALGORITHMS[expected_plan].exact
    assert all(tdask.ALGORITHMS[name].exact for name in used if name != expected_plan)


def test_convolve_is_lazy():
    def explode(block):
        raise RuntimeError("computed too early")

    a = da.ones((10, 10), chunks=5).map_blocks(explode, dtype=float)
    result = tdask.convolve(a, np.ones((3, 3)), boundary="wrap")  # builds the graph only
    assert isinstance(result, da.Array) and result.shape == (10, 10)
    with pytest.raises(RuntimeError, match="computed too early"):
        result.compute(scheduler="sync")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((5, 5)), "valid"), ValueError,
         r"kernel must not be larger than a on any axis.*\(4, 4\).*\(5, 5\)"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), "full"), ValueError,
         "mode must be 'same' or 'valid'"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), "spam"), ValueError,
         "acceptable mode flags"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), boundary="x"), ValueError,
         "acceptable boundary flags"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones(3)), ValueError, "same dimensionality"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), kind="conv"), ValueError,
         "kind must be"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), fillvalue=[1, 2]), ValueError,
         "fillvalue must be scalar"),
        (lambda: tdask.convolve(da.ones((4, 4), dtype=bool), np.ones((3, 3))), TypeError,
         "dtype bool"),
        (lambda: tdask.convolve(None, np.ones((3, 3))), TypeError, "got None"),
        (lambda: tdask.convolve(da.ones((4, 4)), np.ones((3, 3)), algorithm="nope"), ValueError,
         "algorithm must be one of"),
    ],
)
def test_convolve_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------
# conv
# --------------------------------------------------------------------------
# x shape, x chunks, weight shape, stride, padding, dilation, groups, padding_mode, kind, bias
CORR, CONV = "correlation", "convolution"
CONV_CASES = [
    # stride and dilation across chunk borders, odd and even kernels, every padding_mode
    ((2, 3, 17, 15), (1, 3, 5, 4), (4, 3, 3, 3), 2, 1, 1, 1, "zeros", "correlation", True),
    ((2, 3, 17, 15), (1, 3, 5, 4), (4, 3, 4, 2), 3, ((2, 1), (0, 1)), 1, 1, "reflect", CORR, False),
    ((2, 3, 17, 15), (2, 3, 6, 4), (4, 3, 3, 3), (2, 1), 2, 2, 1, "replicate", CONV, True),
    ((2, 3, 17, 15), (1, 3, 4, 6), (4, 3, 2, 3), (1, 2), (3, 2), (2, 3), 1, "circular", CORR, True),
    ((1, 2, 16, 16), (1, 2, 5, 5), (2, 2, 4, 4), 1, "same", 1, 1, "zeros", "correlation", False),
    ((1, 2, 16, 16), (1, 2, 5, 5), (2, 2, 3, 3), 2, "same", 2, 1, "zeros", "convolution", False),
    # channel-chunked input with groups, batch-chunked input
    ((2, 6, 12, 11), (1, 2, 4, 5), (6, 2, 3, 3), 1, 1, 1, 3, "zeros", "correlation", True),
    ((5, 4, 9, 10), (2, 1, 9, 10), (2, 4, 3, 2), 1, 0, 1, 1, "reflect", "correlation", True),
    # kernel larger than a chunk's halo-free interior
    ((1, 1, 20, 21), (1, 1, 3, 2), (1, 1, 7, 6), 2, 3, 1, 1, "zeros", "correlation", False),
    ((1, 1, 30, 26), (1, 1, 2, 3), (1, 1, 5, 4), 1, 2, 3, 1, "circular", "convolution", True),
    # 1-D and 3-D, unbatched
    ((3, 2, 40), (1, 1, 7), (3, 2, 5), 3, 2, 2, 1, "reflect", "correlation", True),
    ((2, 9, 8, 7), (2, 4, 3, 5), (2, 2, 3, 2, 3), (2, 1, 2), 1, (1, 2, 1), 1, "replicate", CONV, False),
    ((2, 19, 18), (1, 4, 5), (2, 2, 3, 3), 2, 1, 1, 1, "zeros", "correlation", True),
]


def make_conv_cases(rng):
    cases = []
    for case in CONV_CASES:
        shape, chunks, wshape, stride, padding, dilation, groups, mode, kind, with_bias = case
        x = rng.standard_normal(shape)
        w = rng.standard_normal(wshape)
        b = rng.standard_normal(wshape[0]) if with_bias else None
        params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=mode, kind=kind)
        cases.append((x, chunks, w, b, params))
    return cases


def torch_oracle(x, w, b, params):
    p = dict(params)
    padding = p.pop("padding")
    if padding == "same":  # TF/JAX ceil rule (torch refuses it with stride > 1): explicit pairs
        nd = w.ndim - 2
        stride = (p["stride"],) * nd if np.isscalar(p["stride"]) else p["stride"]
        dilation = (p["dilation"],) * nd if np.isscalar(p["dilation"]) else p["dilation"]
        spatial = x.shape[-nd:]
        padding = []
        for n, k, s, d in zip(spatial, w.shape[2:], stride, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            padding.append((total // 2, total - total // 2))
    return torch_conv(x, w, b, padding=padding, **p)


# Which CONV_CASES run on the process cluster; the others (same coverage classes) run on
# threads, to keep the cluster's per-task cost inside the suite's time budget. The cluster
# share still has every padding_mode, stride and dilation across chunk borders, odd and
# even kernels, channel- and batch-chunked input, a kernel larger than a chunk, and 1-D.
CLUSTER_CONV_CASES = (0, 1, 2, 3, 4, 6, 7, 8, 10)


def check_conv_cases(cases, scheduler, pinned):
    lazy = []
    for i, (x, chunks, w, b, params) in enumerate(cases):
        algorithm = CLUSTER_ALGORITHMS[i % 2] if pinned else "auto"
        result = tdask.conv(da.from_array(x, chunks=chunks), w, b, **params, algorithm=algorithm)
        assert isinstance(result, da.Array)
        lazy.append(result)
    computed = dask.compute(*lazy, scheduler=scheduler)
    split = 0
    for (x, chunks, w, b, params), result, got in zip(cases, lazy, computed):
        whole = trueconv.conv(x, w, b, **params)
        assert result.shape == whole.shape and result.dtype == whole.dtype
        assert_close_scaled(got, torch_oracle(x, w, b, params), np.float64)
        assert_close_scaled(got, whole)
        split += any(len(c) > 1 for c in result.chunks[-(w.ndim - 2):])
    return split


def test_conv_equals_torch_and_in_memory_on_process_cluster(client, rng):
    cases = [case for i, case in enumerate(make_conv_cases(rng)) if i in CLUSTER_CONV_CASES]
    split = check_conv_cases(cases, client, pinned=True)
    assert split == len(cases) - 1  # all but the batch-only case split the output spatially


def test_conv_equals_torch_and_in_memory_threaded(rng):
    cases = [case for i, case in enumerate(make_conv_cases(rng)) if i not in CLUSTER_CONV_CASES]
    assert check_conv_cases(cases, "threads", pinned=False) == len(cases)


def test_conv_output_chunks_are_the_strided_positions():
    # stride 2, kernel 3, padding 1 over input chunks of 5: output chunk boundaries
    # sit where the outputs' window centres cross input chunk boundaries.
    x = da.zeros((1, 1, 20), chunks=(1, 1, 5))
    result = tdask.conv(x, np.ones((1, 1, 3)), stride=2, padding=1)
    assert result.chunks[2] == (3, 2, 3, 2)
    x = da.zeros((2, 1, 13, 13), chunks=(1, 1, 4, 5))
    same = tdask.conv(x, np.ones((1, 1, 3, 3)), padding="same")
    assert same.chunks[2:] == ((4, 4, 4, 1), (5, 5, 3))


def test_conv_threaded_scheduler_float32_and_integers(rng):
    x = rng.standard_normal((3, 4, 14, 13)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 4)).astype(np.float32)
    params = dict(stride=(2, 1), padding=((1, 2), (0, 3)), dilation=(1, 2), groups=2)
    got = threads(tdask.conv(da.from_array(x, chunks=(2, 1, 5, 4)), w, **params))
    assert_close_scaled(got, torch_conv(x, w, **params), np.float32)
    xi = rng.integers(-50, 50, (2, 2, 11, 9)).astype(np.int32)
    wi = rng.integers(-5, 5, (3, 2, 3, 2)).astype(np.int16)
    params = dict(stride=2, padding=1, padding_mode="circular")
    got = threads(tdask.conv(da.from_array(xi, chunks=(1, 1, 4, 4)), wi, **params))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, trueconv.conv(xi, wi, **params))


def test_conv_unbatched_and_empty_batch(rng):
    x = rng.standard_normal((3, 10, 9))
    w = rng.standard_normal((2, 3, 3, 3))
    got = threads(tdask.conv(da.from_array(x, chunks=(2, 4, 4)), w, padding=1, stride=2))
    assert_close_scaled(got, torch_conv(x[None], w, padding=1, stride=2)[0], np.float64)
    empty = tdask.conv(da.zeros((0, 3, 10, 9), chunks=(1, 3, 4, 4)), w, padding=1)
    out = empty.compute(scheduler="threads")
    assert out.shape == (0, 2, 10, 9) and out.dtype == np.float64


def test_conv_nan_does_not_leave_its_receptive_field(rng):
    x = rng.standard_normal((1, 1, 40, 40))
    x[0, 0, 3, 30] = np.nan
    w = rng.standard_normal((1, 1, 9, 9))
    got = threads(tdask.conv(da.from_array(x, chunks=(1, 1, 20, 20)), w, padding=4))
    expected = torch_conv(x, w, padding=4)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close_scaled(got, expected, np.float64)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(weight=np.ones((1, 3, 3, 3))), ValueError, "expected input .* to have 3 channels"),
        (dict(weight=np.ones((1, 2, 3, 3)), padding=4, padding_mode="reflect"), ValueError,
         "padding_mode='reflect' needs padding < input size"),
        (dict(weight=np.ones((1, 2, 3, 3)), stride=0), ValueError, "stride must be positive"),
        (dict(weight=np.ones((1, 2, 9, 3))), ValueError, "smaller than the effective kernel size"),
        (dict(weight=np.ones((1, 2, 3, 3)), algorithm="nope"), ValueError, "algorithm must be"),
        (dict(weight=np.ones((1, 2, 3, 3)), bias=np.ones(2)), ValueError, "expected bias"),
        (dict(weight=np.ones((1, 2, 3, 3)), bias=np.ones(1, complex)), TypeError,
         "bias of dtype complex128"),
    ],
)
def test_conv_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        tdask.conv(da.ones((1, 2, 4, 4), chunks=2), **kwargs)


# --------------------------------------------------------------------------
# zarr in, zarr out
# --------------------------------------------------------------------------
def write_zarr(path, data, chunks):
    store = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    store[:] = data
    return store


def test_filter_zarr_on_process_cluster_and_locally(client, tmp_path, rng):
    data = rng.standard_normal((37, 29)).astype(np.float32)
    write_zarr(tmp_path / "in.zarr", data, (10, 8))
    kernel = rng.standard_normal((5, 4)).astype(np.float32)
    expected = ss.convolve2d(data.astype(np.float64), kernel.astype(np.float64), "same", "symm")

    # with an active (default) client, filter_zarr runs on the cluster
    with distributed.Client(client.cluster) as local_default:
        assert distributed.default_client() is local_default
        out = tdask.filter_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", kernel, chunks=12,
                                progress=False)
    assert out.shape == data.shape and out.chunks == (12, 12) and out.dtype == np.float32
    assert_close_scaled(out[:], expected, np.float32)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        tdask.filter_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", kernel, progress=False)
    # no client: dask's threaded scheduler
    out = tdask.filter_zarr(tmp_path / "in.zarr", tmp_path / "out.zarr", kernel, mode="valid",
                            kind="correlation", overwrite=True, progress=False)
    expected = ss.correlate(data.astype(np.float64), kernel.astype(np.float64), "valid")
    assert_close_scaled(out[:], expected, np.float32)
    assert sorted(os.listdir(tmp_path)) == ["in.zarr", "out.zarr"]  # no temporary left behind


def test_filter_zarr_stack_progress_and_refusals(tmp_path, rng, capsys):
    stack = rng.standard_normal((3, 14, 12))
    write_zarr(tmp_path / "stack.zarr", stack, (1, 7, 6))
    kernel = rng.standard_normal((3, 3))
    out = tdask.filter_zarr(tmp_path / "stack.zarr", tmp_path / "f.zarr", kernel, boundary="wrap")
    for i in range(3):  # a 2-D kernel filters each image of the stack on its own
        assert_close_scaled(out[i], ss.convolve2d(stack[i], kernel, "same", "wrap"))
    assert "100%" in capsys.readouterr().err  # progress bar on stderr

    with pytest.raises(ValueError, match="target must differ from source"):
        tdask.filter_zarr(tmp_path / "stack.zarr", tmp_path / "stack.zarr", kernel, overwrite=True)
    with pytest.raises(ValueError, match="more dimensions than source"):
        tdask.filter_zarr(tmp_path / "stack.zarr", tmp_path / "g.zarr", np.ones((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="cannot open source"):
        tdask.filter_zarr(tmp_path / "missing.zarr", tmp_path / "g.zarr", kernel)
    with pytest.raises(ValueError, match="chunks must be"):
        tdask.filter_zarr(tmp_path / "stack.zarr", tmp_path / "g.zarr", kernel, chunks=(4, 4))

    # a failure while computing leaves neither the target nor a temporary store
    write_zarr(tmp_path / "big.zarr", np.full((8, 8), 100, np.int8), (4, 4))
    with pytest.raises(OverflowError):
        tdask.filter_zarr(tmp_path / "big.zarr", tmp_path / "bad.zarr", np.ones((3, 3), np.int8),
                          progress=False)
    assert sorted(os.listdir(tmp_path)) == ["big.zarr", "f.zarr", "stack.zarr"]


# --------------------------------------------------------------------------
# optional dependency
# --------------------------------------------------------------------------
def test_core_imports_without_dask_and_the_adapter_names_the_extra():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["dask"] = None  # as if dask were not installed
        import trueconv
        assert callable(trueconv.conv) and callable(trueconv.convolve)
        try:
            trueconv.dask
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("trueconv.dask imported without dask")
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "pip install 'trueconv[dask]'" in run.stdout
