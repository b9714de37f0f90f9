"""Calibration constants of the planner's cost model, as data with provenance.

The planner (``_planner.cost_features``) describes each algorithm's work on a
:class:`~trueconv._spec.ConvSpec` by a few counts (multiply-adds, bytes
gathered, BLAS calls, transform points...). The predicted time is the dot
product of those counts with the coefficients below, one vector per algorithm
and precision class (``float32``, ``float64``, ``int64``). The coefficients
were fitted by non-negative least squares on relative error to the median
over passes of the minimum times of a fixed training set of shapes, from 1x1
to layer-sized (CuPy's ``_convolve_choose.py`` idea, with the provenance
CuPy's table lacks: machine, date, thread count, library and BLAS versions).

Regenerate on your machine (takes about three minutes per thread count)::

    python -m trueconv._calibration                        # print the new table
    python -m trueconv._calibration --threads 1 --write    # and put it into this file
    python -m trueconv._calibration --threads 2 --write    # one table per thread count
    python -m trueconv._calibration --save-timings t.json  # keep the raw times ...
    python -m trueconv._calibration --timings t.json       # ... and re-fit them later

Each algorithm is timed in its own block of back-to-back runs (as ``trueconv
bench`` times libraries), the whole training set three times over
(``--passes``), and the fit uses the median of the passes; it prints how many
training problems the fitted model ranks right.

There is one table per thread count, and the planner uses the one nearest
:func:`trueconv.get_num_threads` (:func:`active_calibration`): algorithms
scale unevenly with threads (a BLAS GEMM nearly 2x on two cores, a NumPy
gather or a small Winograd block not at all), so a ranking measured with one
thread misjudges a two-thread run. Measure on a quiet machine: with neighbours'
load, multi-threaded timings swing by several times.

Only the ranking of algorithms matters to the planner, so a table from a
different machine degrades choices gracefully; ``trueconv.set_autotune(True)``
measures instead of predicting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

# --- BEGIN GENERATED TABLE (python -m trueconv._calibration --write) ---
CALIBRATIONS: list[dict[str, Any]] = [
    {
        "date": "2026-11-22",
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "platform": "Linux-6.18.44-fc-v657-x86_64-with-glibc2.36"
        },
        "versions": {
            "python": "3.11.7",
            "numpy": "2.4.6",
            "scipy": "1.17.1",
            "trueconv": "0.1.0",
            "numba": "0.68.1"
        },
        "threads": 1,
        "passes": 3,
        "blas": [
            "openblas 0.3.31.188.0 SkylakeX threads=1",
            "openblas 0.3.30 SkylakeX threads=1"
        ],
        "coefficients": {
            "direct": {
                "float32": [
                    1.249e-11,
                    0.0,
                    3.561e-06,
                    3.29e-11,
                    6.539e-11,
                    6.865e-12,
                    1.305e-05
                ],
                "float64": [
                    2.929e-11,
                    0.0,
                    1.348e-06,
                    6.182e-11,
                    6.049e-11,
                    8.731e-12,
                    1.025e-05
                ],
                "int64": [
                    0.0,
                    0.0,
                    0.0,
                    7.442e-11,
                    0.0,
                    0.0,
                    5.863e-06
                ]
            },
            "im2col": {
                "float32": [
                    1.212e-11,
                    3.539e-11,
                    3.234e-07,
                    2.721e-05
                ],
                "float64": [
                    2.768e-11,
                    2.945e-11,
                    4.674e-07,
                    3.908e-05
                ],
                "int64": [
                    7.859e-10,
                    0.0,
                    1.197e-06,
                    4.988e-05
                ]
            },
            "fft": {
                "float32": [
                    2.602e-10,
                    8.857e-11,
                    0.0,
                    3.921e-05
                ],
                "float64": [
                    3.802e-10,
                    2.09e-10,
                    0.0,
                    0.0
                ],
                "int64": [
                    5.157e-10,
                    1.283e-10,
                    7.527e-11,
                    2.993e-05
                ]
            },
            "winograd": {
                "float32": [
                    1.021e-09,
                    5.537e-10,
                    2.273e-12,
                    6.38e-10,
                    7.7e-05
                ],
                "float64": [
                    1.44e-09,
                    7.466e-10,
                    1.202e-11,
                    8.407e-10,
                    3.131e-05
                ],
                "int64": [
                    1e-06,
                    1e-06,
                    1e-06,
                    0.001
                ]
            },
            "generic": {
                "float32": [
                    1e-10,
                    0.0001
                ],
                "float64": [
                    2e-10,
                    0.0001
                ],
                "int64": [
                    2e-09,
                    0.0001
                ]
            }
        }
    },
    {
        "date": "2026-11-22",
        "machine": {
            "cpu": "AMD EPYC",
            "cores": 2,
            "platform": "Linux-6.18.44-fc-v657-x86_64-with-glibc2.36"
        },
        "versions": {
            "python": "3.11.7",
            "numpy": "2.4.6",
            "scipy": "1.17.1",
            "trueconv": "0.1.0",
            "numba": "0.68.1"
        },
        "threads": 2,
        "passes": 3,
        "blas": [
            "openblas 0.3.30 SkylakeX threads=2",
            "openblas 0.3.31.188.0 SkylakeX threads=2"
        ],
        "coefficients": {
            "direct": {
                "float32": [
                    6.919e-12,
                    0.0,
                    7.623e-06,
                    2.093e-11,
                    4.634e-11,
                    3.224e-12,
                    1.771e-05
                ],
                "float64": [
                    1.799e-11,
                    0.0,
                    9.97e-06,
                    4.017e-11,
                    3.635e-11,
                    5.967e-12,
                    1.524e-05
                ],
                "int64": [
                    0.0,
                    0.0,
                    0.0,
                    4.941e-11,
                    0.0,
                    0.0,
                    1.148e-05
                ]
            },
            "im2col": {
                "float32": [
                    6.331e-12,
                    3.286e-11,
                    3.091e-07,
                    2.946e-05
                ],
                "float64": [
                    1.549e-11,
                    2.805e-11,
                    5.818e-07,
                    3.992e-05
                ],
                "int64": [
                    5.402e-10,
                    2.34e-11,
                    0.0,
                    4.675e-05
                ]
            },
            "fft": {
                "float32": [
                    2.026e-10,
                    3.352e-11,
                    0.0,
                    8.856e-05
                ],
                "float64": [
                    3.632e-10,
                    1.003e-10,
                    0.0,
                    1.262e-05
                ],
                "int64": [
                    5.023e-10,
                    4.642e-11,
                    0.0,
                    6.435e-05
                ]
            },
            "winograd": {
                "float32": [
                    5.52e-10,
                    3.259e-10,
                    2.028e-12,
                    4.099e-10,
                    8.457e-05
                ],
                "float64": [
                    7.802e-10,
                    7.042e-10,
                    8.451e-12,
                    4.191e-10,
                    6.119e-05
                ],
                "int64": [
                    1e-06,
                    1e-06,
                    1e-06,
                    0.001
                ]
            },
            "generic": {
                "float32": [
                    1e-10,
                    0.0001
                ],
                "float64": [
                    2e-10,
                    0.0001
                ],
                "int64": [
                    2e-09,
                    0.0001
                ]
            }
        }
    }
]
# --- END GENERATED TABLE ---

PRECISIONS = ("float32", "float64", "int64")


def precision_class(dtype_name: str) -> str:
    """Map a compute dtype to the calibration class whose speed it shares."""
    import numpy as np

    dtype = np.dtype(dtype_name)
    if dtype.kind in "iu":
        return "int64"
    if dtype.kind == "c":
        return "float32" if dtype.itemsize <= 8 else "float64"
    return "float32" if dtype.itemsize <= 4 else "float64"


def active_calibration(threads: int | None = None) -> dict[str, Any]:
    """The table measured with the thread count nearest ``threads`` (default: the current one).

    Algorithms scale unevenly with threads (BLAS GEMMs nearly 2x on 2 cores, small
    Winograd blocks and NumPy gathers not at all), so a ranking measured with one
    thread misjudges a 2-thread run and the other way round. Ties go to the table
    with fewer threads.
    """
    if threads is None:
        from ._threads import get_num_threads

        threads = get_num_threads()
    return min(CALIBRATIONS, key=lambda table: (abs(table.get("threads", 1) - threads),
                                                table.get("threads", 1)))


def coefficients(algorithm: str, precision: str, threads: int | None = None) -> list[float]:
    """The fitted coefficient vector, or the generic one for an uncalibrated algorithm."""
    table = active_calibration(threads)["coefficients"]
    return table.get(algorithm, table["generic"]).get(precision) or table["generic"][precision]


# ---------------------------------------------------------------------------
# Regeneration: measure the training set, fit, print or rewrite this file.
# ---------------------------------------------------------------------------

def training_specs(precision: str) -> list[Any]:
    """A fixed set of representative problems, small to layer-sized (at most ~0.1 s each)."""
    from ._spec import ConvSpec

    dtype = {"float32": "float32", "float64": "float64", "int64": "int64"}[precision]

    def spec(n, c, o, g, size, kernel, stride=1, dilation=1, pad=None):  # noqa: ANN001, ANN202
        nd = len(size)
        kernel = tuple(kernel) if isinstance(kernel, tuple) else (kernel,) * nd
        pad = tuple((k // 2, k // 2) for k in kernel) if pad is None else pad
        return ConvSpec(n, c, o, g, tuple(size), kernel, (stride,) * nd, (dilation,) * nd, pad, dtype)

    specs = [
        spec(1, 16, 16, 1, (32, 32), 3),
        spec(2, 32, 32, 1, (28, 28), 3),
        spec(1, 64, 64, 1, (14, 14), 3),
        spec(4, 64, 64, 1, (14, 14), 3),
        spec(1, 128, 128, 1, (7, 7), 3),
        spec(2, 64, 32, 1, (28, 28), 1),
        spec(1, 256, 64, 1, (14, 14), 1),
        spec(2, 32, 32, 1, (28, 28), 3, stride=2),
        spec(1, 32, 32, 32, (56, 56), 3),
        spec(4, 16, 16, 16, (32, 32), 3),
        spec(1, 3, 16, 1, (64, 64), 7, stride=2),
        spec(1, 16, 16, 1, (28, 28), 3, dilation=2, pad=((2, 2), (2, 2))),
        spec(1, 1, 1, 1, (128, 128), 3),
        spec(1, 1, 1, 1, (128, 128), 15),
        spec(1, 1, 1, 1, (128, 128), 31),
        spec(1, 1, 1, 1, (65536,), 16, pad=((15, 15),)),
        spec(1, 1, 1, 1, (16384,), 512, pad=((511, 511),)),
        spec(1, 32, 32, 1, (1024,), 3),
        spec(1, 8, 8, 1, (8, 16, 16), 3),
        spec(1, 4, 8, 1, (32, 32), 9),
        spec(1, 64, 64, 1, (28, 28), 3),
        spec(2, 128, 128, 1, (7, 7), 3),
        spec(1, 1, 1, 1, (256, 256), 7),
        spec(1, 1, 1, 1, (65536,), 256, pad=((255, 255),)),
        spec(1, 64, 64, 1, (512,), 3),
        spec(1, 64, 64, 1, (56, 56), 3),
        spec(2, 256, 256, 1, (14, 14), 3),
        spec(2, 32, 32, 32, (112, 112), 3),
        # layer-sized problems (tens of ms each): where per-call overheads stop mattering
        spec(4, 64, 64, 1, (56, 56), 3),
        spec(8, 256, 256, 1, (14, 14), 3),
        spec(2, 3, 64, 1, (224, 224), 7, stride=2),
        spec(8, 128, 128, 1, (56, 56), 3, stride=2),
        spec(1, 1, 1, 1, (512, 512), 15),
        spec(1, 512, 512, 1, (7, 7), 3),
        # 4.2M F(2x2) weight-transform entries: past the caches, where the fit of smaller
        # weights predicted Winograd 2x too fast (512->512 @7 b8: 10.0 ms vs im2col 7.7)
        spec(4, 512, 512, 1, (7, 7), 3),
        spec(1, 128, 128, 1, (28, 28), 3),
        spec(4, 64, 64, 1, (4096,), 3),
        spec(4, 64, 64, 1, (56, 56), 3, dilation=2, pad=((2, 2), (2, 2))),
        spec(4, 256, 64, 1, (56, 56), 1),
        spec(4, 128, 128, 1, (28, 28), 3),
        spec(2, 16, 16, 1, (16, 32, 32), 3),
        spec(4, 64, 64, 1, (14, 14), 3, dilation=2, pad=((2, 2), (2, 2))),
        spec(1, 64, 64, 1, (2048,), 3),
    ]
    if precision == "int64":
        specs = specs[::3]  # integer matmul is slow and only ranks exact paths
    return specs


def _block_minima(runs: dict[str, Any], repeats: int = 7, cap: float = 1.0) -> dict[str, float]:
    """Minimum seconds of each callable, each timed in its own block of back-to-back runs.

    One algorithm at a time, as ``trueconv bench`` times libraries: OpenBLAS and
    the worker pool keep their threads spinning for a while after a call, so a
    candidate timed right after another one's call runs on stolen cores. A short
    idle before each block lets those threads sleep. The minimum, not the median:
    noise only adds; bursts of load are handled by taking the median over passes
    (:func:`measure_timings`).
    """
    best = {}
    for name, run in runs.items():
        time.sleep(0.05)
        run()  # warm-up (also compiles Numba loops)
        best[name] = float("inf")
        spent = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], elapsed)
            spent += elapsed
            if spent > cap / len(runs):
                break
    return best


def spec_key(spec: Any) -> str:
    """A stable text key of a training spec (timings files are JSON)."""
    return repr(spec)


def measure_timings(passes: int = 3, verbose: bool = True) -> dict[str, Any]:
    """Time every eligible algorithm on the training set, ``passes`` times over.

    Returns ``{"threads": n, "timings": {precision: {spec_key: {algorithm: seconds}}}}``
    with each entry the median over passes of the per-pass minimum: on a VM whose
    speed moves by 2x within minutes, one pass fits the noise (a re-fit 20 minutes
    later flipped layer choices); the median of three does not move that much.
    """
    import numpy as np

    from ._threads import get_num_threads
    from .algorithms import ALGORITHMS

    rng = np.random.default_rng(0)
    per_pass: dict[str, dict[str, dict[str, list[float]]]] = {}
    for index in range(passes):
        for precision in PRECISIONS:
            for spec in training_specs(precision):
                x_shape = (spec.batch, spec.in_channels, *spec.input_shape)
                w_shape = (spec.out_channels, spec.in_channels_per_group, *spec.kernel_shape)
                if precision == "int64":
                    x, w = rng.integers(-8, 8, x_shape), rng.integers(-8, 8, w_shape)
                else:
                    x = rng.standard_normal(x_shape).astype(spec.dtype)
                    w = rng.standard_normal(w_shape).astype(spec.dtype)
                runs = {name: (lambda a=algorithm, s=spec: a.run(x, w, s))
                        for name, algorithm in ALGORITHMS.items() if algorithm.supports(spec) is None}
                entry = per_pass.setdefault(precision, {}).setdefault(spec_key(spec), {})
                for name, seconds in _block_minima(runs).items():
                    entry.setdefault(name, []).append(seconds)
                    if verbose:
                        print(f"pass {index + 1}/{passes} {name:9s} {precision:8s} "
                              f"{seconds * 1e3:9.3f} ms  {spec}", file=sys.stderr)
    timings = {precision: {key: {name: float(np.median(values)) for name, values in entry.items()}
                           for key, entry in specs.items()}
               for precision, specs in per_pass.items()}
    return {"threads": get_num_threads(), "passes": passes, "timings": timings}


def fit(timings: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Non-negative least squares on relative error, per algorithm and precision."""
    import numpy as np
    from scipy.optimize import nnls

    from ._planner import cost_features

    specs = {spec_key(s): s for precision in PRECISIONS for s in training_specs(precision)}
    coefficients_: dict[str, dict[str, list[float]]] = {}
    for precision, entries in timings["timings"].items():
        samples: dict[str, list[tuple[list[float], float]]] = {}
        for key, by_name in entries.items():
            if key not in specs:
                continue  # a timings file from an older training set
            for name, seconds in by_name.items():
                samples.setdefault(name, []).append((cost_features(specs[key], name), seconds))
        for name, pairs in samples.items():
            if len(pairs) < 2:
                continue
            a = np.array([features for features, _ in pairs], dtype=float)
            t = np.array([seconds for _, seconds in pairs])
            # Relative error: scale each row by 1/t so small problems count as much as big ones.
            coef, _ = nnls(a / t[:, None], np.ones_like(t))
            coefficients_.setdefault(name, {})[precision] = [float(f"{c:.4g}") for c in coef]
    return coefficients_


