"""``trueconv bench``: trueconv against PyTorch, SciPy and OpenCV, row by row.

Every row runs in this one process with the same thread count for all
libraries (``trueconv.set_num_threads``, ``torch.set_num_threads``,
``cv2.setNumThreads``; SciPy's ``fftconvolve``/``oaconvolve`` and NumPy's
``convolve`` are single-threaded by design). Each call is timed as the median
of a few repeats after one warm-up run; a call whose warm-up already takes
longer than :data:`SLOW_CALL` seconds is reported from that single run.

Each row gives trueconv's time with ``algorithm="auto"``, its GFLOP/s
(``2 * multiply-adds / time``), the time of the fastest peer, the ratio
``fastest peer time / trueconv time`` (>= 1.0 means trueconv is at least as
fast), the algorithm ``auto`` chose, and the max error relative to the output
scale against a float64 reference (torch in float64 for layers, SciPy's
float64 FFT convolution for filters and signals).

The suite (issue 3) is defined here once; ``benchmarks/`` wraps the same cases
as asv classes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

#: A call slower than this (seconds) at warm-up is not repeated.
SLOW_CALL = 2.0
PEER_GROUPS = ("torch", "scipy", "opencv")

Inputs = tuple[np.ndarray, ...]


@dataclasses.dataclass
class Case:
    """One benchmark row: how to make its data, run trueconv, its peers and the reference."""

    group: str
    label: str
    dtype: str
    macs: float
    make: Callable[[np.random.Generator], Inputs]
    trueconv: Callable[[Inputs], Any]
    peers: dict[str, tuple[str, Callable[[Inputs], Callable[[], Any]]]]
    reference: Callable[[Inputs], Any]
    quick: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.label} {self.dtype}"


@dataclasses.dataclass
class Row:
    case: Case
    seconds: float
    algorithm: str
    error: float
    peers: dict[str, float]
    runs: int
    note: str = ""

    @property
    def fastest_peer(self) -> tuple[str, float] | None:
        if not self.peers:
            return None
        name = min(self.peers, key=self.peers.__getitem__)
        return name, self.peers[name]

    @property
    def ratio(self) -> float | None:
        best = self.fastest_peer
        return None if best is None or not self.seconds else best[1] / self.seconds

    @property
    def gflops(self) -> float:
        return 2 * self.case.macs / self.seconds / 1e9 if self.seconds else 0.0


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

#: Untimed idle seconds before each library's block, so other libraries' spinning threads park.
SETTLE = 0.3


def time_call(call: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """Median seconds of ``repeats`` runs after one warm-up, and how many runs it took."""
    return time_calls({"call": call}, repeats)["call"]


def time_calls(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, int]]:
    """Median seconds (and run count) of each call, one library after the other.

    Each call gets one warm-up and then ``repeats`` back-to-back runs (fewer, but
    at least 3 if asked for, when it is slow; a call whose warm-up took over
    :data:`SLOW_CALL` seconds is reported from its warm-up alone). Before each
    library's block the machine idles for :data:`SETTLE` seconds, untimed.

    Why blocks and not interleaved rounds: OpenMP (torch) and OpenBLAS worker
    threads spin-wait after each call, for up to about 0.1 s. On 2 cores a library
    timed right after another one competes with the other's spinning threads
    (measured: trueconv's Winograd 6.0 ms alone, 10.1 ms right after a torch call;
    torch's 1x1 conv 0.9 ms alone, 30 ms after an OpenBLAS call and a 20 ms pause).
    Back-to-back runs of one library are its steady state, which is what a loop
    over a data set sees.
    """
    result = {}
    for name, call in calls.items():
        if len(calls) > 1:
            time.sleep(SETTLE)
        start = time.perf_counter()
        call()
        warm = time.perf_counter() - start
        if warm > SLOW_CALL:
            result[name] = (warm, 1)
            continue
        # keep each call to about a second of timed runs
        count = max(min(3, repeats), min(repeats, int(1.0 / max(warm, 1e-9))))
        times = []
        for _ in range(count):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        result[name] = (statistics.median(times), len(times))
    return result


def max_relative_error(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` over one array or a tuple of arrays."""
    if isinstance(expected, tuple):
        return max(max_relative_error(a, e) for a, e in zip(actual, expected))
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) / scale


