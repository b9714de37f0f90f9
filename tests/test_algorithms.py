"""ONE comparison suite over the algorithm registry (SciPy ``TestAllFreqConvolves`` style).

Every algorithm in ``trueconv.ALGORITHMS`` is asked for every case of a fixed,
deterministic sample of the parameter space (1/2/3-D, stride, dilation, groups
incl. depthwise, asymmetric/same/valid padding, padding modes, both kinds, batch
1 and > 1, float32/float64/integers/complex, odd and even kernels, images
smaller than a Winograd tile, ragged tile borders). Where the algorithm claims
support, its result must match torch (float64, CPU) and the float64/exact
direct sum (``tests/references.py``) within the dtype's tolerance; where its
``supports()`` refuses, the call must raise ``ValueError`` carrying that reason,
without any other algorithm running in its place.

Algorithm-specific properties follow: Winograd's transform matrices are exact,
its internal tiling and threading give the reference result, its error bound
holds; im2col's row chunking under a small memory limit; and both report an
honest workspace.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tracemalloc
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from references import assert_close_scaled, conv_reference, fingerprint, torch_conv

import trueconv
from trueconv._api import prepare_conv
from trueconv.algorithms import ALGORITHMS
from trueconv.algorithms import im2col as im2col_module
from trueconv.algorithms import winograd as winograd_module

ALGORITHM_NAMES = sorted(ALGORITHMS)


@dataclass(frozen=True)
class Case:
    """One convolution call: shapes, parameters and the data's dtype."""

    name: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    dtype: str = "float64"
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    padding_mode: str = "zeros"
    kind: str = "correlation"

    def __str__(self) -> str:
        return self.name


