"""Choose an algorithm for one canonical problem, and say why.

Like ``scipy.signal.choose_conv_method`` and torch's ``select_conv_backend``:
a pure function of the :class:`ConvSpec` plus two facts about the data that
change which algorithms are *allowed* (non-finite values, integer magnitudes).

Eligibility is decided before speed. ``auto`` never picks an algorithm

* whose ``supports()`` refuses the call;
* whose ``error_bound(spec)`` (expected max error relative to the output's
  scale; 0 for the exact algorithms) exceeds the dtype's tolerance: 1e-4 for
  float16/float32/complex64, 1e-10 for float64/complex128 (EDGE_CASES.md 3.3);
* that is a transform (FFT, Winograd) when the data holds NaN/Inf, which a
  transform spreads over the whole output, or integers too large for float64
  transforms to stay exact (SciPy's ``2**nmant`` guard);
* whose workspace does not fit the memory limit even for one batch item.

Speed is then predicted by a cost model: each algorithm's work on the spec is
described by a few counts (:func:`cost_features`: multiply-adds, bytes
gathered, BLAS calls, transform points), weighted by coefficients measured on
this kind of machine (``_calibration.py``, which records where they came from
and regenerates itself). With ``trueconv.set_autotune(True)`` the eligible
candidates are timed instead (``_autotune.py``) and the winner is cached on disk.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import _autotune
from ._calibration import active_calibration, coefficients, precision_class
from ._memory import format_bytes, get_memory_limit
from ._spec import ConvSpec
from ._threads import get_num_threads
from .algorithms import ALGORITHMS
from .algorithms import direct as direct_module
from .algorithms import fft as fft_module
from .algorithms import im2col as im2col_module
from .algorithms import winograd as winograd_module

__all__ = [
    "Plan",
    "DataFacts",
    "OPTIMISTIC",
    "choose",
    "eligibility",
    "check_algorithm_name",
    "cost_features",
    "predict_seconds",
    "dtype_tolerance",
]


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


#: The most permissive facts: every algorithm allowed that the shapes allow. Facts can
#: only remove transform algorithms, so an exact choice made under these stands.
OPTIMISTIC = DataFacts(finite=True, integer_fft_safe=True)


def check_algorithm_name(algorithm: object, fn: str) -> str:
    if not isinstance(algorithm, str) or (algorithm != "auto" and algorithm not in ALGORITHMS):
        names = ", ".join(repr(n) for n in ("auto", *sorted(ALGORITHMS)))
        raise ValueError(f"{fn}: algorithm must be one of {names}, got {algorithm!r}")
    return algorithm


def dtype_tolerance(dtype_name: str) -> float:
    """Max error relative to the output's scale that ``auto`` accepts for a compute dtype.

    Integers must be exact (0.0); float16 computes in float32, so it shares
    float32's bound.
    """
    dtype = np.dtype(dtype_name)
    if dtype.kind in "iu":
        return 0.0
    single = dtype.itemsize <= (8 if dtype.kind == "c" else 4)
    return 1e-4 if single else 1e-10


def error_bound(spec: ConvSpec, name: str) -> float:
    """The algorithm's own accuracy estimate for ``spec`` (0.0 when it has none: exact)."""
    bound = getattr(ALGORITHMS[name], "error_bound", None)
    return float(bound(spec)) if callable(bound) else 0.0


def eligibility(spec: ConvSpec, name: str, facts: DataFacts, *, auto: bool = False) -> str | None:
    """Return None if ``name`` may serve ``spec`` with these values, else why not.

    With ``auto=True`` the accuracy rule applies too: an algorithm whose error
    bound exceeds the dtype's tolerance is never chosen automatically (an
    explicit ``algorithm=`` request still gets it).
    """
    algorithm = ALGORITHMS[name]
    reason = algorithm.supports(spec)
    if reason is not None or algorithm.exact:
        return reason
    if np.dtype(spec.dtype).kind in "iu":
        if not facts.integer_fft_safe:
            return "integer inputs are too large for an exact result in float64 transforms"
        return None  # exact after rounding: the guard keeps every sum below 2**50
    if not facts.finite:
        return "the input contains NaN or Inf, which a transform would spread beyond the kernel's footprint"
    if auto:
        bound, tolerance = error_bound(spec, name), dtype_tolerance(spec.dtype)
        if bound > tolerance:
            return (f"its error bound {bound:.1e} of the output scale exceeds the {spec.dtype} "
                    f"tolerance {tolerance:.0e}")
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