def ranking_report(timings: dict[str, Any], coefficients_: dict[str, Any]) -> str:
    """How often the fitted model picks each training problem's measured winner.

    The planner needs only the ranking: the report gives the number of problems whose
    predicted winner is the measured one, and the worst and total time lost to the
    others (the predicted pick's time over the fastest measured).
    """
    import numpy as np

    from ._planner import cost_features

    specs = {spec_key(s): s for precision in PRECISIONS for s in training_specs(precision)}
    right = total = 0
    worst, worst_key, lost = 1.0, "", 0.0
    for precision, entries in timings["timings"].items():
        for key, by_name in entries.items():
            if key not in specs or not by_name:
                continue
            predicted = {name: float(np.dot(cost_features(specs[key], name),
                                            coefficients_.get(name, {}).get(precision, [0.0])))
                         for name in by_name if coefficients_.get(name, {}).get(precision)}
            if not predicted:
                continue
            pick = min(predicted, key=predicted.get)
            fastest = min(by_name.values())
            total += 1
            right += by_name[pick] == fastest
            lost += by_name[pick] - fastest
            if by_name[pick] / fastest > worst:
                worst, worst_key = by_name[pick] / fastest, f"{precision} {key}: {pick}"
    return (f"ranking: {right} of {total} training problems pick the measured winner; "
            f"{lost * 1e3:.1f} ms lost in all; worst {worst:.2f}x ({worst_key})")


