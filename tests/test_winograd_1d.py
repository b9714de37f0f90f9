"""Winograd's 1-D path (``Winograd._run_1d``: channels-first F(m, 3) kernels) against torch.

Every case is forced through ``algorithm="winograd"`` (or ``Winograd.run`` with a
forced tile) and compared with torch's float64 ``conv1d`` (``references.torch_conv``),
never with another trueconv path: float64 to 1e-10 and float32 to 1e-4 of the
output's scale. Shapes are small; the cases cover batch, groups (depthwise too),
asymmetric and large pads, odd lengths, outputs shorter than one tile, dilation
(served as interleaved phases), both dtypes, both tile sizes, blocks that split an
image or hold several, and one or two threads.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from references import assert_close_scaled, torch_conv

import trueconv
from trueconv._spec import ConvSpec
from trueconv.algorithms import winograd as winograd_module

pytest.importorskip("torch")

WINOGRAD = winograd_module.Winograd()

# (batch, in channels, out channels, groups, length, (pad before, pad after), dilation)
CASES = [
    (1, 3, 4, 1, 37, (1, 1), 1),        # odd length, ragged last tile
    (3, 4, 6, 2, 20, (0, 0), 1),        # groups, no pads, whole tiles
    (2, 6, 6, 6, 33, (1, 1), 1),        # depthwise (one input channel per group)
    (2, 4, 8, 4, 16, (2, 1), 1),        # depthwise with a channel multiplier of 2
    (1, 5, 3, 1, 3, (0, 0), 1),         # output of 1 sample, shorter than any tile
    (2, 2, 3, 1, 2, (3, 0), 1),         # input shorter than the kernel, pads before only
    (1, 3, 2, 1, 4, (0, 5), 1),         # pads after only, longer than the input
    (2, 3, 4, 1, 9, (7, 6), 1),         # pads larger than a tile on both sides
    (1, 8, 8, 1, 130, (1, 1), 2),       # dilated: two phases
    (2, 6, 4, 2, 41, (2, 5), 3),        # dilated, groups, asymmetric pads
    (5, 4, 4, 1, 6, (1, 1), 1),         # several short images (blocks of whole images)
]


def _case_id(case: tuple) -> str:
    n, c, o, g, length, pads, d = case
    return f"n{n}-c{c}-o{o}-g{g}-L{length}-p{pads[0]}.{pads[1]}-d{d}"


def _data(case: tuple, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n, c, o, g, length, _, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, length)).astype(dtype)
    w = rng.standard_normal((o, c // g, 3)).astype(dtype)
    return x, w


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv1d_winograd_matches_torch(case: tuple, dtype: str) -> None:
    n, c, o, g, length, pads, d = case
    x, w = _data(case, dtype)
    x_before = x.copy()
    out = trueconv.conv1d(x, w, padding=(pads,), dilation=d, groups=g, algorithm="winograd")
    ref = torch_conv(x, w, padding=(pads,), dilation=d, groups=g)
    assert_close_scaled(out, ref, dtype=dtype)
    np.testing.assert_array_equal(x, x_before)  # inputs are never mutated


@pytest.mark.parametrize("tile", winograd_module.TILE_SIZES_1D)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forced_tiles_match_torch(tile: int, dtype: str) -> None:
    """Every 1-D tile size through ``Winograd.run`` (F(2, 3) takes the generic branches)."""
    x, w = _data((2, 5, 7, 1, 45, (1, 2), 1), dtype, seed=1)
    spec = ConvSpec(2, 5, 7, 1, (45,), (3,), (1,), (1,), ((1, 2),), dtype)
    out = WINOGRAD.run(x, w, spec, tile=tile)
    assert_close_scaled(out, torch_conv(x, w, padding=((1, 2),)), dtype=dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_small_blocks_split_images(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few tiles (pieces of an image's row, several per image) on 1 or 2 threads."""
    monkeypatch.setattr(winograd_module, "BLOCK_BYTES_1D", 1)
    monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES_1D", 3)
    monkeypatch.setattr(winograd_module, "MIN_SPLIT_MACS_1D", 1)
    monkeypatch.setattr(winograd_module, "get_num_threads", lambda: threads)
    x, w = _data((3, 4, 5, 1, 101, (2, 1), 1), "float64", seed=2)
    spec = ConvSpec(3, 4, 5, 1, (101,), (3,), (1,), (1,), ((2, 1),), "float64")
    m = WINOGRAD._tile_size_1d(spec)
    target, workers = WINOGRAD._block_plan_1d(spec, m)
    assert (m, target, workers) == (6, 3, threads)
    tiles = winograd_module.tile_grid(spec.output_shape, m)[0]
    blocks = winograd_module.blocks_1d(3, tiles, target)
    assert len(blocks) == 3 * math.ceil(tiles / 3)
    assert max(w1 - w0 for _, _, w0, w1 in blocks) <= 3
    out = WINOGRAD.run(x, w, spec)
    assert_close_scaled(out, torch_conv(x, w, padding=((2, 1),)), dtype="float64")


