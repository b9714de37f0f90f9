"""The compiled loops' parallel launches and their serial fallbacks.

Winograd's drivers and the direct stencil fork and join inside Numba (``prange``)
where its threading layer is thread-safe (``_pool.compiled_parallel``); elsewhere,
and in a forked child of a process that launched them (GNU OpenMP aborts such a
child), they run serially. Both must give the same results, checked against torch.
"""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest

import trueconv
from trueconv._threads import get_num_threads, set_num_threads
from trueconv.algorithms import _kernels_numba, _pool
from trueconv.algorithms import winograd as winograd_module

from references import assert_close_scaled, torch_conv

pytest.importorskip("torch")
pytest.importorskip("numba")


@pytest.fixture
def two_threads():
    before = get_num_threads()
    set_num_threads(2)
    yield
    set_num_threads(before)


def layer_calls(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, dict, str]]:
    """Calls that split over two threads when they may: 2-D Winograd by tile blocks and by
    transform points, 1-D Winograd, the direct stencil (float64: one compiled build each)."""
    return [
        (rng.standard_normal((2, 8, 40, 36)), rng.standard_normal((8, 8, 3, 3)),
         dict(padding=1), "winograd"),
        (rng.standard_normal((1, 16, 12, 12)), rng.standard_normal((16, 16, 3, 3)),
         dict(padding=1), "winograd"),
        (rng.standard_normal((2, 8, 3000)), rng.standard_normal((8, 8, 3)),
         dict(padding=1), "winograd"),
        (rng.standard_normal((2, 4, 300, 200)), rng.standard_normal((4, 1, 5, 5)),
         dict(padding=2, groups=4), "direct"),
    ]


def run_calls(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [trueconv.conv(x, w, algorithm=algorithm, **kw)
            for x, w, kw, algorithm in layer_calls(rng)]


def expected_results(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [torch_conv(x, w, **kw) for x, w, kw, _ in layer_calls(rng)]


def test_serial_builds_match_torch(two_threads, monkeypatch):
    """Without a thread-safe layer the serial builds run, in the calling thread."""
    launches = []
    real_parallel = _kernels_numba._correlate_parallel
    monkeypatch.setattr(_kernels_numba, "_correlate_parallel",
                        lambda *args: launches.append(args) or real_parallel(*args))
    monkeypatch.setattr(winograd_module, "compiled_parallel", lambda: False)
    monkeypatch.setattr(_kernels_numba, "compiled_parallel", lambda: False)
    monkeypatch.setattr(_kernels_numba, "MIN_MACS_PER_THREAD", 1 << 10)
    for actual, expected in zip(run_calls(1), expected_results(1)):
        assert_close_scaled(actual, expected, np.float64)
    # the weight-gradient form of a 3x3 layer (its own driver)
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((3, 6, 20, 18)), rng.standard_normal((4, 6, 3, 3))
    gy = rng.standard_normal((3, 4, 20, 18))
    _, grad_w, _ = trueconv.conv_grad(gy, x, w, padding=1, needs=("weight",),
                                      algorithm="winograd")
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x).requires_grad_(False)
    wt = torch.from_numpy(w).requires_grad_(True)
    torch.nn.functional.conv2d(xt, wt, padding=1).backward(torch.from_numpy(gy))
    assert_close_scaled(grad_w, wt.grad.numpy(), np.float64)
    assert not launches
    for key in ("driver-serial", "driver-1d-serial", "driver-wg-serial"):
        assert key in winograd_module._COMPILED


def test_parallel_builds_match_torch(two_threads, monkeypatch):
    monkeypatch.setattr(_kernels_numba, "MIN_MACS_PER_THREAD", 1 << 10)
    for actual, expected in zip(run_calls(2), expected_results(2)):
        assert_close_scaled(actual, expected, np.float64)


def _child(queue: multiprocessing.Queue) -> None:  # runs in the forked child
    try:
        queue.put((_pool.compiled_parallel(), run_calls(3)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        queue.put(error)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method: Linux")
def test_forked_child_after_a_parallel_launch_runs_serially(two_threads, monkeypatch):
    """GNU OpenMP aborts a forked child that launches parallel work its parent launched
    too: the child sees compiled_parallel() False and runs the serial builds."""
    monkeypatch.setattr(_kernels_numba, "MIN_MACS_PER_THREAD", 1 << 10)
    run_calls(4)  # the parent launches (where it can)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=240)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0, f"the forked child died (exit code {child.exitcode})"
    if isinstance(result, BaseException):
        raise result
    parallel_in_child, results = result
    assert parallel_in_child is False or not _pool.compiled_parallel()
    for actual, expected in zip(results, expected_results(3)):
        assert_close_scaled(actual, expected, np.float64)


def test_starting_numba_threads_keeps_torchs_thread_count():
    """Numba's OpenMP layer, started by trueconv's first compiled launch, set the process's
    OpenMP thread count to its own: torch (sharing GNU OpenMP, its threads already up) then
    ran on all cores after its user had asked for one, and `trueconv bench --threads 1`
    timed torch on two. A fresh process: the threads start once per process."""
    import subprocess

    code = (
        "import numpy as np, torch, trueconv\n"
        "torch.set_num_threads(1)\n"
        "torch.nn.functional.conv2d(torch.ones(1, 8, 30, 30), torch.ones(8, 8, 3, 3))\n"
        "x = np.ones((1, 8, 30, 30), np.float32); w = np.ones((8, 8, 3, 3), np.float32)\n"
        "trueconv.conv2d(x, w, padding=1, algorithm='winograd')\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert result.stdout.split() == ["1"]
