"""The planner: eligibility before speed, the cost model, plan(), and the thread count.

Speed rankings are machine-dependent, so the tests that check an eligibility
rule first force the cost model to *prefer* the algorithms the rule must
exclude (monkeypatched ``predict_seconds``) and check that the finite/small
variant of the same call does pick them: every exclusion test can fail.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from typing import ClassVar

import numpy as np
import pytest

import trueconv
from references import assert_close_scaled, conv_reference
from trueconv import _api, _calibration, _engine, _planner, _threads
from trueconv._api import conv_with_plan
from trueconv._planner import DataFacts, choose, eligibility
from trueconv._spec import ConvSpec
from trueconv.algorithms import ALGORITHMS
from trueconv.algorithms.direct import uses_compiled_kernel

EXACT = {name for name, a in ALGORITHMS.items() if a.exact}
TRANSFORMS = {name for name, a in ALGORITHMS.items() if not a.exact}


def spec2d(n=1, c=2, o=3, size=(12, 12), k=3, stride=1, dilation=1, groups=1, dtype="float64"):
    pad = ((k // 2, k // 2),) * len(size)
    return ConvSpec(n, c, o, groups, size, (k,) * len(size), (stride,) * len(size),
                    (dilation,) * len(size), pad, dtype)


@pytest.fixture(autouse=True)
def fresh_planner():
    trueconv.set_autotune(False)
    _planner.plan_cache.cache_clear()
    _planner.candidates.cache_clear()
    yield
    _planner.plan_cache.cache_clear()
    _planner.candidates.cache_clear()


@pytest.fixture
def prefer_transforms(monkeypatch):
    """Make the cost model rank transform algorithms first, so only eligibility can stop them."""
    def fake(spec, name, batch_chunk=None):
        return 1e-6 if name in TRANSFORMS else 1.0

    monkeypatch.setattr(_planner, "predict_seconds", fake)


class FakeTransform:
    """A non-exact algorithm with a configurable error bound and refusal (computes directly)."""

    name: ClassVar[str] = "fake"
    exact: ClassVar[bool] = False

    def __init__(self, bound: float = 0.0, refuse: str | None = None):
        self.bound, self.refuse = bound, refuse

    def supports(self, spec):
        return self.refuse

    def workspace_bytes(self, spec):
        return 0

    def error_bound(self, spec):
        return self.bound

    def run(self, x, weight, spec):
        return ALGORITHMS["direct"].run(x, weight, spec)


def install_fake(monkeypatch, fake, fastest=True):
    monkeypatch.setitem(ALGORITHMS, "fake", fake)
    if fastest:
        monkeypatch.setattr(_planner, "predict_seconds",
                            lambda spec, name, batch_chunk=None: 1e-6 if name == "fake" else 1.0)


# --- eligibility rules -------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "weight"])
def test_non_finite_data_never_goes_to_a_transform(prefer_transforms, rng, bad, where):
    x = rng.standard_normal((1, 2, 10, 10))
    w = rng.standard_normal((3, 2, 3, 3))
    _, finite_plan = conv_with_plan(x, w, padding=1)
    assert finite_plan.algorithm in TRANSFORMS  # the rule below is what stops it
    if where == "x":
        x[0, 0, 4, 5] = bad
    else:
        w[1, 0, 1, 2] = bad
    out, plan = conv_with_plan(x, w, padding=1)
    assert plan.algorithm in EXACT
    assert "NaN or Inf" in plan.reason
    # NaN/Inf stay inside the kernel's footprint, exactly as the direct sum has them
    with np.errstate(invalid="ignore"):
        assert_close_scaled(out, conv_reference(x, w, pad_widths=((1, 1), (1, 1))), np.float64)


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_nan_under_zero_weights_reaches_the_transform_output(monkeypatch, rng, transform):
    """auto checks a transform's output for NaN/Inf instead of its data where the output is
    smaller (engine.execute): that relies on NaN/Inf data reaching the output even where
    every weight they meet is zero, as 0 * NaN does in the direct sum."""
    monkeypatch.setattr(_planner, "predict_seconds",
                        lambda spec, name, batch_chunk=None: 1e-6 if name == transform else 1.0)
    x = rng.standard_normal((1, 3, 12, 12))
    w = rng.standard_normal((3, 3, 3, 3))
    assert _engine._check_output_instead(x, w, _api.prepare_conv(
        x, w, None, 1, 1, 1, 1, "zeros", "correlation", "auto", "conv")[3])
    assert conv_with_plan(x, w, padding=1)[1].algorithm == transform
    w[:, 1] = 0
    x[0, 1, 5, 6] = np.nan
    with np.errstate(invalid="ignore"):
        out, plan = conv_with_plan(x, w, padding=1)
        expected = conv_reference(x, w, pad_widths=((1, 1), (1, 1)))
    assert plan.algorithm in EXACT and "NaN or Inf" in plan.reason
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(expected).sum() == 3 * 9


def test_signal_api_with_nan_stays_exact(prefer_transforms, rng):
    a = rng.standard_normal(64)
    a[10] = np.nan
    out = trueconv.convolve(a, rng.standard_normal(9))
    assert np.isnan(out).sum() == 9  # one NaN sample touches exactly the 9 outputs of its footprint


def test_integers_beyond_the_guard_never_go_to_fft(prefer_transforms):
    x = np.full((1, 1, 6, 6), 2**26, dtype=np.int64)
    w = np.full((1, 1, 3, 3), 2**22, dtype=np.int64)  # 2**48 * 9 terms >= 2**50
    out, plan = conv_with_plan(x, w)
    assert plan.algorithm in EXACT
    assert "integer" in plan.reason
    np.testing.assert_array_equal(out, conv_reference(x, w))
    assert out.dtype == np.int64

    small = np.arange(36, dtype=np.int64).reshape(1, 1, 6, 6)
    out_small, plan_small = conv_with_plan(small, np.ones((1, 1, 3, 3), dtype=np.int64))
    assert plan_small.algorithm in TRANSFORMS  # exact after rounding: allowed
    np.testing.assert_array_equal(out_small, conv_reference(small, np.ones((1, 1, 3, 3), np.int64)))


def test_explicit_unsupported_algorithm_is_a_clear_value_error(monkeypatch, rng):
    install_fake(monkeypatch, FakeTransform(refuse="stride (2, 2) != 1"), fastest=False)
    x, w = rng.standard_normal((1, 2, 8, 8)), rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv: algorithm='fake' cannot serve this call: stride \(2, 2\) != 1"):
        trueconv.conv(x, w, stride=2, algorithm="fake")
    with pytest.raises(ValueError, match="algorithm must be one of 'auto', "):
        trueconv.conv(x, w, algorithm="fastest")
    # auto never picks a refusing algorithm, even when the cost model prefers it
    install_fake(monkeypatch, FakeTransform(refuse="stride (2, 2) != 1"))
    _, plan = conv_with_plan(x, w, stride=2)
    assert plan.algorithm != "fake" and "fake (stride (2, 2) != 1)" in plan.reason


@pytest.mark.skipif("winograd" not in ALGORITHMS, reason="winograd is not registered in this build")
def test_explicit_winograd_refuses_stride_2(rng):
    with pytest.raises(ValueError, match="algorithm='winograd' cannot serve this call"):
        trueconv.conv(rng.standard_normal((1, 2, 8, 8)), rng.standard_normal((2, 2, 3, 3)),
                      stride=2, algorithm="winograd")


def test_explicit_transform_refuses_nan():
    spec = spec2d()
    assert eligibility(spec, "fft", DataFacts(finite=False)) is not None
    with pytest.raises(ValueError, match="algorithm='fft' cannot serve this call: the input contains NaN"):
        choose(spec, "fft", DataFacts(finite=False), fn="conv")


@pytest.mark.parametrize("dtype, bound, picked", [
    ("float32", 1e-5, True), ("float32", 1e-3, False),
    ("float16", 1e-3, False), ("complex64", 5e-5, True),
    ("float64", 1e-12, True), ("float64", 1e-8, False), ("complex128", 1e-9, False),
])
def test_error_bound_above_the_dtype_tolerance_is_excluded(monkeypatch, rng, dtype, bound, picked):
    install_fake(monkeypatch, FakeTransform(bound=bound))
    x = rng.standard_normal((1, 2, 8, 8)).astype(dtype)
    w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
    out, plan = conv_with_plan(x, w, padding=1)
    assert (plan.algorithm == "fake") is picked
    if not picked:
        assert "exceeds the" in plan.reason and "tolerance" in plan.reason
    # an explicit request is the user's call: served, with the same result
    out_fake, explicit = conv_with_plan(x, w, padding=1, algorithm="fake")
    assert explicit.algorithm == "fake"
    assert_close_scaled(out_fake, out, dtype)  # fake computes directly; auto may take im2col


def test_dtype_tolerance_table():
    assert _planner.dtype_tolerance("float32") == 1e-4
    assert _planner.dtype_tolerance("complex64") == 1e-4
    assert _planner.dtype_tolerance("float64") == 1e-10
    assert _planner.dtype_tolerance("complex128") == 1e-10
    assert _planner.dtype_tolerance("int64") == 0.0


class FakeExact(FakeTransform):
    """An exact algorithm whose workspace is ``per_item`` bytes per batch item."""

    exact: ClassVar[bool] = True

    def __init__(self, per_item: int):
        super().__init__()
        self.per_item = per_item

    def workspace_bytes(self, spec):
        return self.per_item * spec.batch


def test_workspace_over_the_limit_excludes_the_algorithm(monkeypatch):
    spec = spec2d(n=2, c=4, o=4, size=(16, 16))
    output = int(np.prod(spec.full_output_shape)) * spec.itemsize
    direct_one = ALGORITHMS["direct"].workspace_bytes(spec.with_batch(1))
    install_fake(monkeypatch, FakeExact(per_item=10 * direct_one + 10**6))
    limit = output + 2 * direct_one + 10**5
    eligible, excluded = _planner.candidates(spec, DataFacts(), limit)
    assert "fake" not in {name for name, _, _ in eligible} and "direct" in {n for n, _, _ in eligible}
    assert any(name == "fake" and "over the memory limit" in why for name, why in excluded)
    with trueconv.memory_limit(limit):
        assert choose(spec).algorithm != "fake"  # although the cost model ranks it first
        with pytest.raises(MemoryError, match="algorithm='fake' would need"):
            choose(spec, "fake", fn="conv")
    with trueconv.memory_limit(output + 100 * direct_one + 10**7):
        assert choose(spec).algorithm == "fake"


def test_batch_is_chunked_to_fit(monkeypatch):
    spec = spec2d(n=8, c=2, o=2, size=(8, 8))
    install_fake(monkeypatch, FakeExact(per_item=10**6))
    output = int(np.prod(spec.full_output_shape)) * spec.itemsize
    with trueconv.memory_limit(output + 3 * 10**6 + 10):
        plan = choose(spec, "fake")
    assert plan.batch_chunk == 3 and plan.workspace_bytes == 3 * 10**6


# --- plan() ----------------------------------------------------------------------

SAMPLED_CALLS = [
    ((8, 64, 56, 56), (64, 64, 3, 3), "float32", dict(padding=1)),
    ((1, 3, 224, 224), (64, 3, 7, 7), "float32", dict(stride=2, padding=3)),
    ((8, 32, 112, 112), (32, 1, 3, 3), "float32", dict(padding=1, groups=32)),
    ((1, 1, 1024, 1024), (1, 1, 63, 63), "float64", dict(padding="same")),
    ((1, 1, 100000), (1, 1, 4096), "float64", {}),
    ((2, 16, 16, 32, 32), (16, 16, 3, 3, 3), "float32", dict(padding=1)),
    ((4, 8, 20), (4, 8, 5), "int64", dict(dilation=2)),
    ((4, 8, 20, 20), (4, 8, 3, 3), "complex128", dict(stride=2)),
    ((4, 8, 20, 20), (4, 8, 3, 3), "float16", {}),
]


@pytest.mark.parametrize("x_shape, w_shape, dtype, params", SAMPLED_CALLS)
def test_plan_fields_and_reason(x_shape, w_shape, dtype, params):
    plan = trueconv.plan(x_shape, w_shape, dtype, **params)
    assert isinstance(plan, trueconv.Plan)
    assert plan.algorithm in ALGORITHMS
    assert isinstance(plan.reason, str) and len(plan.reason) > 20 and "\n" not in plan.reason
    assert plan.reason.startswith(plan.algorithm)
    assert plan.measured is False
    assert isinstance(plan.workspace_bytes, int) and plan.workspace_bytes >= 0
    assert 1 <= plan.batch_chunk <= x_shape[0]
    if np.dtype(dtype).kind in "iu":
        assert plan.algorithm in EXACT  # plan() assumes no proof of small integers
    explicit = trueconv.plan(x_shape, w_shape, dtype, algorithm="direct", **params)
    assert explicit.algorithm == "direct" and explicit.reason == "requested explicitly"


def test_plan_reports_what_conv_runs(rng):
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    _, ran = conv_with_plan(x, w, padding=1)
    assert trueconv.plan(x.shape, w.shape, np.float32, padding=1) == ran


def test_cost_model_is_a_pure_increasing_function_of_work():
    small, large = spec2d(n=1, c=16, o=16, size=(32, 32)), spec2d(n=8, c=16, o=16, size=(32, 32))
    for name in ALGORITHMS:
        if ALGORITHMS[name].supports(small) is None:
            t_small = _planner.predict_seconds(small, name)
            assert t_small == _planner.predict_seconds(small, name) > 0
            assert _planner.predict_seconds(large, name) > t_small
    # an algorithm the model does not know is costed by its multiply-adds
    assert len(_planner.cost_features(small, "not-a-model")) == 2


def test_model_prefers_fft_for_a_large_kernel_and_not_for_3x3():
    # orders of magnitude apart, so any sane calibration agrees
    assert choose(spec2d(n=1, c=1, o=1, size=(1024, 1024), k=63)).algorithm == "fft"
    assert choose(spec2d(n=8, c=64, o=64, size=(56, 56), k=3, dtype="float32")).algorithm != "fft"


# --- calibration data ------------------------------------------------------------

def test_calibration_records_provenance():
    assert _calibration.CALIBRATIONS
    for table in _calibration.CALIBRATIONS:
        assert {"date", "machine", "versions", "threads", "blas", "coefficients"} <= set(table)
    for threads in (1, 2, 64):
        for name in ("direct", "im2col", "fft", "generic"):
            for precision in _calibration.PRECISIONS:
                assert all(c >= 0 for c in _calibration.coefficients(name, precision, threads))


def test_calibration_table_follows_the_thread_count(monkeypatch):
    one = {"threads": 1, "coefficients": {}}
    two = {"threads": 2, "coefficients": {}}
    four = {"threads": 4, "coefficients": {}}
    monkeypatch.setattr(_calibration, "CALIBRATIONS", [one, two, four])
    assert _calibration.active_calibration(1) is one
    assert _calibration.active_calibration(2) is two
    assert _calibration.active_calibration(3) is two  # a tie goes to fewer threads
    assert _calibration.active_calibration(16) is four
    monkeypatch.setattr(_calibration, "CALIBRATIONS", [one])
    assert _calibration.active_calibration(8) is one
    monkeypatch.setattr(_calibration, "CALIBRATIONS", [one, two])
    monkeypatch.setattr(_threads, "_num_threads", 1)
    assert _calibration.active_calibration() is one
    monkeypatch.setattr(_threads, "_num_threads", 2)
    assert _calibration.active_calibration() is two


def test_calibration_rewrites_its_own_table(tmp_path):
    copy = tmp_path / "calibration_copy.py"
    shutil.copy(_calibration.__file__, copy)
    original = _calibration.CALIBRATIONS
    base = original[0]
    table = dict(base, date="2000-01-01", machine={"cpu": "test", "cores": 1}, threads=7)
    _calibration.write(table, copy)
    tables = runpy.run_path(str(copy))["CALIBRATIONS"]
    assert tables[:-1] == original and tables[-1]["date"] == "2000-01-01"
    # a table of the same thread count replaces the older one
    _calibration.write(dict(table, date="2001-01-01"), copy)
    tables = runpy.run_path(str(copy))["CALIBRATIONS"]
    assert [t["threads"] for t in tables] == [t["threads"] for t in original] + [7]
    assert tables[-1]["date"] == "2001-01-01"
    assert tables[-1]["coefficients"] == base["coefficients"]
    copy.write_text("no table here\n")
    with pytest.raises(ValueError, match="no generated block"):
        _calibration.write(table, copy)


def _synthetic_timings(truth):
    """Timings that a known coefficient table predicts exactly (no machine involved)."""
    from trueconv.algorithms import ALGORITHMS

    timings = {}
    for precision in ("float32", "float64"):
        for spec in _calibration.training_specs(precision):
            timings.setdefault(precision, {})[_calibration.spec_key(spec)] = {
                name: float(np.dot(_planner.cost_features(spec, name), truth[name][precision]))
                for name, algorithm in ALGORITHMS.items()
                if algorithm.supports(spec) is None and name in truth}
    return {"threads": 2, "passes": 3, "timings": timings}


def test_calibration_fit_recovers_a_known_table_and_ranks_every_problem_right():
    truth = {name: {p: _calibration.coefficients(name, p, 2) for p in ("float32", "float64")}
             for name in ("direct", "im2col", "fft", "winograd")}
    timings = _synthetic_timings(truth)
    fitted = _calibration.fit(timings)
    report = _calibration.ranking_report(timings, fitted)
    total = sum(len(entries) for entries in timings["timings"].values())
    assert report.startswith(f"ranking: {total} of {total} training problems pick the measured winner")
    assert "0.0 ms lost" in report
    # a table that always predicts the slowest algorithm loses time, and says so
    inverted = {name: {p: [-c for c in coef] for p, coef in table.items()}
                for name, table in fitted.items()}
    assert not _calibration.ranking_report(timings, inverted).startswith(f"ranking: {total} of")


def test_calibration_refits_saved_timings_without_measuring(tmp_path, capsys, monkeypatch):
    truth = {name: {p: _calibration.coefficients(name, p, 2) for p in ("float32", "float64")}
             for name in ("direct", "im2col", "fft", "winograd")}
    saved = tmp_path / "timings.json"
    saved.write_text(json.dumps(_synthetic_timings(truth)))
    monkeypatch.setattr(_calibration, "measure_timings",
                        lambda *a, **k: pytest.fail("--timings must not measure"))
    before = _threads._num_threads
    try:
        assert _calibration.main(["--timings", str(saved), "--quiet"]) == 0
    finally:
        trueconv.set_num_threads(before or os.cpu_count() or 1)
        _threads._num_threads = before
    captured = capsys.readouterr()
    assert "ranking:" in captured.err and '"threads": 2' in captured.out
    with pytest.raises(SystemExit):
        _calibration.main(["--passes", "0"])


# --- threads ---------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    before = _threads._num_threads
    yield
    trueconv.set_num_threads(before or os.cpu_count() or 1)
    _threads._num_threads = before


@pytest.mark.parametrize("bad", [1.5, "2", True, np.True_, None, np.float64(2)])
def test_set_num_threads_rejects_non_integers(bad, restore_threads):
    with pytest.raises(TypeError, match="set_num_threads: n must be a positive integer"):
        trueconv.set_num_threads(bad)


@pytest.mark.parametrize("bad", [0, -1, np.int64(0)])
def test_set_num_threads_rejects_non_positive(bad, restore_threads):
    with pytest.raises(ValueError, match="set_num_threads: n must be a positive integer"):
        trueconv.set_num_threads(bad)


def test_set_num_threads_governs_blas_and_numba(restore_threads):
    from threadpoolctl import threadpool_info

    trueconv.set_num_threads(np.int64(1))
    assert trueconv.get_num_threads() == 1
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)
    if "numba" in sys.modules:
        assert sys.modules["numba"].get_num_threads() == 1


def test_num_threads_from_environment(monkeypatch, restore_threads):
    monkeypatch.setattr(_threads, "_num_threads", None)
    monkeypatch.setenv("TRUECONV_NUM_THREADS", "3")
    assert trueconv.get_num_threads() == 3
    monkeypatch.setenv("TRUECONV_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="TRUECONV_NUM_THREADS must be a positive integer"):
        trueconv.get_num_threads()
    monkeypatch.delenv("TRUECONV_NUM_THREADS")
    assert trueconv.get_num_threads() == (os.cpu_count() or 1)


# --- exact algorithms within the model's margin ------------------------------------

@pytest.mark.parametrize("transform_seconds, exact_seconds, expect_exact", [
    (1e-3, 1.05e-3, True),    # within 10% and 30 us: the exact algorithm
    (1e-5, 3.5e-5, True),     # tiny: 3.5x apart, but only 25 us
    (1e-5, 9e-5, False),      # 9x and 80 us faster: the transform
    (1e-3, 1.3e-3, False),    # 30% and 300 us faster: the transform
    (10e-3, 10.9e-3, True),
    (10e-3, 11.5e-3, False),
])
def test_exact_algorithm_preferred_within_the_margin(monkeypatch, transform_seconds,
                                                     exact_seconds, expect_exact):
    def fake(spec, name, batch_chunk=None):
        return transform_seconds if name == "fft" else exact_seconds if name == "direct" else 1.0

    monkeypatch.setattr(_planner, "predict_seconds", fake)
    plan = choose(spec2d(n=1, c=2, o=2, size=(20, 20), k=5))
    assert plan.algorithm == ("direct" if expect_exact else "fft")
    if expect_exact:
        assert "within the model's margin" in plan.reason and "fft" in plan.reason


def test_tiny_problems_keep_the_exact_sum(monkeypatch):
    # a 3x3 filter on a small image: integer-valued data must come back integer-valued
    x = np.arange(120.0).reshape(1, 1, 12, 10) % 7
    w = np.array([[0.0, -1, 0], [-1, 5, -1], [0, -1, 0]]).reshape(1, 1, 3, 3)
    for threads in (1, 2):
        monkeypatch.setattr(_threads, "_num_threads", threads)
        out, plan = conv_with_plan(x, w, padding=1)
        assert ALGORITHMS[plan.algorithm].exact
        assert np.array_equal(out, np.round(out))


def test_plan_cache_follows_the_thread_count(monkeypatch):
    seen = []
    real = _planner.heuristic_plan

    def spy(*args, **kwargs):
        seen.append(_threads.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(_planner, "heuristic_plan", spy)
    spec = spec2d()
    for threads in (1, 2, 1, 2):
        monkeypatch.setattr(_threads, "_num_threads", threads)
        choose(spec)
    assert seen == [1, 2]


@pytest.mark.parametrize("direct_share, expected", [(0.9, "im2col"), (0.7, "direct")])
def test_direct_gemm_path_must_beat_im2col_by_the_margin(monkeypatch, direct_share, expected):
    spec = spec2d(n=2, c=64, o=64, size=(14, 14), dtype="float32")  # direct's per-tap GEMM path
    assert not uses_compiled_kernel(spec)
    times = {"im2col": 1e-3, "direct": direct_share * 1e-3, "winograd": 5e-3, "fft": 9e-3}
    monkeypatch.setattr(_planner, "predict_seconds", lambda s, name, chunk=None: times[name])
    plan = _planner.heuristic_plan(spec, _planner.OPTIMISTIC, 2**40)
    assert plan.algorithm == expected
    if expected == "im2col":
        assert "fewer, wider" in plan.reason and "within 25%" in plan.reason
    # the compiled direct loop (few channels) is a different algorithm: no margin against it
    small = spec2d(n=2, c=2, o=2, size=(14, 14), dtype="float32")
    assert uses_compiled_kernel(small)
    assert _planner.heuristic_plan(small, _planner.OPTIMISTIC, 2**40).algorithm == "direct"