def test_one_dimensional_problems_take_the_1d_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_run`` dispatches 1-D problems (dilated ones as their phases) to ``_run_1d``."""
    seen = []
    original = winograd_module.Winograd._run_1d

    def spy(self, x, weight, spec, tile):  # noqa: ANN001, ANN202
        seen.append((spec.batch, spec.input_shape))
        return original(self, x, weight, spec, tile)

    monkeypatch.setattr(winograd_module.Winograd, "_run_1d", spy)
    x, w = _data((2, 3, 3, 1, 21, (1, 1), 2), "float32")
    out = trueconv.conv1d(x, w, padding=1, dilation=2, algorithm="winograd")
    assert_close_scaled(out, torch_conv(x, w, padding=1, dilation=2), dtype="float32")
    assert seen == [(4, (12,))]  # 2 images x 2 phases of ceil(23 / 2) + 2 samples


def test_float32_error_within_the_documented_bound() -> None:
    """float32 F(6, 3), the tile chosen at 64 input channels, stays inside ``error_bound``."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64, 1024))
    w = rng.standard_normal((8, 64, 3))
    ref = torch_conv(x, w, padding=1)
    spec = ConvSpec(2, 64, 8, 1, (1024,), (3,), (1,), (1,), ((1, 1),), "float32")
    assert WINOGRAD.tile_size(spec) == WINOGRAD._tile_size_1d(spec) == 6
    out = WINOGRAD.run(x.astype(np.float32), w.astype(np.float32), spec)
    error = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert 1e-8 < error <= WINOGRAD.error_bound(spec)  # a real float32 transform error


def test_non_contiguous_input_and_weight() -> None:
    """``run`` copies strided views itself (the engine passes contiguous arrays)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 60))[:, ::2, ::2]
    w = rng.standard_normal((6, 4, 6))[..., ::2]
    spec = ConvSpec(2, 4, 6, 1, (30,), (3,), (1,), (1,), ((1, 1),), "float64")
    out = WINOGRAD.run(x, w, spec)
    assert_close_scaled(out, torch_conv(x, w, padding=1), dtype="float64")


def test_f63_matrices_exact() -> None:
    """The 1-D F(6, 3): A^T [(G g) * (B^T d)] is the exact correlation, in rational arithmetic."""
    from fractions import Fraction

    at, g, bt = winograd_module.TRANSFORMS_1D[6]
    points = [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]
    assert len(at) == 6 and len(g) == 8 and len(bt) == 8
    for i in range(6):  # A^T: the Vandermonde matrix of the points, then infinity
        assert [Fraction(v) for v in at[i][:-1]] == [Fraction(p) ** i for p in points]
        assert at[i][-1] == (1 if i == 5 else 0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = [Fraction(int(v)) for v in rng.integers(-50, 50, 8)]
        kernel = [Fraction(int(v)) for v in rng.integers(-50, 50, 3)]
        gg = [sum(Fraction(g[t][k]) * kernel[k] for k in range(3)) for t in range(8)]
        bd = [sum(Fraction(bt[t][j]) * d[j] for j in range(8)) for t in range(8)]
        y = [sum(Fraction(at[i][t]) * gg[t] * bd[t] for t in range(8)) for i in range(6)]
        assert y == [sum(d[i + k] * kernel[k] for k in range(3)) for i in range(6)]


def test_tile_rule_1d() -> None:
    """Fewest transform-domain products, ties to the smaller tile; phases count when dilated."""
    def spec(length: int, dilation: int = 1, channels: int = 8) -> ConvSpec:
        return ConvSpec(1, channels, 4, 1, (length,), (3,), (1,), (dilation,), ((1, 1),),
                        "float32")

    assert WINOGRAD._tile_size_1d(spec(4096)) == 6  # 683 * 8 < 1024 * 6 < 2048 * 4
    assert WINOGRAD._tile_size_1d(spec(4)) == 4  # out 4: 1 * 6 < 1 * 8 = 2 * 4
    assert WINOGRAD._tile_size_1d(spec(2)) == 2  # out 2: 4 < 6 < 8
    assert WINOGRAD._tile_size_1d(spec(6)) == 6  # out 6: 8 < 12 = 12
    assert WINOGRAD._tile_size_1d(spec(8, dilation=2)) == 4  # two phases of 4 outputs
    # the error bound grows like sqrt(C): F(6, 3) until about 40,000 input channels
    assert winograd_module.error_bound_for(6, 1, 32768, "float32") < 1e-4
    assert WINOGRAD._tile_size_1d(spec(4096, channels=65536)) == 4
    assert winograd_module.error_bound_for(6, 1, 64, "float64") < 1e-13


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_f63_error_within_its_bound(dtype: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 64, 600))
    w = rng.standard_normal((8, 64, 3))
    ref = torch_conv(x, w, padding=1)
    spec = ConvSpec(2, 64, 8, 1, (600,), (3,), (1,), (1,), ((1, 1),), dtype)
    out = WINOGRAD.run(x.astype(dtype), w.astype(dtype), spec, tile=6)
    error = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert error <= winograd_module.error_bound_for(6, 1, 64, dtype)


def test_threads_only_for_enough_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second worker only past MIN_SPLIT_MACS_1D multiply-adds (bench rows: two; a short
    signal: one)."""
    monkeypatch.setattr(winograd_module, "get_num_threads", lambda: 2)

    def workers(batch: int, length: int = 4096) -> int:
        spec = ConvSpec(batch, 64, 64, 1, (length,), (3,), (1,), (1,), ((1, 1),), "float32")
        return WINOGRAD._block_plan_1d(spec, WINOGRAD._tile_size_1d(spec))[1]

    assert (workers(1), workers(8), workers(1, 256)) == (2, 2, 1)
