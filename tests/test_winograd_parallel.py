"""Winograd's thread splits: transform-point ranges for few tiles, tile blocks for many.

Every result is compared with torch (float64 on CPU, tests/references.torch_conv);
the plan checks make sure each case really runs the split it is meant to cover.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import trueconv
from trueconv._threads import get_num_threads, set_num_threads
from trueconv.algorithms import winograd as winograd_module

from references import assert_close_scaled, torch_conv

pytest.importorskip("torch")
pytest.importorskip("numba")

WINOGRAD = winograd_module.Winograd()


@pytest.fixture
def threads():
    """Set trueconv's thread count for one test (set_num_threads), restored afterwards."""
    before = get_num_threads()
    yield set_num_threads
    set_num_threads(before)


def spec_of(x, w, padding, dilation=1, groups=1):
    from trueconv._spec import ConvSpec

    nd = w.ndim - 2
    return ConvSpec(x.shape[0], x.shape[1], w.shape[0], groups, x.shape[2:], w.shape[2:],
                    (1,) * nd, (dilation,) * nd, ((padding, padding),) * nd, x.dtype.name)


def test_default_splits_of_the_benchmark_layers(threads):
    """With the real thresholds, on two threads: two tile blocks for 64 channels @56 and, in
    F(2x2) tiles, for 128 @28 and 256 @14 at batch 8; point ranges for 256 @14 at batch 1
    (see Winograd._point_plan and tile_size)."""
    threads(2)

    def plans(channels, size, batch=1):
        x = np.zeros((batch, channels, size, size), np.float32)
        spec = spec_of(x, np.zeros((channels, channels, 3, 3), np.float32), 1)
        m = WINOGRAD.tile_size(spec)
        return WINOGRAD._block_plan(spec, m)[1], WINOGRAD._point_plan(spec, m)[0]

    assert plans(64, 56) == (2, 1)
    assert plans(128, 28) == (2, 1)
    assert plans(256, 14) == (1, 2)
    assert plans(256, 14, batch=8) == (2, 1)
    assert plans(64, 56, batch=8) == (2, 1)


@pytest.mark.parametrize("m,nd,parts", list(itertools.product((2, 4), (1, 2, 3), (1, 2, 3, 7))))
def test_point_ranges_partition_the_points(m, nd, parts):
    ranges = winograd_module.point_ranges(m, nd, parts)
    alpha = m + 2
    covered = [t for p0, p1, per in ranges for t in range(p0 * per, p1 * per)]
    assert covered == list(range(alpha**nd))  # disjoint, in order, complete
    assert len(ranges) == (1 if nd == 1 else min(parts, alpha))
    assert all(p1 > p0 for p0, p1, _ in ranges)


