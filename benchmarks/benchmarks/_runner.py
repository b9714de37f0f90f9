"""Run asv-style benchmark classes without asv: median of repeats after a warm-up."""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from typing import Any


def run_class(cls: type, repeats: int = 5, match: str = "") -> None:
    """Time every ``time_*`` method of ``cls`` over its parameter grid and print one line each."""
    params = getattr(cls, "params", [])
    if params and not isinstance(params[0], (list, tuple)):
        params = [params]
    names = getattr(cls, "param_names", [f"p{i}" for i in range(len(params))])
    methods = [m for m in dir(cls) if m.startswith("time_")]
    for values in itertools.product(*params) if params else [()]:
        label = ", ".join(f"{n}={v}" for n, v in zip(names, values))
        if match and match not in f"{cls.__name__} {label}":
            continue
        bench = cls()
        try:
            bench.setup(*values)
        except NotImplementedError as exc:  # asv's way of skipping a combination
            print(f"{cls.__name__}({label}): skipped ({exc})")
            continue
        for method in methods:
            call = getattr(bench, method)
            try:
                call(*values)
            except NotImplementedError as exc:
                print(f"{cls.__name__}.{method}({label}): skipped ({exc})")
                continue
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call(*values)
                times.append(time.perf_counter() - start)
            print(f"{cls.__name__}.{method}({label}): {statistics.median(times) * 1e3:.3f} ms",
                  flush=True)


def main(classes: list[type]) -> None:
    match = sys.argv[1] if len(sys.argv) > 1 else ""
    for cls in classes:
        run_class(cls, match=match)


def skip_unless(condition: Any, why: str) -> None:
    if not condition:
        raise NotImplementedError(why)