def table_from(timings: dict[str, Any], verbose: bool = True) -> dict[str, Any]:
    """The calibration table (coefficients with provenance) fitted to ``timings``."""
    from ._threads import blas_info, get_num_threads

    coefficients_ = fit(timings)
    if verbose:
        print(ranking_report(timings, coefficients_), file=sys.stderr)
    threads = timings.get("threads", get_num_threads())
    for name, table in active_calibration(threads)["coefficients"].items():
        # keep the priors of algorithms (or precisions) this run could not measure
        for precision, coef in table.items():
            coefficients_.setdefault(name, {}).setdefault(precision, coef)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "threads": threads,
        "passes": timings.get("passes", 1),
        "blas": [f"{p['internal_api']} {p['version']} {p['architecture']} threads={p['num_threads']}"
                 for p in blas_info() if p["user_api"] == "blas"],
        "coefficients": coefficients_,
    }


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    import os

    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "platform": platform.platform()}


def versions() -> dict[str, str]:
    import numpy
    import scipy

    from . import __version__

    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "scipy": scipy.__version__, "trueconv": __version__}
    numba = sys.modules.get("numba")
    if numba is not None:
        out["numba"] = numba.__version__
    return out


def render(tables: list[dict[str, Any]]) -> str:
    """The generated block, as Python source."""
    body = json.dumps(tables, indent=4)
    return f"CALIBRATIONS: list[dict[str, Any]] = {body}\n"