CASES = [
    # --- 1-D ---
    Case("1d-basic", (2, 3, 11), (4, 3, 3), padding=1),
    Case("1d-f32-ragged", (1, 4, 9), (5, 4, 3), "float32"),
    Case("1d-stride2-even-asym", (2, 2, 12), (3, 2, 4), stride=2, padding=((1, 2),)),
    Case("1d-dilated-same", (1, 2, 15), (2, 2, 3), "float32", padding="same", dilation=3),
    Case("1d-int32", (2, 3, 9), (2, 3, 3), "int32", padding=1),
    Case("1d-circular-convolution", (1, 2, 8), (2, 2, 3), padding=2, padding_mode="circular",
         kind="convolution"),
    Case("1d-complex128", (1, 2, 9), (3, 2, 3), "complex128", padding=1),
    Case("1d-long-depthwise-f32", (1, 8, 300), (8, 1, 3), "float32", padding="same", groups=8),
    # --- 2-D ---
    Case("2d-basic", (2, 3, 9, 9), (4, 3, 3, 3), padding=1),
    Case("2d-f32-16ch", (2, 16, 12, 12), (16, 16, 3, 3), "float32", padding=1),
    Case("2d-f32-ragged", (1, 8, 13, 11), (6, 8, 3, 3), "float32", padding=1),
    Case("2d-tiny-2x2", (1, 2, 2, 2), (3, 2, 3, 3), "float32", padding=1),
    Case("2d-tiny-valid-1x1-out", (3, 1, 3, 3), (2, 1, 3, 3)),
    Case("2d-groups-same-f32", (2, 6, 8, 8), (9, 2, 3, 3), "float32", padding="same", groups=3),
    Case("2d-depthwise-multiplier", (1, 4, 7, 9), (8, 1, 3, 3), padding=1, groups=4),
    Case("2d-asymmetric-pads", (1, 2, 7, 6), (3, 2, 3, 3), padding=((0, 2), (1, 0))),
    Case("2d-stride2-f32", (2, 3, 11, 10), (4, 3, 3, 3), "float32", stride=2, padding=1),
    Case("2d-mixed-stride-dilation", (1, 2, 12, 11), (3, 2, 3, 3), stride=(1, 2), dilation=(2, 1)),
    Case("2d-even-kernel", (2, 3, 8, 9), (2, 3, 2, 4), padding=((1, 0), (2, 1))),
    Case("2d-same-even-f32", (1, 2, 9, 8), (3, 2, 4, 4), "float32", padding="same"),
    Case("2d-reflect-convolution", (1, 3, 7, 8), (2, 3, 3, 3), padding=1, padding_mode="reflect",
         kind="convolution"),
    Case("2d-replicate-f32", (2, 2, 6, 7), (3, 2, 3, 3), "float32", padding=((2, 1), (0, 1)),
         padding_mode="replicate"),
    Case("2d-int64", (2, 3, 7, 8), (4, 3, 3, 3), "int64", padding=1),
    Case("2d-uint8", (1, 2, 6, 6), (2, 2, 3, 3), "uint8", padding=1),
    Case("2d-complex64", (1, 2, 6, 7), (3, 2, 3, 3), "complex64", padding=1),
    Case("2d-pointwise-f32", (2, 6, 5, 7), (8, 6, 1, 1), "float32"),
    Case("2d-pointwise-stride2", (1, 4, 9, 8), (3, 4, 1, 1), stride=2),
    Case("2d-5x5", (1, 3, 10, 9), (2, 3, 5, 5), padding=2),
    Case("2d-32ch-batch1-f32", (1, 32, 6, 6), (32, 32, 3, 3), "float32", padding=1),
    Case("2d-unbatched", (3, 7, 7), (2, 3, 3, 3), padding=1),
    # --- 3-D ---
    Case("3d-basic", (1, 2, 5, 6, 7), (3, 2, 3, 3, 3), padding=1),
    Case("3d-f32-ragged-asym", (2, 3, 6, 5, 7), (2, 3, 3, 3, 3), "float32",
         padding=((1, 1), (0, 1), (1, 0))),
    Case("3d-stride-dilation", (1, 2, 7, 8, 7), (2, 2, 3, 3, 3), stride=2, dilation=(1, 2, 1)),
    Case("3d-groups-f32", (1, 4, 5, 5, 5), (4, 2, 3, 3, 3), "float32", padding=1, groups=2),
    Case("3d-int16", (1, 2, 4, 5, 4), (2, 2, 3, 3, 3), "int16", padding=1),
    Case("3d-even-kernel", (2, 2, 5, 4, 6), (3, 2, 2, 3, 2), padding=((1, 0), (1, 1), (0, 1))),
    Case("3d-tiny-f32", (1, 1, 2, 2, 2), (2, 1, 3, 3, 3), "float32", padding=1),
]


def make_data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_seed(case.name))
    dtype = np.dtype(case.dtype)
    if dtype.kind in "iu":
        low = 0 if dtype.kind == "u" else -4
        x = rng.integers(low, 4, case.x_shape).astype(dtype)
        w = rng.integers(low, 3, case.w_shape).astype(dtype)
    elif dtype.kind == "c":
        x = rng.standard_normal(case.x_shape) + 1j * rng.standard_normal(case.x_shape)
        w = rng.standard_normal(case.w_shape) + 1j * rng.standard_normal(case.w_shape)
        x, w = x.astype(dtype), w.astype(dtype)
    else:
        x = rng.standard_normal(case.x_shape).astype(dtype)
        w = rng.standard_normal(case.w_shape).astype(dtype)
    return x, w


def _seed(name: str) -> int:
    return sum(ord(ch) * 31**i for i, ch in enumerate(name)) % 2**32  # stable across runs


def call_kwargs(case: Case) -> dict:
    return dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                groups=case.groups, padding_mode=case.padding_mode, kind=case.kind)


def canonical_spec(case: Case, x: np.ndarray, w: np.ndarray):
    """The ConvSpec the engine hands to the algorithms for this call."""
    return prepare_conv(x, w, None, case.stride, case.padding, case.dilation, case.groups,
                        case.padding_mode, case.kind, "auto", "test")[3]


