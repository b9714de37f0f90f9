"""Run one canonical problem: plan it, split the batch, guard memory.

Both public faces (``_api`` for the deep-learning call, ``_signal`` for the
SciPy-style call) end here, so the two never call each other (ARCHITECTURE.md,
anti-pattern 13).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ._dtypes import check_integer_bound, fft_exact_for_integers
from ._memory import format_bytes, get_memory_limit
from ._planner import OPTIMISTIC, DataFacts, Plan, check_algorithm_name, choose
from ._spec import ConvSpec
from .algorithms import ALGORITHMS


def check_output_fits(spec: ConvSpec, itemsize: int, fn: str) -> None:
    """Refuse an output that alone exceeds the memory limit, before allocating it."""
    need = math.prod(spec.full_output_shape) * itemsize  # Python ints: no overflow
    limit = get_memory_limit()
    if need > limit:
        raise MemoryError(
            f"{fn}: the output of shape {spec.full_output_shape} needs {format_bytes(need)}, over "
            f"the memory limit of {format_bytes(limit)} (trueconv.set_memory_limit or "
            f"TRUECONV_MEMORY_LIMIT); use trueconv.dask for data larger than memory"
        )


def data_facts(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> DataFacts:
    """The value checks that decide whether a transform algorithm is allowed.

    One pass over the data; :func:`execute` asks only when the plan is a transform.
    """
    if x.dtype.kind in "iu":
        terms = spec.in_channels_per_group * spec.kernel_size
        return DataFacts(True, fft_exact_for_integers(x, weight, terms))
    return DataFacts(all_finite(x) and all_finite(weight), False)


def all_finite(a: np.ndarray) -> bool:
    """True if ``a`` holds no NaN or Inf."""
    if a.dtype.kind == "f":
        # max and min propagate NaN and show an infinity: two passes without a temporary
        # (isfinite().all() wrote a boolean array first; 94 -> 65 us on 1 MB out of cache)
        return not a.size or (math.isfinite(a.max()) and math.isfinite(a.min()))
    return bool(np.isfinite(a).all())


def _check_output_instead(x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> bool:
    """Whether the NaN/Inf check of a transform's floating-point data can wait for its output.

    A NaN or Inf among the samples a transform reads leaves NaN or Inf in its output (the
    transforms have no all-zero column, and Inf * 0 is NaN), so a finite output proves
    finite data; a non-finite one sends :func:`execute` back to the input check, whose
    answer is then the one it would have given first. The output is the smaller array in
    most calls (a weight gradient's output is the kernel), and it is still in cache.
    """
    return x.dtype.kind in "fc" and math.prod(spec.full_output_shape) <= x.size + weight.size


def _run(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, plan: Plan) -> np.ndarray:
    runner = ALGORITHMS[plan.algorithm]
    if plan.batch_chunk >= spec.batch:
        return runner.run(x, weight, spec)
    out = np.empty(spec.full_output_shape, dtype=x.dtype)
    for start in range(0, spec.batch, plan.batch_chunk):
        stop = min(start + plan.batch_chunk, spec.batch)
        out[start:stop] = runner.run(x[start:stop], weight, spec.with_batch(stop - start))
    return out


def execute(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, algorithm: str, fn: str
) -> tuple[np.ndarray, Plan]:
    """Return the cross-correlation ``(N, O, *out)`` in the compute dtype and its plan.

    ``x`` and ``weight`` are canonical (compute dtype, flipped if needed,
    padding_mode pre-pass applied); they are only read.
    """
    check_algorithm_name(algorithm, fn)
    check_output_fits(spec, x.dtype.itemsize, fn)
    if x.dtype.kind in "iu":
        check_integer_bound(x, weight, spec.in_channels_per_group * spec.kernel_size, x.dtype, fn)
    if spec.batch == 0 or spec.in_channels == 0 or spec.out_channels == 0:
        # A sum over an empty set is 0: zeros, never np.empty (tensorflow PR #126484).
        plan = Plan("direct" if algorithm == "auto" else algorithm, "empty problem", 0, spec.batch)
        return np.zeros(spec.full_output_shape, dtype=x.dtype), plan
    plan = choose(spec, algorithm, OPTIMISTIC, fn=fn)
    check_output = False
    if not ALGORITHMS[plan.algorithm].exact:
        # The value checks cost a pass over the data (about 1 ms per 25 MB): pay it only
        # when the choice depends on it (see OPTIMISTIC), and on the output where that is
        # the same answer for less (_check_output_instead).
        check_output = _check_output_instead(x, weight, spec)
        if not check_output:
            facts = data_facts(x, weight, spec)
            if facts != OPTIMISTIC:
                plan = choose(spec, algorithm, facts, fn=fn)
    # NaN/Inf data make a checked transform's arithmetic warn; that run is then discarded
    # below, so its warnings are not the caller's (np.errstate is thread-local)
    with np.errstate(invalid="ignore") if check_output else contextlib.nullcontext():
        out = _run(x, weight, spec, plan)
    if check_output and not all_finite(out):
        facts = data_facts(x, weight, spec)
        if facts != OPTIMISTIC:  # NaN/Inf data: the exact choice (or the refusal) it gets
            plan = choose(spec, algorithm, facts, fn=fn)
            del out  # not held while the exact run allocates its own output
            out = _run(x, weight, spec, plan)
    assert out.shape == spec.full_output_shape, (out.shape, spec)
    return out, plan