@contextlib.contextmanager
def captured_plans() -> Iterator[list[Any]]:
    """Record the plans the engine follows (to report what ``auto`` chose for any API)."""
    from .. import _engine

    plans: list[Any] = []
    original = _engine.choose

    def spy(*args: Any, **kwargs: Any) -> Any:
        plan = original(*args, **kwargs)
        plans.append(plan)
        return plan

    _engine.choose = spy
    try:
        yield plans
    finally:
        _engine.choose = original


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

LAYERS: list[tuple[str, int, int, tuple[int, ...], int, int, int, int, int]] = [
    # label, in, out, spatial size, kernel, stride, padding, dilation, groups
    ("ResNet-50 conv1 7x7/2 3->64 @224", 3, 64, (224, 224), 7, 2, 3, 1, 1),
    ("3x3 64->64 @56", 64, 64, (56, 56), 3, 1, 1, 1, 1),
    ("3x3 128->128 @28", 128, 128, (28, 28), 3, 1, 1, 1, 1),
    ("3x3 256->256 @14", 256, 256, (14, 14), 3, 1, 1, 1, 1),
    ("3x3 512->512 @7", 512, 512, (7, 7), 3, 1, 1, 1, 1),
    ("1x1 256->64 @56", 256, 64, (56, 56), 1, 1, 0, 1, 1),
    ("1x1 1024->256 @14", 1024, 256, (14, 14), 1, 1, 0, 1, 1),
    ("3x3/2 128->128 @56", 128, 128, (56, 56), 3, 2, 1, 1, 1),
    ("depthwise 3x3 C=32 @112", 32, 32, (112, 112), 3, 1, 1, 1, 32),
    ("dilated 3x3 d=2 64->64 @56", 64, 64, (56, 56), 3, 1, 2, 2, 1),
    ("conv1d k=3 64->64 L=4096", 64, 64, (4096,), 3, 1, 1, 1, 1),
    ("conv3d 3x3x3 16->16 @16x32x32", 16, 16, (16, 32, 32), 3, 1, 1, 1, 1),
]
QUICK_LAYERS = {"3x3 64->64 @56", "1x1 256->64 @56", "depthwise 3x3 C=32 @112"}
FILTER_KERNELS = (3, 7, 15, 31, 63)
SIGNAL_TAPS = (16, 256, 4096)


def _torch() -> Any:
    import torch

    return torch


def _torch_conv(nd: int) -> Callable[..., Any]:
    functional = _torch().nn.functional
    return (functional.conv1d, functional.conv2d, functional.conv3d)[nd - 1]


def _output_positions(size: tuple[int, ...], k: int, stride: int, padding: int, dilation: int) -> int:
    from .._spec import conv_output_size

    return math.prod(conv_output_size(n + 2 * padding, k, stride, dilation) for n in size)