# (batch, in, out, groups, spatial shape, dilation): odd sizes and ragged tiles, groups
# (depthwise too), dilation, 3-D; all few enough tiles for the point split on 2-3 threads.
CASES = [
    (1, 6, 5, 1, (13, 11), 1),
    (2, 4, 6, 2, (9, 10), 1),
    (1, 4, 4, 4, (7, 12), 1),
    (1, 5, 3, 1, (11, 9), 2),
    (2, 3, 4, 1, (5, 6, 7), 1),
    (1, 3, 2, 1, (9, 8, 7), 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}-g{c[3]}-"
                         f"{'x'.join(map(str, c[4]))}-d{c[5]}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_matches_torch_on_one_two_three_threads(case, dtype, count, threads):
    batch, cin, cout, groups, shape, dilation = case
    nd = len(shape)
    rng = np.random.default_rng(sum(shape) + 7 * count)
    x = rng.standard_normal((batch, cin, *shape)).astype(dtype)
    w = rng.standard_normal((cout, cin // groups, *(3,) * nd)).astype(dtype)
    threads(count)
    spec = winograd_module.phase_spec(spec_of(x, w, dilation, dilation, groups))
    for tile in winograd_module.TILE_SIZES:
        parts, _ = WINOGRAD._point_plan(spec, tile)
        assert parts == min(count, tile + 2)  # the case runs the point split (or one thread)
        out = WINOGRAD.run(x, w, spec_of(x, w, dilation, dilation, groups), tile=tile)
        expected = torch_conv(x, w, padding=dilation, dilation=dilation, groups=groups)
        assert_close_scaled(out, expected, dtype)


def test_through_conv_at_two_threads(threads):
    """The public entry point, a layer-like batch-1 call (49 F(2, 3) tiles, one image)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    threads(2)
    spec = spec_of(x, w, 1)
    assert WINOGRAD.tile_size(spec) == 2 and WINOGRAD._point_plan(spec, 2)[0] == 2
    out = trueconv.conv(x, w, padding=1, algorithm="winograd")
    assert_close_scaled(out, torch_conv(x, w, padding=1), np.float32)


def test_point_split_over_several_blocks(threads, monkeypatch):
    """Small blocks: every worker runs its points over each block of the image."""
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES", 2)
    # blocks this small would otherwise be split over the threads whole
    monkeypatch.setattr(winograd_module.Winograd, "_block_plan", lambda self, spec, m: (2, 1))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 10, 13))
    w = rng.standard_normal((4, 3, 3, 3))
    threads(2)
    spec = spec_of(x, w, 1)
    parts, target = WINOGRAD._point_plan(spec, 4)
    grid = winograd_module.tile_grid(spec.output_shape, 4)
    assert parts == 2 and len(winograd_module.tile_blocks((2, 1, *grid), target)) > 2
    assert_close_scaled(WINOGRAD.run(x, w, spec, tile=4), torch_conv(x, w, padding=1), np.float64)


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)], ids=["2d", "3d"])
def test_tile_blocks_and_parallel_weight_transform(shape, threads, monkeypatch):
    """Many tiles: the block split, with U computed by point ranges on both threads."""
    monkeypatch.setattr(winograd_module, "MIN_SPLIT_TILES", 2)
    monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES", 2)
    monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    monkeypatch.setattr(winograd_module, "_PARALLEL_WEIGHT_ENTRIES", 0)
    rng = np.random.default_rng(5)
    nd = len(shape)
    x = rng.standard_normal((3, 4, *shape))
    w = rng.standard_normal((6, 2, *(3,) * nd))
    threads(2)
    spec = spec_of(x, w, 1, groups=2)
    assert WINOGRAD._point_plan(spec, 4)[0] == 1 and WINOGRAD._block_plan(spec, 4)[1] == 2
    out = WINOGRAD.run(x, w, spec, tile=4)
    assert_close_scaled(out, torch_conv(x, w, padding=1, groups=2), np.float64)


@pytest.mark.parametrize("split", ["one thread", "points", "blocks"])
def test_blocked_weight_gather_of_wide_weights(split, threads, monkeypatch):
    """Taps spanning WEIGHT_GATHER_STRIDE bytes per output channel take the blocked gather
    (_weight_block_rows): channel blocks cut at group ends and at the threads' channel
    ranges (split inside a group here), output channels past the last 16-wide run, every
    point range from one gather, and the block split. float64, so that 118 channels per
    group cross the stride."""
    groups, c, o = 3, 118, 21
    assert c * 9 * 8 >= winograd_module.WEIGHT_GATHER_STRIDE > c * 9 * 4
    monkeypatch.setattr(winograd_module, "_PARALLEL_WEIGHT_ENTRIES", 0)
    if split == "blocks":
        monkeypatch.setattr(winograd_module, "MIN_SPLIT_TILES", 2)
        monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES", 2)
        monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1 if split == "points" else 4, groups * c, 6, 5))
    w = rng.standard_normal((groups * o, c, 3, 3))
    threads(1 if split == "one thread" else 2)
    spec = spec_of(x, w, 1, groups=groups)
    for tile in winograd_module.TILE_SIZES:
        if split != "one thread":
            parts = WINOGRAD._point_plan(spec, tile)[0]
            assert (parts == 2) == (split == "points")
        out = WINOGRAD.run(x, w, spec, tile=tile)
        assert_close_scaled(out, torch_conv(x, w, padding=1, groups=groups), np.float64)
    # float32 at 256 channels, the benchmark's 256 @14 layers
    x32 = rng.standard_normal((1, 256, 4, 4)).astype(np.float32)
    w32 = rng.standard_normal((20, 256, 3, 3)).astype(np.float32)
    out = trueconv.conv(x32, w32, padding=1, algorithm="winograd")
    assert_close_scaled(out, torch_conv(x32, w32, padding=1), np.float32)


def test_partial_kernels_sum_to_the_output():
    """The compiled kernels' point ranges: each range's share, summed, is the full output
    (checked against torch, not against the unsplit kernels)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 10, 9))
    w = rng.standard_normal((2, 3, 3, 3))
    spec = spec_of(x, w, 1)
    input_kernel, output_kernel = winograd_module._kernels()
    (atd, btd), (ath, bth), (atw, btw), kron = winograd_module._call_transforms(4, 2, np.float64)
    grid = winograd_module.tile_grid(spec.output_shape, 4)
    block = (0, 1, 0, 1, 0, grid[0], 0, grid[1])
    tiles = grid[0] * grid[1]
    total = np.zeros((1, 2, 1, 10, 9))
    for p0, p1, per in [(0, 1, 6), (1, 4, 6), (4, 6, 6)]:  # uneven ranges: generic paths
        points = (p1 - p0) * per
        u = np.einsum("tk,ock->tco", kron[p0 * per:p1 * per], w.reshape(2, 3, 9))[:, None]
        v = np.empty((points, tiles, 3))
        input_kernel(x.reshape(1, 3, 1, 10, 9), 0, 1, 1, btd, bth, btw, 1, 4, 4, *block, v, p0,
                     p1, 1, 1, 1)
        share = np.empty_like(total)
        output_kernel(np.matmul(v, u[:, 0]), atd, ath, atw, *block, share, p0, p1, 1, 1, 1)
        total += share
    assert_close_scaled(total[:, :, 0], torch_conv(x, w, padding=1), np.float64)


# (batch, channels, spatial shape, dilation, pads (before, after) per axis): the kernels read
# every d-th sample of x in place and write every d-th output (phases of unequal lengths,
# pads smaller and larger than the dilation, asymmetric pads, 3-D)
DILATED = [
    (1, 3, (17, 16), (2, 3), ((1, 2), (3, 0))),
    (2, 4, (11, 13), (3, 2), ((0, 0), (4, 4))),
    (1, 2, (7, 9, 8), (2, 1, 3), ((2, 2), (0, 1), (3, 3))),
    (3, 2, (9, 6), (2, 2), ((5, 1), (2, 2))),
]


@pytest.mark.parametrize("case", DILATED, ids=lambda c: f"{'x'.join(map(str, c[2]))}-d"
                         f"{''.join(map(str, c[3]))}")
@pytest.mark.parametrize("split", ["points", "blocks"])
def test_dilation_read_and_written_in_place(case, split, threads, monkeypatch):
    from trueconv._spec import ConvSpec

    batch, cin, shape, dilation, pads = case
    nd = len(shape)
    rng = np.random.default_rng(len(shape) + sum(dilation))
    x = rng.standard_normal((batch, cin, *shape))
    w = rng.standard_normal((3, cin, *(3,) * nd))
    threads(2)
    if split == "blocks":
        monkeypatch.setattr(winograd_module, "MIN_SPLIT_TILES", 1)
        monkeypatch.setattr(winograd_module, "MIN_BLOCK_TILES", 2)
        monkeypatch.setattr(winograd_module, "CHUNK_BYTES", 1)
    spec = ConvSpec(batch, cin, 3, 1, shape, (3,) * nd, (1,) * nd, dilation, pads, "float64")
    phases = winograd_module.phase_spec(spec)
    expected = torch_conv(x, w, padding=pads, dilation=dilation)
    for tile in winograd_module.TILE_SIZES:
        assert (WINOGRAD._point_plan(phases, tile)[0] > 1) == (split == "points")
        assert_close_scaled(WINOGRAD.run(x, w, spec, tile=tile), expected, np.float64)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_pool_tasks_leave_the_callers_cpu_and_get_their_mask_back():
    """A pool task runs off the caller's CPU (_pool._leave_cpu), its CPU mask restored afterwards
    (run_parallel and drain wrap their pool tasks alike, in _pool._off_caller_cpu)."""
    import os

    from trueconv.algorithms import _pool

    before = os.sched_getaffinity(0)
    seen = []

    def task():
        seen.append((_pool.current_cpu(), os.sched_getaffinity(0)))

    for _ in range(4):
        caller = _pool.current_cpu()
        _pool.run_parallel([lambda: None, task])
        cpu, mask = seen[-1]
        if len(before) >= 2 and caller >= 0:
            assert caller not in mask and mask == before - {caller}
    masks = [_pool._get_pool(1).submit(os.sched_getaffinity, 0).result() for _ in range(4)]
    assert all(mask == before for mask in masks) and os.sched_getaffinity(0) == before