def explicit_pads(case: Case, x: np.ndarray, w: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Resolve the case's padding to (before, after) pairs (for the oracles)."""
    from trueconv._spec import normalize_padding

    nd = w.ndim - 2
    as_tuple = (lambda v: (v,) * nd if isinstance(v, int) else tuple(v))
    return normalize_padding(case.padding, x.shape[-nd:], w.shape[2:], as_tuple(case.stride),
                             as_tuple(case.dilation), "test")


@functools.lru_cache(maxsize=None)
def expected(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """(float64/exact reference, torch float64 result or None for integers)."""
    x, w = make_data(case)
    pads = explicit_pads(case, x, w)
    batched = x.ndim == w.ndim
    xb = x if batched else x[None]
    ref = conv_reference(xb, w, stride=case.stride, pad_widths=pads, dilation=case.dilation,
                         groups=case.groups, padding_mode=case.padding_mode, kind=case.kind)
    ref = ref if batched else ref[0]
    if np.dtype(case.dtype).kind in "iu":
        return ref, None
    named = isinstance(case.padding, str) and case.padding_mode == "zeros"
    torch_padding = case.padding if named else pads  # torch resolves 'same' on its own
    with warnings.catch_warnings():
        # torch warns that 'same' with an even kernel pads a copy of the input: expected here
        warnings.filterwarnings("ignore", "Using padding='same'", UserWarning)
        theirs = torch_conv(x, w, stride=case.stride, padding=torch_padding,
                            dilation=case.dilation, groups=case.groups,
                            padding_mode=case.padding_mode, kind=case.kind)
    return ref, theirs


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
class TestAllAlgorithms:
    """Each algorithm against the independent oracles, or a clear refusal."""

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_matches_references_or_refuses(self, algorithm: str, case: Case) -> None:
        x, w = make_data(case)
        before = fingerprint(x, w)
        spec = canonical_spec(case, x, w)
        reason = ALGORITHMS[algorithm].supports(spec)
        if reason is not None:
            assert isinstance(reason, str) and reason
            with pytest.raises(ValueError, match=re.escape(reason)):
                trueconv.conv(x, w, **call_kwargs(case), algorithm=algorithm)
            assert fingerprint(x, w) == before
            return
        out = trueconv.conv(x, w, **call_kwargs(case), algorithm=algorithm)
        assert fingerprint(x, w) == before, "inputs were mutated"
        result_dtype = np.result_type(x.dtype, w.dtype)
        ref, theirs = expected(case)
        if result_dtype.kind in "iu":
            assert_close_scaled(out, ref.astype(result_dtype), dtype=result_dtype)
            return
        assert_close_scaled(out, ref, dtype=result_dtype)
        assert_close_scaled(out, theirs, dtype=result_dtype)

    def test_no_silent_fallback(self, algorithm: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """An explicit request runs exactly that algorithm, or fails without running any."""
        calls: list[str] = []
        for name, algo in ALGORITHMS.items():
            original = algo.run

            def spy(*args, _name=name, _original=original, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(algo, "run", spy)
        served = [c for c in CASES if c.dtype == "float64" and
                  ALGORITHMS[algorithm].supports(canonical_spec(c, *make_data(c))) is None]
        assert served, f"{algorithm} serves none of the float64 cases"
        case = served[0]
        x, w = make_data(case)
        out = trueconv.conv(x, w, **call_kwargs(case), algorithm=algorithm)
        assert set(calls) == {algorithm}
        assert_close_scaled(out, expected(case)[0], dtype=np.float64)

        refused = [c for c in CASES
                   if ALGORITHMS[algorithm].supports(canonical_spec(c, *make_data(c)))]
        calls.clear()
        for case in refused[:3]:
            x, w = make_data(case)
            with pytest.raises(ValueError, match="cannot serve this call"):
                trueconv.conv(x, w, **call_kwargs(case), algorithm=algorithm)
        assert calls == []

    @pytest.mark.parametrize("nd", [1, 2])
    def test_nan_inf(self, algorithm: str, nd: int) -> None:
        """Exact algorithms keep NaN/Inf in the footprint only; transforms refuse such input."""
        rng = np.random.default_rng(7 + nd)
        x = rng.standard_normal((1, 2, *(9,) * nd))
        w = rng.standard_normal((3, 2, *(3,) * nd))
        x[(0, 0, *(2,) * nd)] = np.nan
        x[(0, 1, *(6,) * nd)] = np.inf
        if not ALGORITHMS[algorithm].exact:
            with pytest.raises(ValueError, match="NaN or Inf"):
                trueconv.conv(x, w, padding=1, algorithm=algorithm)
            return
        out = trueconv.conv(x, w, padding=1, algorithm=algorithm)
        ref = conv_reference(x, w, pad_widths=((1, 1),) * nd)
        assert np.isnan(out).any() and np.isfinite(out).any()
        assert_close_scaled(out, ref, dtype=np.float64)


# ---------------------------------------------------------------------------
# Winograd
# ---------------------------------------------------------------------------
def _toom_cook_points(at) -> list[Fraction]:
    """The interpolation points a literal A^T was built from (its second row, finite columns)."""
    return [Fraction(v) for v in at[1][:-1]]


@pytest.mark.parametrize("m", winograd_module.TILE_SIZES)
def test_winograd_matrices_exact(m: int) -> None:
    """A^T [(G g) * (B^T d)] is the exact correlation of d with g, in rational arithmetic."""
    at, g, bt = winograd_module.TRANSFORMS[m]
    alpha = m + 2
    assert len(at) == m and len(g) == alpha and len(bt) == alpha
    expected_points = {2: [0, 1, -1], 4: [0, 1, -1, 2, -2]}[m]
    assert _toom_cook_points(at) == expected_points
    # A^T is the Vandermonde matrix of the points (plus the point at infinity)
    for i in range(m):
        assert [Fraction(v) for v in at[i][:-1]] == [Fraction(p) ** i for p in expected_points]
        assert at[i][-1] == (1 if i == m - 1 else 0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = [Fraction(int(v)) for v in rng.integers(-50, 50, alpha)]
        kernel = [Fraction(int(v)) for v in rng.integers(-50, 50, 3)]
        gg = [sum(Fraction(g[t][k]) * kernel[k] for k in range(3)) for t in range(alpha)]
        bd = [sum(Fraction(bt[t][j]) * d[j] for j in range(alpha)) for t in range(alpha)]
        y = [sum(Fraction(at[i][t]) * gg[t] * bd[t] for t in range(alpha)) for i in range(m)]
        assert y == [sum(d[i + k] * kernel[k] for k in range(3)) for i in range(m)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 3, 1000), (1, 5, 21, 19), (1, 2, 6, 9, 7)],
                         ids=["1d", "2d", "3d"])
def test_winograd_internal_tiling(shape: tuple[int, ...], threads: int,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few tiles (pieces of a tile row of one image), on 1 or 2 threads."""
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES", 3)
    monkeypatch.setattr(winograd_module, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(11)
    nd = len(shape) - 2
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((4, shape[1], *(3,) * nd)).astype(np.float32)
    spec = canonical_spec(Case("t", shape, w.shape, padding=1), x, w).with_dtype("float32")
    grid = winograd_module.tile_grid(spec.output_shape, winograd_module.Winograd().tile_size(spec))
    assert len(winograd_module.tile_blocks((1, *(1,) * (3 - nd), *grid), 3)) > math.prod(grid) // 3
    out = trueconv.conv(x, w, padding=1, algorithm="winograd")
    ref = conv_reference(x, w, pad_widths=((1, 1),) * nd)
    assert_close_scaled(out, ref, dtype=np.float32)


@pytest.mark.parametrize("tile", winograd_module.TILE_SIZES)
def test_winograd_error_within_bound(tile: int) -> None:
    """float32 F(2x2)/F(4x4) error vs a float64 reference stays under error_bound."""
    import torch

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64, 12, 12))
    w = rng.standard_normal((8, 64, 3, 3))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    algo = ALGORITHMS["winograd"]
    spec = canonical_spec(Case("e", x.shape, w.shape, padding=1), x, w).with_dtype("float32")
    out = algo.run(x.astype(np.float32), w.astype(np.float32), spec, tile=tile)
    error = float(np.abs(out - ref).max() / np.abs(ref).max())
    bound = winograd_module.error_bound_for(tile, 2, 64, "float32")
    assert error <= bound
    assert error > 1e-8  # the transform error is real: float32 is not computed in float64
    chosen = algo.tile_size(spec)
    assert algo.error_bound(spec) == winograd_module.error_bound_for(chosen, 2, 64, "float32")
    assert algo.error_bound(spec.with_dtype("float64")) < 1e-12


def test_winograd_tile_rule() -> None:
    algo = ALGORITHMS["winograd"]

    def spec_for(shape, channels, padding=1):
        x = np.zeros((1, channels, *shape), np.float32)
        w = np.zeros((1, channels, *(3,) * len(shape)), np.float32)
        return canonical_spec(Case("r", x.shape, w.shape, "float32", padding=padding), x, w)

    assert algo.tile_size(spec_for((56, 56), 64)) == 4
    assert algo.tile_size(spec_for((2, 2), 64)) == 2  # 4-wide tiles would waste most of the tile
    # the weight transform is redone per call: at batch 1 on small images (four 4-wide
    # tiles at 512 @7, sixteen at 256 @14, 49 at 128 @28) the smaller transform costs less
    # in all; 196 tiles (64 @56) pay for F(4x4)'s
    assert algo.tile_size(spec_for((7, 7), 512)) == 2
    assert algo.tile_size(spec_for((14, 14), 256)) == 2
    assert algo.tile_size(spec_for((28, 28), 128)) == 2
    assert algo.tile_size(spec_for((56, 56), 128)) == 4
    # 1-D problems also have F(6, 3)
    assert algo.tile_size(spec_for((4096,), 64)) == 6
    # 3-D F(4x4x4) in float32 with many channels would exceed the 1e-4 tolerance
    big = spec_for((8, 8, 8), 4096)
    assert winograd_module.error_bound_for(4, 3, 4096, "float32") > 1e-4
    assert algo.tile_size(big) == 2 and algo.error_bound(big) <= 1e-4


@pytest.mark.parametrize("reason_case, reason", [
    (Case("s", (1, 2, 8, 8), (2, 2, 3, 3), "float32", stride=2), "stride (2, 2) != 1"),
    (Case("d", (1, 2, 8, 8), (2, 2, 3, 3), stride=(1, 2), dilation=2), "stride (1, 2) != 1"),
    (Case("k", (1, 2, 8, 8), (2, 2, 5, 5)), "kernel shape (5, 5)"),
    (Case("i", (1, 2, 8, 8), (2, 2, 3, 3), "int32"), "float32 and float64 only"),
    (Case("c", (1, 2, 8, 8), (2, 2, 3, 3), "complex128"), "float32 and float64 only"),
])
def test_winograd_refusals_name_the_reason(reason_case: Case, reason: str) -> None:
    x, w = make_data(reason_case)
    with pytest.raises(ValueError, match=re.escape(reason)):
        trueconv.conv(x, w, stride=reason_case.stride, dilation=reason_case.dilation,
                      algorithm="winograd")


@pytest.mark.parametrize("x_shape, dilation, padding, groups", [
    ((2, 4, 21, 17), (2, 3), (2, 3), 1),   # phases of unequal length on both axes
    ((1, 4, 9, 30), (4, 1), (0, 5), 2),    # no padding on one axis, dilation on the other only
    ((3, 2, 40), (5,), (7,), 1),           # 1-D, pads that are not multiples of the dilation
    ((1, 2, 7, 8, 9), (2, 1, 3), (1, 2, 0), 2),
    ((1, 2, 5, 5), (2, 2), (0, 0), 1),     # a single output per axis
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_winograd_dilated_phases_match_torch(x_shape: tuple[int, ...], dilation: tuple[int, ...],
                                             padding: tuple[int, ...], groups: int,
                                             dtype: str) -> None:
    # Dilation runs as prod(dilation) interleaved stride-1 phase problems (space_to_batch).
    rng = np.random.default_rng(7)
    nd = len(x_shape) - 2
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((4, x_shape[1] // groups, *(3,) * nd)).astype(dtype)
    before = fingerprint(x)
    out = trueconv.conv(x, w, padding=padding, dilation=dilation, groups=groups,
                        algorithm="winograd")
    assert fingerprint(x) == before
    expected = torch_conv(x, w, padding=padding, dilation=dilation, groups=groups)
    assert out.shape == expected.shape
    assert_close_scaled(out, expected, dtype)


def test_winograd_phase_spec_counts_tiles_per_phase() -> None:
    spec = canonical_spec(Case("p", (2, 4, 56, 56), (4, 4, 3, 3), padding=2, dilation=2),
                          np.zeros((2, 4, 56, 56)), np.zeros((4, 4, 3, 3)))
    phases = winograd_module.phase_spec(spec)
    assert (phases.batch, phases.input_shape, phases.output_shape) == (8, (30, 30), (28, 28))
    assert phases.dilation == (1, 1) and phases.pad_widths == ((0, 0), (0, 0))


# ---------------------------------------------------------------------------
# im2col
# ---------------------------------------------------------------------------
def test_im2col_row_chunks_under_a_small_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 40, 33))
    w = rng.standard_normal((4, 3, 3, 3))
    spec = canonical_spec(Case("m", x.shape, w.shape, padding=1), x, w)
    monkeypatch.setattr(im2col_module, "COLUMN_BYTES", 20_000)
    images, rows = im2col_module.column_chunk(spec)
    assert images == 1 and 1 < rows < spec.output_shape[0]
    out = trueconv.conv(x, w, padding=1, algorithm="im2col")
    assert_close_scaled(out, conv_reference(x, w, pad_widths=((1, 1), (1, 1))), dtype=np.float64)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch, column_bytes", [(1, 8 * 2**20), (3, 8 * 2**20), (2, 20_000)])
def test_im2col_worker_threads_split_chunks(threads: int, batch: int, column_bytes: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Bands of output rows (whole images when they fit) go to worker threads, one BLAS thread
    # each, when there are several images; every output element is written by exactly one band.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((batch, 4, 23, 17))
    w = rng.standard_normal((6, 2, 3, 3))
    monkeypatch.setattr(im2col_module, "COLUMN_BYTES", column_bytes)
    monkeypatch.setattr(im2col_module, "get_num_threads", lambda: threads)
    spec = canonical_spec(Case("t", x.shape, w.shape, stride=(2, 1), padding=1, groups=2), x, w)
    items = im2col_module.plane_items(spec, im2col_module.plane_geometry(spec))
    assert len(items) >= batch
    workers = im2col_module.plane_workers(spec, items)
    assert workers == (min(threads, len(items)) if batch > 1 else 1)
    covered = np.zeros((batch, spec.output_shape[0]), dtype=int)
    for n0, r0, r1 in items:
        covered[n0, r0:r1] += 1
    assert (covered == 1).all()
    out = trueconv.conv(x, w, stride=(2, 1), padding=1, groups=2, algorithm="im2col")
    expected = torch_conv(x, w, stride=(2, 1), padding=1, groups=2)
    assert_close_scaled(out, expected, np.float64)


@pytest.mark.parametrize("images_per_chunk", [1, 2, 5])
def test_im2col_shared_gemm_for_few_positions(images_per_chunk: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The weight gradient's shape: many taps, a handful of output positions per image.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 13, 12))
    w = rng.standard_normal((6, 2, 11, 10))
    spec = canonical_spec(Case("thin", x.shape, w.shape, groups=2, dilation=1), x, w)
    assert im2col_module.output_positions(spec) < im2col_module.THIN_POSITIONS
    per_image = spec.in_channels * spec.kernel_size * im2col_module.output_positions(spec) * 8
    monkeypatch.setattr(im2col_module, "THIN_COLUMN_BYTES", per_image * images_per_chunk)
    assert im2col_module.column_chunk(spec)[0] == images_per_chunk
    out = trueconv.conv(x, w, groups=2, algorithm="im2col")
    assert_close_scaled(out, conv_reference(x, w, groups=2), dtype=np.float64)
    assert_close_scaled(out, torch_conv(x, w, groups=2), dtype=np.float64)


def test_im2col_pointwise_needs_no_workspace() -> None:
    x = np.zeros((2, 6, 5, 7), np.float32)
    w = np.zeros((8, 6, 1, 1), np.float32)
    spec = canonical_spec(Case("p", x.shape, w.shape, "float32"), x, w)
    assert im2col_module.is_pointwise(spec)
    assert ALGORITHMS["im2col"].workspace_bytes(spec) == 0


@pytest.mark.parametrize("algorithm, shape, weight_shape", [
    ("im2col", (1, 8, 120, 100), (8, 8, 3, 3)),
    ("winograd", (1, 8, 120, 100), (8, 8, 3, 3)),
    ("winograd", (1, 4, 20000), (4, 4, 3)),
])
def test_workspace_is_honest(algorithm: str, shape: tuple[int, ...], weight_shape: tuple[int, ...],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak NumPy allocation during run() stays within workspace_bytes + output (tracemalloc)."""
    monkeypatch.setattr(im2col_module, "COLUMN_BYTES", 200_000)
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 200_000)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    spec = canonical_spec(Case("w", x.shape, w.shape, "float32", padding=1), x, w)
    algo = ALGORITHMS[algorithm]
    algo.run(x, w, spec)  # warm up (compilation allocates)
    output = math.prod(spec.full_output_shape) * spec.itemsize
    tracemalloc.start()
    try:
        out = algo.run(x, w, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= algo.workspace_bytes(spec) + output + 64 * 1024
    if algorithm == "im2col":  # the chunked columns are far smaller than the whole column matrix
        positions = math.prod(spec.output_shape)
        columns = spec.in_channels * spec.kernel_size * positions * spec.itemsize
        assert algo.workspace_bytes(spec) < columns / 4
    else:  # the workspace does not grow with the image beyond one block per thread
        huge = dataclasses.replace(spec, input_shape=tuple(100 * n for n in spec.input_shape))
        assert algo.workspace_bytes(huge) <= 2 * algo.workspace_bytes(spec)
    assert_close_scaled(out, conv_reference(x, w, pad_widths=((1, 1),) * (len(shape) - 2)),
                        dtype=np.float32)


def test_scratch_buffers_are_reused_and_bounded_by_the_memory_limit() -> None:
    from trueconv.algorithms import _pool

    first = _pool.scratch("test.reuse", 1000, np.float32)
    again = _pool.scratch("test.reuse", 500, np.float64)
    assert np.shares_memory(first, again) and again.dtype == np.float64 and again.shape == (500,)
    with trueconv.memory_limit(64 * 4096):  # keeps at most 4 KiB per buffer
        big = _pool.scratch("test.bounded", 2048, np.float32)
        assert not np.shares_memory(big, _pool.scratch("test.bounded", 2048, np.float32))
        small = _pool.scratch("test.bounded", 512, np.float32)
        assert np.shares_memory(small, _pool.scratch("test.bounded", 512, np.float32))
