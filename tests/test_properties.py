"""Hypothesis property tests over random shapes and parameters.

Every property compares with an independent reference or with an identity of
the mathematics (flip, conjugation, subsampling, linearity), never with
another trueconv path alone. Examples are bounded (max_examples, deadline=None)
to keep the suite fast; the database is off so runs are reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trueconv
from references import assert_close_scaled, conv_reference

ALGORITHM_NAMES = sorted(trueconv.ALGORITHMS)
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def conv_problems(draw, max_nd: int = 3, dtype: str = "float64"):
    """A valid conv call: shapes, parameters and data drawn together."""
    nd = draw(st.integers(1, max_nd))
    groups = draw(st.integers(1, 3))
    in_per_group = draw(st.integers(1, 2))
    out_per_group = draw(st.integers(1, 2))
    kernel = draw(st.lists(st.integers(1, 4 if nd < 3 else 3), min_size=nd, max_size=nd))
    stride = draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd))
    dilation = draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd))
    pads = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=nd,
                         max_size=nd))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    spatial = []
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        eff = d * (k - 1) + 1
        low = max(1, eff - lo - hi, max(lo, hi) + 1)  # fits; reflect needs pad < size
        spatial.append(draw(st.integers(low, low + (4 if nd < 3 else 2))))
    batch = draw(st.sampled_from([1, 2, None]))
    kind = draw(st.sampled_from(["correlation", "convolution"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    c_in, c_out = groups * in_per_group, groups * out_per_group
    x_shape = (c_in, *spatial) if batch is None else (batch, c_in, *spatial)
    if np.dtype(dtype).kind in "iu":
        x = rng.integers(-20, 21, x_shape).astype(dtype)
        w = rng.integers(-20, 21, (c_out, in_per_group, *kernel)).astype(dtype)
        bias = rng.integers(-20, 21, c_out).astype(dtype)
    else:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal((c_out, in_per_group, *kernel)).astype(dtype)
        bias = rng.standard_normal(c_out).astype(dtype)
    use_bias = draw(st.booleans())
    return dict(x=x, w=w, bias=bias if use_bias else None, stride=tuple(stride),
                padding=tuple(pads), dilation=tuple(dilation), groups=groups,
                padding_mode=padding_mode, kind=kind)


def call(problem: dict, **overrides) -> np.ndarray:
    p = {**problem, **overrides}
    return trueconv.conv(p["x"], p["w"], p["bias"], p["stride"], p["padding"], p["dilation"],
                         p["groups"], padding_mode=p["padding_mode"], kind=p["kind"],
                         algorithm=p.get("algorithm", "auto"))


def reference(problem: dict) -> np.ndarray:
    x = problem["x"]
    batched = x.ndim == problem["w"].ndim
    out = conv_reference(x if batched else x[np.newaxis], problem["w"], problem["bias"],
                         problem["stride"], problem["padding"], problem["dilation"],
                         problem["groups"], problem["padding_mode"], problem["kind"])
    return out if batched else out[0]


@settings(max_examples=60, **SETTINGS)
@given(problem=conv_problems(), algorithm=st.sampled_from(ALGORITHM_NAMES))
def test_matches_reference(problem, algorithm) -> None:
    try:
        actual = call(problem, algorithm=algorithm)
    except ValueError as exc:
        # the only acceptable failure: the algorithm says it cannot serve this call
        assert f"algorithm={algorithm!r} cannot serve this call" in str(exc)
        return
    assert_close_scaled(actual, reference(problem), np.float64)


@settings(max_examples=25, **SETTINGS)
@given(problem=conv_problems(max_nd=2, dtype="int64"))
def test_integers_exact(problem) -> None:
    actual = call(problem)
    np.testing.assert_array_equal(actual, reference(problem))
    assert actual.dtype == np.int64


@settings(max_examples=30, **SETTINGS)
@given(problem=conv_problems())
def test_convolution_is_correlation_with_flipped_weight(problem) -> None:
    w = problem["w"]
    flipped = np.ascontiguousarray(w[(Ellipsis, *([slice(None, None, -1)] * (w.ndim - 2)))])
    as_convolution = call({**problem, "kind": "convolution"})
    as_correlation = call({**problem, "kind": "correlation", "w": flipped})
    assert_close_scaled(as_convolution, as_correlation, np.float64)


@settings(max_examples=30, **SETTINGS)
@given(problem=conv_problems())
def test_stride_equals_subsampled_stride_one(problem) -> None:
    strided = call(problem)
    dense = call({**problem, "stride": (1,) * len(problem["stride"])})
    index = tuple(slice(None, None, s) for s in problem["stride"])
    subsampled = dense[(Ellipsis, *index)]
    assert_close_scaled(strided, subsampled, np.float64)


@settings(max_examples=25, **SETTINGS)
@given(problem=conv_problems(), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_linear_in_input_and_weight(problem, a, b) -> None:
    rng = np.random.default_rng(0)
    x2 = rng.standard_normal(problem["x"].shape)
    w2 = rng.standard_normal(problem["w"].shape)
    p = {**problem, "bias": None}
    combined = call({**p, "x": a * p["x"] + b * x2})
    separate = a * call(p) + b * call({**p, "x": x2})
    scale = max(np.abs(call(p)).max(initial=0), np.abs(call({**p, "x": x2})).max(initial=0))
    assert_close_scaled(combined, separate, np.float64, scale=max(scale, 1.0) * 4)
    combined_w = call({**p, "w": a * p["w"] + b * w2})
    separate_w = a * call(p) + b * call({**p, "w": w2})
    assert_close_scaled(combined_w, separate_w, np.float64,
                        scale=max(np.abs(separate_w).max(initial=0), 1.0) * 8)


signal_arrays = st.integers(1, 3).flatmap(
    lambda nd: st.tuples(st.lists(st.integers(1, 7), min_size=nd, max_size=nd),
                         st.lists(st.integers(1, 5), min_size=nd, max_size=nd),
                         st.integers(0, 2**32 - 1)))


@settings(max_examples=40, **SETTINGS)
@given(shapes=signal_arrays, mode=st.sampled_from(["full", "same", "valid"]),
       method=st.sampled_from(["auto", "direct", "fft"]))
def test_signal_functions_match_scipy(shapes, mode, method) -> None:
    shape1, shape2, seed = shapes
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape1) + 1j * rng.standard_normal(shape1)
    b = rng.standard_normal(shape2) + 1j * rng.standard_normal(shape2)
    for fn in ["convolve", "correlate"]:
        try:
            expected = getattr(ss, fn)(a, b, mode, method)
        except ValueError:
            with pytest.raises(ValueError, match="one must be at least as large"):
                getattr(trueconv, fn)(a, b, mode, method)
            continue
        assert_close_scaled(getattr(trueconv, fn)(a, b, mode, method), expected, np.complex128)
    if mode != "valid" or all(x >= y for x, y in zip(shape1, shape2)):
        # correlate(a, b) == convolve(a, conj(flip(b))), for every mode SciPy centres alike
        flipped = np.conj(b[(slice(None, None, -1),) * b.ndim])
        assert_close_scaled(trueconv.correlate(a, b, "full", method),
                            trueconv.convolve(a, flipped, "full", method), np.complex128)
        expected = ss.fftconvolve(a, b, mode)
        assert_close_scaled(trueconv.fftconvolve(a, b, mode), expected, np.complex128)
