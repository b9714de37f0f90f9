"""The dtype policy, in one table (after scikit-image's ``_supported_float_type``).

=================  ==================  ===========================================
input kind         compute dtype       result dtype
=================  ==================  ===========================================
bool, object, str  --                  TypeError
signed/unsigned    int64 (uint64 if    ``np.result_type(x, weight)``, exact;
integers           the result is)      OverflowError when it does not fit
float16            float32             float16
float32/float64    same                same
longdouble         longdouble          longdouble (direct paths only)
complex            same                same
=================  ==================  ===========================================

Nothing here (or in an algorithm) downcasts silently: an integer result that
does not fit the promoted dtype raises instead of wrapping (EDGE_CASES #43).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "add_bias",
    "as_array",
    "check_bias_dtype",
    "result_dtype",
    "compute_dtype",
    "check_integer_bound",
    "cast_result",
    "is_exact_dtype",
]


def as_array(value: object, name: str, fn: str) -> np.ndarray:
    """Return ``value`` as an ndarray of a supported dtype, without copying when possible."""
    if value is None:
        raise TypeError(f"{fn}: {name} must be an array-like of numbers, got None")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise TypeError(f"{fn}: {name} must be an array-like of numbers ({exc})") from None
    check_supported_dtype(array.dtype, name, fn)
    return array


def check_supported_dtype(dtype: np.dtype, name: str, fn: str) -> None:
    if dtype == np.bool_:
        raise TypeError(
            f"{fn}: {name} has dtype bool, which is not supported; cast explicitly, e.g. "
            f"{name}.astype(np.int64)"
        )
    if dtype.kind not in "iufc":
        raise TypeError(f"{fn}: {name} has unsupported dtype {dtype} (numbers only)")


def result_dtype(*dtypes: np.dtype) -> np.dtype:
    """NumPy promotion of the operands: the dtype the user gets back."""
    return np.result_type(*dtypes)


def check_bias_dtype(bias: np.dtype, result: np.dtype, fn: str) -> None:
    """The bias joins the result's dtype; it may not change its kind (int to float, real to complex).

    Any integer bias may go onto an integer result (the sum is checked exactly in
    :func:`add_bias`); a float bias onto a float or complex result is cast to it,
    as torch requires one dtype for all three operands.
    """
    if result.kind in "iu" and bias.kind in "iu":
        return
    if not np.can_cast(bias, result, "same_kind"):
        raise TypeError(
            f"{fn}: bias of dtype {bias} cannot be added to the {result} result "
            f"(np.result_type(x, weight)) without changing its kind; cast x and weight to "
            f"{np.result_type(result, bias)} or the bias to {result}"
        )


def add_bias(out: np.ndarray, bias: np.ndarray, fn: str) -> np.ndarray:
    """Add ``bias`` (one value per channel, axis 1) to ``out`` in place; integers never wrap."""
    if out.dtype.kind not in "iu":
        out += bias.astype(out.dtype).reshape(-1, *([1] * (out.ndim - 2)))
        return out
    info = np.iinfo(out.dtype)
    values = [int(b) for b in bias.tolist()]
    if out.size:
        axes = (0, *range(2, out.ndim))
        lows, highs = out.min(axis=axes).tolist(), out.max(axis=axes).tolist()
        for channel, (low, high, b) in enumerate(zip(lows, highs, values)):
            if low + b < info.min or high + b > info.max:
                raise OverflowError(
                    f"{fn}: adding bias[{channel}] = {b} to output channel {channel} (values in "
                    f"[{low}, {high}]) overflows the {out.dtype} accumulator; cast the inputs "
                    f"to float64 or use smaller values"
                )
    for channel, b in enumerate(values):
        if info.min <= b <= info.max:
            out[:, channel] += out.dtype.type(b)
        else:  # e.g. a uint64 bias beyond int64: exact in Python ints (the sums were checked)
            out[:, channel] = (out[:, channel].astype(object) + b).astype(out.dtype)
    return out


def compute_dtype(result: np.dtype) -> np.dtype:
    """Return the dtype arithmetic runs in for a given result dtype."""
    if result.kind in "iu":
        return np.dtype(np.uint64) if result == np.uint64 else np.dtype(np.int64)
    if result == np.float16:
        return np.dtype(np.float32)
    return result


def is_exact_dtype(dtype: np.dtype) -> bool:
    """Integer results must be exact: only integer-arithmetic paths may take them."""
    return dtype.kind in "iu"


def check_integer_bound(
    x: np.ndarray, weight: np.ndarray, terms: int, accumulator: np.dtype, fn: str
) -> None:
    """Refuse an integer problem whose accumulation could overflow ``accumulator``.

    ``max|x| * max|w| * terms`` bounds every partial sum; it is computed with
    Python ints so the check itself cannot overflow.
    """
    if x.size == 0 or weight.size == 0:
        return
    bound = _max_abs_int(x) * _max_abs_int(weight) * max(terms, 1)
    limit = np.iinfo(accumulator).max
    if bound > limit:
        raise OverflowError(
            f"{fn}: integer inputs could overflow the {accumulator} accumulator "
            f"(max|x| * max|weight| * {terms} terms = {bound} > {limit}); cast to float64 or "
            f"use smaller values"
        )


def cast_result(out: np.ndarray, result: np.dtype, fn: str) -> np.ndarray:
    """Cast the accumulator to the result dtype, refusing to wrap integers."""
    if out.dtype == result:
        return out
    if result.kind in "iu" and out.size:
        info = np.iinfo(result)
        low, high = out.min(), out.max()
        if low < info.min or high > info.max:
            raise OverflowError(
                f"{fn}: the exact result has values in [{low}, {high}], which do not fit the "
                f"result dtype {result} [{info.min}, {info.max}]; cast the inputs to a wider "
                f"integer type (e.g. np.int64) first"
            )
    return out.astype(result)


def _max_abs_int(array: np.ndarray) -> int:
    return max(abs(int(array.max())), abs(int(array.min())))


def max_abs(array: np.ndarray) -> float:
    return float(np.abs(array).max()) if array.size else 0.0


def fft_exact_for_integers(x: np.ndarray, weight: np.ndarray, terms: int) -> bool:
    """SciPy's guard: FFT may serve integers only when every sum stays well below 2**52."""
    return _max_abs_int(x) * _max_abs_int(weight) * max(terms, 1) < 2**50