# ---------------------------------------------------------------------------
# Cost model: counts of work per algorithm (pure functions of the spec).
# Legend: N batch, G groups, C in/O out channels per group, K kernel taps,
# P output positions, F transform points, T Winograd tiles, A points per tile.
# ---------------------------------------------------------------------------

#: Weight size at which Winograd's per-call weight transform costs twice as much per entry
#: (see cost_features; about this machine's L2 plus a share of L3).
WEIGHT_CACHE_BYTES = 4 * 2**20


def _winograd_tiles(spec: ConvSpec) -> tuple[int, int]:
    """Tiles and transform points per tile of F(m, 3) (Lavin & Gray), ``m`` as the algorithm picks it."""
    m = ALGORITHMS["winograd"].tile_size(spec)
    if winograd_module.is_weight_gradient_form(spec):
        # the weight-gradient form tiles the kernel (the output gradient), not the output
        return math.prod(-(-k // m) for k in spec.kernel_shape), (m + 2) ** 2
    # a dilated problem runs as prod(dilation) phase images per image
    phases = winograd_module.phase_spec(spec)
    tiles = math.prod(-(-o // m) for o in phases.output_shape) * math.prod(spec.dilation)
    return tiles, (m + 2) ** spec.spatial_ndim


def _fft_tiles(spec: ConvSpec) -> tuple[int, int]:
    """Tiles and transform points per tile of the FFT algorithm's tiling."""
    plan = fft_module.tile_plan(spec)
    return math.prod(plan.tile_counts), math.prod(plan.transform_shape)


def cost_features(spec: ConvSpec, name: str) -> list[float]:
    """Counts of work whose weighted sum predicts ``name``'s time on ``spec``.

    The weights are ``_calibration.coefficients(name, precision)``; an algorithm
    the model does not know gets ``[multiply-adds, 1]``. Where an algorithm
    exposes its own geometry (FFT tiles, Winograd tile size, whether direct
    runs its compiled loop), the counts follow it.
    """
    n, g = spec.batch, spec.groups
    c, o = spec.in_channels_per_group, spec.out_channels_per_group
    k, p = spec.kernel_size, math.prod(spec.output_shape)
    itemsize = spec.itemsize
    # A complex multiply-add is four real ones.
    macs = float(spec.macs) * (4 if np.dtype(spec.dtype).kind == "c" else 1)
    if name == "direct":
        if direct_module.uses_compiled_kernel(spec):
            # compiled stencil: multiply-adds at vector speed, no gathers, no BLAS calls
            return [0.0, 0.0, 0.0, macs, 0.0, 0.0, 1.0]
        # one (O, C) @ (C, P) product per tap and (batch, group), reading a strided tap view,
        # each added into the output: with few channels (C = 16: 3-D layers) that pass over
        # the output per tap, not the products, sets the time; a strided layer's tap views
        # are not BLAS operands (NumPy copies or loops them), so its products cost more
        strided = macs if any(s > 1 for s in spec.stride) else 0.0
        return [macs, float(n * g * c * p * k * itemsize), float(n * g * k), 0.0,
                float(n * g * o * p * k * itemsize), strided, 1.0]
    if name == "im2col":
        flat = im2col_module.flat_shift_work(spec)
        if flat is not None:
            # flat-shift path (few outputs, kernel ~ the plane, e.g. the weight gradient): no
            # gather; the plane's zeros multiplied too, inputs copied once, one GEMM per position
            flat_macs, copied, calls = flat
            return [flat_macs * (4 if np.dtype(spec.dtype).kind == "c" else 1), copied, calls, 1.0]
        plane = im2col_module.plane_work(spec)
        if plane is not None:
            # phase-plane path: the input split once into its stride phases (the pads written
            # in), contiguous column copies, the wide rows' extra multiply-adds, one GEMM per band
            plane_macs, copied, calls = plane
            return [plane_macs * (4 if np.dtype(spec.dtype).kind == "c" else 1), copied, calls, 1.0]
        # gather C*K rows of P columns (none for a pointwise 1x1), then one GEMM per (batch, group)
        gathered = 0 if im2col_module.is_pointwise(spec) else n * g * c * k * p * itemsize
        return [macs, float(gathered), float(n * g), 1.0]
    if name == "fft":
        tiles, points = _fft_tiles(spec)
        log = math.log2(max(points, 2))
        transforms = (n * g * (c + o) * tiles + g * o * c) * points * log
        # per frequency, a complex (O, C) @ (C, N * tiles) product; half the points for real data
        freq_macs = n * g * o * c * tiles * points * 2.0
        return [float(transforms), freq_macs, float(n * g * (c + o) * tiles * points * itemsize), 1.0]
    if name == "winograd":
        tiles, per_tile = _winograd_tiles(spec)
        if winograd_module.is_weight_gradient_form(spec):
            # weight-gradient form: each of the C input channels per group (the layer's
            # images) has `tiles` kernel tiles; V transforms them over the N batch items (the
            # layer's channels), U over the O kernels; one (O, tiles) @ (tiles, N) product per
            # point into per-worker (O, N) accumulators M; the passes over M (a memory pass
            # costs about 0.4 of a forward weight-transform entry, measured on 256->256 @14)
            # and G^T M G at the end
            passes = ALGORITHMS["winograd"].weight_form_m_passes(spec)
            return [float(g * c * (n + o) * tiles * per_tile), 0.0,
                    float(g * o * n * c * tiles * per_tile),
                    float(g * o * n * per_tile) * (1 + 0.4 * passes), 1.0]
        # input and output transforms per tile (1-D runs its own channels-first kernels, a
        # few contiguous adds per value: its own coefficient); the (O, C) products per
        # transform point; the weight transform G g G^T, redone every call, which dominates
        # for many channels on small images (512->512 @7)
        transforms = float(n * g * (c + o) * tiles * per_tile)
        one_d = spec.spatial_ndim == 1
        # a U entry costs more once the weight it is gathered from falls out of the caches
        # (measured per entry, one thread: 0.55 ns from 64->64 and 256->256 weights, 1.0 to
        # 1.4 ns from 512->512's 9.4 MB); the linear fit alone put Winograd at 512 @7 b8 at
        # 5.3 ms against im2col's 6.1, measured 10.0 against 7.7
        weight_bytes = g * o * c * spec.kernel_size * itemsize
        spread = 1.0 + weight_bytes / WEIGHT_CACHE_BYTES
        return [0.0 if one_d else transforms, transforms if one_d else 0.0,
                float(n * g * o * c * tiles * per_tile), float(g * o * c * per_tile) * spread, 1.0]
    return [macs, 1.0]


def predict_seconds(spec: ConvSpec, name: str, batch_chunk: int | None = None) -> float:
    """Predicted run time of ``name`` on ``spec`` (run in chunks of ``batch_chunk``)."""
    chunk = spec.batch if not batch_chunk else min(batch_chunk, spec.batch)
    sub = spec.with_batch(chunk)
    features = cost_features(sub, name)
    coef = coefficients(name, precision_class(spec.dtype))
    if len(coef) != len(features):  # an algorithm the calibration table does not know yet
        features = cost_features(sub, "generic")
        coef = coefficients("generic", precision_class(spec.dtype))
    per_chunk = float(np.dot(features, coef))
    return per_chunk * -(-spec.batch // max(chunk, 1))


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def candidates(
    spec: ConvSpec, facts: DataFacts, limit: int
) -> tuple[tuple[tuple[str, int, int], ...], tuple[tuple[str, str], ...]]:
    """Eligible algorithms as ``(name, batch_chunk, workspace)`` and the excluded ones with why.

    Cached per thread count too: workspaces hold per-thread buffers.
    """
    return _candidates(spec, facts, limit, get_num_threads())


@functools.lru_cache(maxsize=4096)
def _candidates(
    spec: ConvSpec, facts: DataFacts, limit: int, threads: int
) -> tuple[tuple[tuple[str, int, int], ...], tuple[tuple[str, str], ...]]:
    eligible, excluded = [], []
    for name in ALGORITHMS:
        reason = eligibility(spec, name, facts, auto=True)
        if reason is None:
            fit = batch_chunk_for(spec, name, limit)
            if fit is None:
                need = format_bytes(ALGORITHMS[name].workspace_bytes(spec.with_batch(1)))
                reason = f"needs {need} of workspace for one batch item, over the memory limit"
            else:
                eligible.append((name, fit[0], fit[1]))
                continue
        excluded.append((name, reason))
    return tuple(eligible), tuple(excluded)


def _excluded_clause(excluded: tuple[tuple[str, str], ...]) -> str:
    if not excluded:
        return ""
    return "; excluded: " + ", ".join(f"{name} ({why})" for name, why in excluded)


def _ranked(spec: ConvSpec, eligible: tuple[tuple[str, int, int], ...]) -> list[tuple[float, str]]:
    return sorted((predict_seconds(spec, name, chunk), name) for name, chunk, _ in eligible)


def _source() -> str:
    table = active_calibration()
    date = table.get("date", "")
    if not date or "prior" in date:
        return "hand-written cost-model priors"
    threads = table.get("threads", 1)
    return (f"the cost model calibrated on {table['machine'].get('cpu', 'unknown')} with "
            f"{threads} thread{'s' if threads != 1 else ''} ({date})")


#: ``auto`` takes an exact algorithm over a transform (FFT, Winograd) unless the transform is
#: predicted faster by more than 10% and 30 us: tiny problems, whose predictions are mostly
#: the fitted per-call constants (the 2-thread fit gave FFT a 2 us one), then keep the plain
#: direct sum (an FFT on a 12x10 image gave 361.99999999999994 for 362), while layers keep
#: their transform. (100 us kept im2col on sub-millisecond layers that Winograd serves 20-25%
#: faster: 128->128 @28 b1, conv1d 64->64 L=4096 b1.)
EXACT_MARGIN = 1.1
EXACT_SLACK = 30e-6

#: direct's per-tap GEMM path and im2col compute the same products; im2col's one wide GEMM
#: per band is the steadier of the two (direct's K thin products and K passes over the output
#: measured from 0.5x to 2x of im2col's time on layer shapes at two threads, swinging with
#: BLAS threading and NumPy's handling of strided tap views), so the per-tap path must be
#: predicted more than this much faster to be chosen over im2col.
GEMM_PATH_MARGIN = 1.25


def heuristic_plan(spec: ConvSpec, facts: DataFacts, limit: int, fn: str = "plan") -> Plan:
    """Pick the eligible algorithm with the lowest predicted time; the reason says why."""
    eligible, excluded = candidates(spec, facts, limit)
    if not eligible:
        raise MemoryError(
            f"{fn}: no algorithm can serve the problem {spec.full_output_shape} within the memory "
            f"limit of {format_bytes(limit)}{_excluded_clause(excluded)}; raise "
            f"trueconv.set_memory_limit or use trueconv.dask"
        )
    fits = {name: (chunk, workspace) for name, chunk, workspace in eligible}
    ranked = _ranked(spec, eligible)
    best_time, best = ranked[0]
    predicted = {name: t for t, name in ranked}
    if (best == "direct" and "im2col" in predicted and not direct_module.uses_compiled_kernel(spec)
            and predicted["im2col"] <= GEMM_PATH_MARGIN * best_time):
        others = ", ".join(f"{name} {format_seconds(t)}" for t, name in ranked if name != "im2col")
        reason = (f"im2col runs the same products as direct's per-tap GEMMs in fewer, wider "
                  f"ones and is predicted within {GEMM_PATH_MARGIN - 1:.0%} of it "
                  f"({format_seconds(predicted['im2col'])}; {others}) by {_source()}"
                  f"{_excluded_clause(excluded)}")
        return Plan("im2col", reason, fits["im2col"][1], fits["im2col"][0])
    exact = [(t, name) for t, name in ranked if ALGORITHMS[name].exact]
    if not ALGORITHMS[best].exact and exact and exact[0][0] <= EXACT_MARGIN * best_time + EXACT_SLACK:
        # Within the model's own error of a transform, the exact algorithm wins: its result
        # is the plain direct sum (integers stay integers) and does not depend on the choice.
        exact_time, exact_name = exact[0]
        others = ", ".join(f"{name} {format_seconds(t)}" for t, name in ranked if name != exact_name)
        reason = (f"{exact_name} is exact and predicted within the model's margin of the fastest "
                  f"({format_seconds(exact_time)}; {others}) by {_source()}"
                  f"{_excluded_clause(excluded)}")
        return Plan(exact_name, reason, fits[exact_name][1], fits[exact_name][0])
    if len(ranked) == 1:
        reason = f"{best} is the only eligible algorithm{_excluded_clause(excluded)}"
    else:
        others = ", ".join(f"{name} {format_seconds(t)}" for t, name in ranked[1:])
        reason = (f"{best} has the lowest predicted time ({format_seconds(best_time)}; {others}) "
                  f"by {_source()}{_excluded_clause(excluded)}")
    return Plan(best, reason, fits[best][1], fits[best][0])


def tuned_plan(spec: ConvSpec, facts: DataFacts, limit: int, fn: str = "plan") -> Plan:
    """Time the eligible candidates once per key (or reuse the cached winner)."""
    eligible, excluded = candidates(spec, facts, limit)
    if len(eligible) <= 1:
        return heuristic_plan(spec, facts, limit, fn)
    fits = {name: (chunk, workspace) for name, chunk, workspace in eligible}
    order = [name for _, name in _ranked(spec, eligible)]
    result = _autotune.tune(spec, {name: fits[name][0] for name in order})
    if result is None:  # nothing could be measured: fall back to the model
        return heuristic_plan(spec, facts, limit, fn)
    best = result.algorithm
    timed = sorted((t, name) for name, t in result.seconds.items() if name != best)
    others = ", ".join(f"{name} {format_seconds(t)}" for t, name in timed) or "no other timing"
    reason = (f"{best} measured fastest ({format_seconds(result.seconds[best])}; {others}) on "
              f"synthetic data of this shape, {result.source}{_excluded_clause(excluded)}")
    return Plan(best, reason, fits[best][1], fits[best][0], measured=True)


@functools.lru_cache(maxsize=4096)
def _choose_cached(spec: ConvSpec, algorithm: str, facts: DataFacts, limit: int, fn: str,
                   threads: int) -> Plan:
    # ``threads`` is part of the key: the calibration table, the workspaces and the
    # algorithms' own splits depend on it
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
    return heuristic_plan(spec, facts, limit, fn)


def choose(spec: ConvSpec, algorithm: str = "auto", facts: DataFacts = DataFacts(), *, fn: str = "plan") -> Plan:
    """Return the :class:`Plan` for ``spec`` (cached per spec, data facts and limit).

    ``auto`` follows the cost model, or the autotuner when it is enabled
    (``trueconv.set_autotune(True)`` or ``TRUECONV_AUTOTUNE=1``).
    """
    check_algorithm_name(algorithm, fn)
    limit = get_memory_limit()
    if algorithm == "auto" and spec.batch > 0 and _autotune.autotune_enabled():
        return tuned_plan(spec, facts, limit, fn)
    return _choose_cached(spec, algorithm, facts, limit, fn, get_num_threads())


plan_cache = _choose_cached
candidates.cache_clear = _candidates.cache_clear  # type: ignore[attr-defined]
