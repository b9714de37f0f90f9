"""Choose an algorithm for one canonical problem, and say why.

Like ``scipy.signal.choose_conv_method`` and torch's ``select_conv_backend``:
a pure function of the :class:`ConvSpec` plus two facts about the data that
change which algorithms are *allowed* (non-finite values, integer magnitudes).
Eligibility is decided before speed: ``auto`` never picks an algorithm whose
``supports()`` refuses the call, whose accuracy is below the dtype's bound, or
whose workspace does not fit even for a single batch item.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._memory import format_bytes, get_memory_limit
from ._spec import ConvSpec
from .algorithms import ALGORITHMS


@dataclass(frozen=True)
class Plan:
    """The algorithm chosen for a call, the reason, and how it will run.

    Attributes
    ----------
    algorithm : str
        Registry name of the algorithm that runs.
    reason : str
        One human sentence: why this algorithm.
    workspace_bytes : int
        Workspace of one batch chunk.
    batch_chunk : int
        Batch items per chunk (the workspace is split over the batch to fit the
        memory limit).
    measured : bool
        True if the choice came from timing candidates (autotuner).
    """

    algorithm: str
    reason: str
    workspace_bytes: int
    batch_chunk: int
    measured: bool = False


@dataclass(frozen=True)
class DataFacts:
    """What the planner must know about the values, not only the shapes."""

    finite: bool = True
    integer_fft_safe: bool = False


def check_algorithm_name(algorithm: object, fn: str) -> str:
    if not isinstance(algorithm, str) or (algorithm != "auto" and algorithm not in ALGORITHMS):
        names = ", ".join(repr(n) for n in ("auto", *sorted(ALGORITHMS)))
        raise ValueError(f"{fn}: algorithm must be one of {names}, got {algorithm!r}")
    return algorithm


def eligibility(spec: ConvSpec, name: str, facts: DataFacts) -> str | None:
    """Return None if ``name`` may serve ``spec`` with these values, else why not."""
    reason = ALGORITHMS[name].supports(spec)
    if reason is not None or ALGORITHMS[name].exact:
        return reason
    if np.dtype(spec.dtype).kind in "iu" and not facts.integer_fft_safe:
        return "integer inputs are too large for an exact result in float64 transforms"
    if not facts.finite:
        return "the input contains NaN or Inf, which a transform would spread beyond the kernel's footprint"
    return None


def batch_chunk_for(spec: ConvSpec, name: str, limit: int) -> tuple[int, int] | None:
    """Largest batch chunk whose workspace fits ``limit``; None if one item does not."""
    algorithm = ALGORITHMS[name]
    per_item = algorithm.workspace_bytes(spec.with_batch(1))
    output = int(np.prod(spec.full_output_shape)) * spec.itemsize
    room = limit - output
    if spec.batch == 0:
        return 0, 0
    if per_item > room:
        return None
    chunk = max(1, min(spec.batch, room // max(per_item, 1)))
    return chunk, algorithm.workspace_bytes(spec.with_batch(chunk))


@functools.lru_cache(maxsize=4096)
def _choose_cached(spec: ConvSpec, algorithm: str, facts: DataFacts, limit: int, fn: str) -> Plan:
    if algorithm != "auto":
        reason = eligibility(spec, algorithm, facts)
        if reason is not None:
            raise ValueError(f"{fn}: algorithm={algorithm!r} cannot serve this call: {reason}")
        fit = batch_chunk_for(spec, algorithm, limit)
        if fit is None:
            need = ALGORITHMS[algorithm].workspace_bytes(spec.with_batch(1))
            raise MemoryError(
                f"{fn}: algorithm={algorithm!r} would need {format_bytes(need)} of workspace for "
                f"one batch item (limit {format_bytes(limit)}); use algorithm='direct' or a Dask array"
            )
        return Plan(algorithm, "requested explicitly", fit[1], fit[0])
    return heuristic_plan(spec, facts, limit)


def heuristic_plan(spec: ConvSpec, facts: DataFacts, limit: int) -> Plan:
    """Pick by rules of thumb; each rule states its reason."""
    fits = {}
    for name in ALGORITHMS:
        if eligibility(spec, name, facts) is None:
            fit = batch_chunk_for(spec, name, limit)
            if fit is not None:
                fits[name] = fit

    def plan(name: str, reason: str) -> Plan:
        return Plan(name, reason, fits[name][1], fits[name][0])

    dtype = np.dtype(spec.dtype)
    # Transform cost ~ (planes) * F log F, direct cost ~ MACs: SciPy's _fftconv_faster idea.
    if "fft" in fits and spec.kernel_size >= 64 and all(s == 1 for s in spec.stride):
        return plan("fft", f"{spec.kernel_size}-tap kernel: FFT cost grows with the image, not the kernel")
    if "im2col" in fits and spec.kernel_size > 1 and dtype.kind in "fc":
        return plan("im2col", "one BLAS GEMM over gathered windows; workspace fits the memory limit")
    if "direct" in fits:
        why = "integer inputs: exact int64 accumulation" if dtype.kind in "iu" else \
            "no gather needed (1x1 kernel or workspace-bound call)"
        return plan("direct", why)
    name = next(iter(fits))
    return plan(name, "the only algorithm whose workspace fits the memory limit")


def choose(spec: ConvSpec, algorithm: str = "auto", facts: DataFacts = DataFacts(), *, fn: str = "plan") -> Plan:
    """Return the :class:`Plan` for ``spec`` (cached per spec, data facts and limit)."""
    check_algorithm_name(algorithm, fn)
    return _choose_cached(spec, algorithm, facts, get_memory_limit(), fn)


plan_cache = _choose_cached