def layer_cases(batches: Sequence[int] = (1, 8)) -> list[Case]:
    import trueconv

    cases = []
    for label, c, o, size, k, stride, padding, dilation, groups in LAYERS:
        nd = len(size)
        for n in batches:
            def make(rng: np.random.Generator, n=n, c=c, o=o, size=size, k=k, groups=groups, nd=nd) -> Inputs:
                x = rng.standard_normal((n, c, *size), dtype=np.float32)
                w = rng.standard_normal((o, c // groups, *(k,) * nd), dtype=np.float32)
                return x, w

            params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

            def run(data: Inputs, params=params) -> Any:
                return trueconv.conv(data[0], data[1], **params)

            def torch_peer(data: Inputs, params=params, nd=nd) -> Callable[[], Any]:
                torch, conv = _torch(), _torch_conv(nd)
                xt, wt = torch.from_numpy(data[0]), torch.from_numpy(data[1])

                def call() -> Any:
                    with torch.no_grad():
                        return conv(xt, wt, **params)

                return call

            def reference(data: Inputs, params=params, nd=nd) -> Any:
                torch, conv = _torch(), _torch_conv(nd)
                with torch.no_grad():
                    return conv(torch.from_numpy(data[0]).double(), torch.from_numpy(data[1]).double(),
                                **params).numpy()

            macs = n * o * _output_positions(size, k, stride, padding, dilation) * (c // groups) * k**nd
            cases.append(Case(
                "layers", f"{label} b{n}", "float32", macs, make, run,
                {"torch": ("torch", torch_peer)}, reference,
                quick=(label in QUICK_LAYERS and n == 1),
            ))
    return cases


def backward_cases() -> list[Case]:
    import trueconv

    conv_grad = getattr(trueconv, "conv_grad", None)
    n, c, o, size = 8, 64, 64, (56, 56)

    def make(rng: np.random.Generator) -> Inputs:
        x = rng.standard_normal((n, c, *size), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
        g = rng.standard_normal((n, o, *size), dtype=np.float32)
        return x, w, g

    def run(data: Inputs) -> Any:
        gx, gw, _ = conv_grad(data[2], data[0], data[1], padding=1, needs=("input", "weight"))
        return gx, gw

    def torch_backward(data: Inputs, double: bool = False) -> Callable[[], Any]:
        torch = _torch()
        x, w, g = (torch.from_numpy(a) for a in data)
        if double:
            x, w, g = x.double(), w.double(), g.double()

        def call() -> Any:
            # the backward kernel alone, no forward pass and no autograd graph
            gx, gw, _ = torch.ops.aten.convolution_backward(
                g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
            return gx, gw

        return call

    def reference(data: Inputs) -> Any:
        gx, gw = torch_backward(data, double=True)()
        return gx.numpy(), gw.numpy()

    note = "" if conv_grad is not None else "skipped: trueconv.conv_grad is not available in this build"
    return [Case("backward", "grad input+weight 3x3 64->64 @56 b8", "float32", 2 * n * o * c * 9 * 56 * 56,
                 make, run, {"torch": ("torch", torch_backward)}, reference, note=note)]


def filter_cases(kernels: Sequence[int] = FILTER_KERNELS,
                 dtypes: Sequence[str] = ("float32", "float64"), size: int = 1024) -> list[Case]:
    import trueconv

    cases = []
    for dtype in dtypes:
        for k in kernels:
            def make(rng: np.random.Generator, k=k, dtype=dtype) -> Inputs:
                image = rng.standard_normal((size, size)).astype(dtype)
                kernel = rng.standard_normal((k, k)).astype(dtype)
                return image, kernel

            def run(data: Inputs) -> Any:
                # convolve (method="auto"), not convolve2d: like SciPy's, that one is direct-only
                return trueconv.convolve(data[0], data[1], mode="same")

            def scipy_peer(fn_name: str) -> Callable[[Inputs], Callable[[], Any]]:
                def build(data: Inputs) -> Callable[[], Any]:
                    import scipy.ndimage
                    import scipy.signal

                    image, kernel = data
                    if fn_name == "ndimage.convolve":
                        return lambda: scipy.ndimage.convolve(image, kernel, mode="constant")
                    fn = getattr(scipy.signal, fn_name)
                    return lambda: fn(image, kernel, mode="same")

                return build

            def cv2_peer(data: Inputs) -> Callable[[], Any]:
                import cv2

                image, kernel = data
                # filter2D correlates; the flipped kernel makes it the same convolution
                flipped = np.ascontiguousarray(kernel[::-1, ::-1])
                return lambda: cv2.filter2D(image, -1, flipped, borderType=cv2.BORDER_CONSTANT)

            def reference(data: Inputs) -> Any:
                import scipy.signal

                return scipy.signal.fftconvolve(data[0].astype(np.float64), data[1].astype(np.float64),
                                                mode="same")

            peers = {
                "scipy.signal.convolve2d": ("scipy", scipy_peer("convolve2d")),
                "scipy.signal.fftconvolve": ("scipy", scipy_peer("fftconvolve")),
                "scipy.signal.oaconvolve": ("scipy", scipy_peer("oaconvolve")),
                "scipy.ndimage.convolve": ("scipy", scipy_peer("ndimage.convolve")),
                "cv2.filter2D": ("opencv", cv2_peer),
            }
            cases.append(Case("filter", f"image {size}x{size} kernel {k}x{k}", dtype,
                              float(size * size * k * k), make, run, peers, reference,
                              quick=(dtype == "float32" and k in (3, 7))))
    return cases


def signal_cases(taps: Sequence[int] = SIGNAL_TAPS, length: int = 1_000_000) -> list[Case]:
    import trueconv

    cases = []
    for m in taps:
        def make(rng: np.random.Generator, m=m) -> Inputs:
            return rng.standard_normal(length), rng.standard_normal(m)

        def run(data: Inputs) -> Any:
            return trueconv.convolve(data[0], data[1])

        def numpy_peer(data: Inputs) -> Callable[[], Any]:
            return lambda: np.convolve(data[0], data[1])

        def oa_peer(data: Inputs) -> Callable[[], Any]:
            import scipy.signal

            return lambda: scipy.signal.oaconvolve(data[0], data[1])

        def reference(data: Inputs) -> Any:
            import scipy.signal

            return scipy.signal.fftconvolve(data[0], data[1])

        cases.append(Case("signal", f"1-D {length:.0e} samples x {m} taps".replace("e+0", "e"), "float64",
                          float(length * m), make, run,
                          {"np.convolve": ("scipy", numpy_peer), "scipy.signal.oaconvolve": ("scipy", oa_peer)},
                          reference, quick=(m == 256)))
    return cases


def algorithm_cases() -> list[Case]:
    """Every registered algorithm forced on one layer: its speed and its accuracy."""
    import trueconv
    from ..algorithms import ALGORITHMS

    cases = []
    n, c, o, size = 8, 64, 64, (56, 56)
    for name in sorted(ALGORITHMS):
        def make(rng: np.random.Generator) -> Inputs:
            return (rng.standard_normal((n, c, *size), dtype=np.float32),
                    rng.standard_normal((o, c, 3, 3), dtype=np.float32))

        def run(data: Inputs, name=name) -> Any:
            return trueconv.conv(data[0], data[1], padding=1, algorithm=name)

        def torch_peer(data: Inputs) -> Callable[[], Any]:
            torch = _torch()
            xt, wt = torch.from_numpy(data[0]), torch.from_numpy(data[1])

            def call() -> Any:
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xt, wt, padding=1)

            return call

        def reference(data: Inputs) -> Any:
            torch = _torch()
            with torch.no_grad():
                return torch.nn.functional.conv2d(torch.from_numpy(data[0]).double(),
                                                  torch.from_numpy(data[1]).double(), padding=1).numpy()

        cases.append(Case("algorithms", f"3x3 64->64 @56 b8, algorithm={name}", "float32",
                          float(n * o * c * 9 * 56 * 56), make, run, {"torch": ("torch", torch_peer)},
                          reference))
    return cases


def all_cases() -> list[Case]:
    return [*layer_cases(), *backward_cases(), *filter_cases(), *signal_cases(), *algorithm_cases()]


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

def available_peer_groups(requested: Sequence[str]) -> dict[str, str]:
    """Map each requested peer group to '' if importable, else the reason it is skipped."""
    modules = {"torch": "torch", "scipy": "scipy", "opencv": "cv2"}
    status = {}
    for group in requested:
        try:
            __import__(modules[group])
            status[group] = ""
        except ImportError as exc:
            status[group] = f"not installed ({exc})"
    return status


def set_threads(threads: int, groups: Sequence[str]) -> None:
    """Give every library the same thread count."""
    import trueconv

    trueconv.set_num_threads(threads)
    if "torch" in groups:
        _torch().set_num_threads(threads)
    if "opencv" in groups:
        import cv2

        cv2.setNumThreads(threads)


def run_case(case: Case, groups: Sequence[str], repeats: int, seed: int = 0) -> Row:
    if case.note:
        return Row(case, 0.0, "-", float("nan"), {}, 0, case.note)
    data = case.make(np.random.default_rng(seed))
    with captured_plans() as plans:
        output = case.trueconv(data)
    algorithms = sorted({p.algorithm for p in plans}) or ["?"]
    try:
        error = max_relative_error(output, case.reference(data))
    except ImportError:  # the reference library (torch for layers) is not installed
        error = float("nan")
    calls = {"trueconv": lambda: case.trueconv(data)}
    for name, (group, build) in case.peers.items():
        if group in groups:
            calls[name] = build(data)
    timed = time_calls(calls, repeats)
    seconds, runs = timed.pop("trueconv")
    peers = {name: t for name, (t, _) in timed.items()}
    return Row(case, seconds, "+".join(algorithms), error, peers, runs)


def merge_rounds(rows: list[Row]) -> Row:
    """One row from the same case timed in several rounds: the median of each library's times.

    The rounds run the whole suite again, minutes apart, so a burst of load on the
    shared machine moves one round's time, not the median of three.
    """
    first = rows[0]
    if first.note or len(rows) == 1:
        return first
    peers = {name: statistics.median(r.peers[name] for r in rows) for name in first.peers}
    algorithms = sorted({a for r in rows for a in r.algorithm.split("+")})
    return Row(first.case, statistics.median(r.seconds for r in rows), "+".join(algorithms),
               max(r.error for r in rows), peers, sum(r.runs for r in rows))


def select_cases(quick: bool, only: str | None) -> list[Case]:
    cases = all_cases()
    if quick:
        cases = [c for c in cases if c.quick]
    if only:
        needles = [s.strip().lower() for s in only.split(",") if s.strip()]
        cases = [c for c in cases if any(n in c.name.lower() for n in needles)]
    return cases


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def header(threads: int, groups: dict[str, str]) -> list[str]:
    import scipy

    import trueconv
    from .._calibration import cpu_model
    from .._threads import blas_info

    versions = [f"trueconv {trueconv.__version__}", f"numpy {np.__version__}", f"scipy {scipy.__version__}"]
    for module, label in (("torch", "torch"), ("cv2", "opencv"), ("numba", "numba")):
        if module in sys.modules:
            versions.append(f"{label} {sys.modules[module].__version__}")
    pools = [f"{p['internal_api']} {p['version']} ({p['architecture']}, {p['num_threads']} threads, "
             f"{os.path.basename(p['filepath'] or '')})" for p in blas_info()]
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        "# trueconv benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- threads: {threads} for every library (trueconv, BLAS, torch, OpenCV)",
        f"- versions: {', '.join(versions)}",
        f"- thread pools (threadpoolctl): {'; '.join(pools) or 'none reported'}",
        "- OpenBLAS env: " + ", ".join(f"{k}={'unset' if v is None else v}" for k, v in env.items()),
        f"- load average at start: {', '.join(f'{x:.2f}' for x in load) if load else 'unknown'}",
        f"- planner: {planner_mode()}",
        "- timing: median of back-to-back repeats after one warm-up, one library at a time "
        f"with {SETTLE:.1f} s untimed idle before each (spinning OpenMP/OpenBLAS threads of "
        "the previous library would otherwise steal its cores); ratio = fastest "
        "peer time / trueconv "
        "time (>= 1.0x: trueconv at least as fast); error = max|y - ref| / max|ref| against a "
        "float64 reference",
    ]
    skipped = [f"{g} ({why})" for g, why in groups.items() if why]
    if skipped:
        lines.append(f"- peers skipped: {', '.join(skipped)}")
    return lines


def planner_mode() -> str:
    from .._autotune import autotune_enabled
    from .._calibration import active_calibration

    if autotune_enabled():
        return "autotuner on (measured choices, cached)"
    table = active_calibration()
    return (f"cost-model heuristics (calibration: {table['date']}, "
            f"{table['machine'].get('cpu', 'unknown')}, {table.get('threads', 1)} thread(s))")


def table(rows: list[Row]) -> list[str]:
    lines = ["| case | dtype | trueconv auto | algorithm | GFLOP/s | fastest peer | peer time | "
             "ratio | max rel. error | all peers |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---|"]
    for row in rows:
        if row.note:
            lines.append(f"| {row.case.label} | {row.case.dtype} | - | - | - | - | - | - | - | "
                         f"{row.note} |")
            continue
        best = row.fastest_peer
        ratio = row.ratio
        peers = ", ".join(f"{n} {_fmt_time(t)}" for n, t in sorted(row.peers.items(), key=lambda kv: kv[1]))
        lines.append(
            f"| {row.case.label} | {row.case.dtype} | {_fmt_time(row.seconds)} | {row.algorithm} | "
            f"{row.gflops:.1f} | {best[0] if best else '-'} | {_fmt_time(best[1]) if best else '-'} | "
            f"{f'{ratio:.2f}x' if ratio is not None else '-'} | {row.error:.1e} | {peers or '-'} |"
        )
    return lines


def report(rows: list[Row], threads: int, groups: dict[str, str], elapsed: float,
           rounds: int = 1) -> str:
    lines = header(threads, groups)
    if rounds > 1:
        lines.append(f"- rounds: the whole suite ran {rounds} times; every time below is the median "
                     "over the rounds of each round's median")
    lines.append(f"- wall time of the run: {elapsed:.0f} s")
    titles = {"layers": "Forward layers (float32, NCHW)", "backward": "Backward",
              "filter": "Image filtering, mode='same'", "signal": "1-D signals, mode='full'",
              "algorithms": "Each algorithm forced (speed and accuracy)"}
    for group, title in titles.items():
        chosen = [r for r in rows if r.case.group == group]
        if chosen:
            lines += ["", f"## {title}", "", *table(chosen)]
    ranked = [r for r in rows if r.ratio is not None and r.case.group != "algorithms"]
    if ranked:
        wins = sum(r.ratio >= 1.0 for r in ranked)
        lines += ["", f"Rows at >= 1.0x the fastest peer: {wins} of {len(ranked)}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: str) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("trueconv bench --plot needs matplotlib: pip install 'trueconv[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [r for r in rows if r.ratio is not None and r.case.group != "algorithms"]
    labels = [f"{r.case.label} {r.case.dtype}" for r in shown]
    ratios = [r.ratio for r in shown]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.2))
    colors = ["tab:green" if q >= 1.0 else "tab:red" for q in ratios]
    ax.barh(range(len(shown)), ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    for index, ratio in enumerate(ratios):
        ax.annotate(f"{ratio:.2f}x", (ratio, index), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=6)
    ax.set_xscale("log")
    # plain tick labels at round ratios; the default log labels overlap on a narrow range
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if min(ratios) / 2 <= t <= max(ratios) * 2]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("fastest peer time / trueconv time (>1: trueconv faster)")
    ax.set_title("trueconv auto vs the fastest peer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark trueconv against torch, scipy and opencv",
        description="Time trueconv (algorithm='auto') against PyTorch, SciPy and OpenCV on the "
                    "issue-3 suite, in one process with one thread count; print a Markdown report.")
    parser.add_argument("--quick", action="store_true", help="a small subset (well under 30 s)")
    parser.add_argument("--against", default=",".join(PEER_GROUPS), metavar="LIST",
                        help="comma-separated peers among torch,scipy,opencv (default: all)")
    parser.add_argument("--output", metavar="FILE", help="write the Markdown report here")
    parser.add_argument("--plot", metavar="FILE", help="save a bar chart of the ratios (matplotlib)")
    parser.add_argument("--only", metavar="TEXT",
                        help="keep rows whose name contains one of these comma-separated strings")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per call (default 7, or 3 with --quick)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole suite this many times and report each library's "
                             "median over the rounds (default 1)")
    parser.add_argument("--threads", type=int, help="thread count for every library (default: all cores)")
    parser.add_argument("--autotune", action="store_true",
                        help="let auto measure its candidates (trueconv.set_autotune) instead of "
                             "following the cost model; tuning happens in the untimed first call")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import CLIError

    requested = [s.strip() for s in args.against.split(",") if s.strip()]
    unknown = sorted(set(requested) - set(PEER_GROUPS))
    if unknown:
        raise CLIError(f"--against: unknown peers {unknown}; choose among {', '.join(PEER_GROUPS)}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.repeats < 1:
        raise CLIError(f"--repeats must be at least 1, got {args.repeats}")
    if args.rounds < 1:
        raise CLIError(f"--rounds must be at least 1, got {args.rounds}")
    cases = select_cases(args.quick, args.only)
    if not cases:
        raise CLIError(f"no benchmark row matches --only {args.only!r} (see --list)")
    if args.list:
        for case in cases:
            print(f"{case.group:10s} {case.name}")
        return 0
    from .._threads import get_num_threads

    threads = args.threads or get_num_threads()
    if threads < 1:
        raise CLIError(f"--threads must be at least 1, got {threads}")
    groups = available_peer_groups(requested)
    usable = [g for g, why in groups.items() if not why]
    set_threads(threads, usable)
    if args.autotune:
        import trueconv

        trueconv.set_autotune(True)
    started = time.perf_counter()
    rounds: list[list[Row]] = [[] for _ in cases]
    for index in range(args.rounds):
        for case, timed in zip(cases, rounds):
            row = run_case(case, usable, args.repeats)
            timed.append(row)
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            prefix = f"[round {index + 1}/{args.rounds}] " if args.rounds > 1 else ""
            print(f"{prefix}{case.name:55s} {_fmt_time(row.seconds):>10s} {row.algorithm:9s} {ratio}",
                  file=sys.stderr, flush=True)
    rows = [merge_rounds(timed) for timed in rounds]
    text = report(rows, threads, groups, time.perf_counter() - started, args.rounds)
    if args.output:
        _write_atomic(args.output, text)
    else:
        print(text, end="")
    if args.plot:
        plot(rows, args.plot)
    return 0


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