def merged(table: dict[str, Any], tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tables`` with ``table`` replacing the one of its thread count, ordered by threads."""
    kept = [t for t in tables if t.get("threads", 1) != table.get("threads", 1)]
    return sorted([*kept, table], key=lambda t: t.get("threads", 1))


def write(table: dict[str, Any], path: Path | None = None) -> Path:
    """Put ``table`` into the generated block of this module's source (other thread counts kept)."""
    path = path or Path(__file__)
    source = path.read_text(encoding="utf-8")
    pattern = re.compile(r"(# --- BEGIN GENERATED TABLE[^\n]*\n)(.*?)(# --- END GENERATED TABLE ---)",
                         re.DOTALL)
    match = pattern.search(source)
    if match is None:
        raise ValueError(f"_calibration.write: no generated block found in {path}")
    namespace: dict[str, Any] = {"Any": Any}
    exec(match.group(2), namespace)  # the block is JSON text, valid Python
    tables = merged(table, namespace["CALIBRATIONS"])
    new = source[:match.start(2)] + render(tables) + source[match.end(2):]
    path.write_text(new, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trueconv._calibration",
                                     description="Re-measure the planner's cost model.")
    parser.add_argument("--write", action="store_true", help="rewrite trueconv/_calibration.py")
    parser.add_argument("--quiet", action="store_true", help="do not print each measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="thread count to calibrate with (default: trueconv.get_num_threads()); "
                             "1 is the robust choice on a shared, busy machine")
    parser.add_argument("--passes", type=int, default=3,
                        help="measure the training set this many times and fit the medians (default 3)")
    parser.add_argument("--save-timings", metavar="FILE", help="also write the measured times (JSON)")
    parser.add_argument("--timings", metavar="FILE",
                        help="fit times saved by --save-timings instead of measuring")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, got {args.passes}")
    timings = None
    if args.timings:
        timings = json.loads(Path(args.timings).read_text(encoding="utf-8"))
        args.threads = timings.get("threads", args.threads)
    if args.threads is not None:
        from ._threads import set_num_threads

        set_num_threads(args.threads)
    if timings is None:
        timings = measure_timings(args.passes, verbose=not args.quiet)
    if args.save_timings:
        Path(args.save_timings).write_text(json.dumps(timings, indent=1), encoding="utf-8")
    table = table_from(timings)
    # JSON true/false/null never occur in the table, so the JSON text is valid Python.
    assert all(v is not None for v in table.values())
    print(render([table]))
    if args.write:
        print(f"wrote {write(table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["CALIBRATIONS", "active_calibration", "coefficients", "precision_class", "cpu_model"]
