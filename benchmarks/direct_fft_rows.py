"""Issue 3 rows for the compiled direct and the tiled FFT algorithms, against their peers.

Plain script (no asv needed)::

    python benchmarks/direct_fft_rows.py [--threads 2] [--repeat 15] [--only depthwise,img]

Each row runs in one process with one thread count for every library and
reports the best and the median of ``--repeat`` timed runs after a warm-up
(the best is the robust statistic on a shared, busy machine; the median is
what a user sees there), the ratio to the fastest peer (> 1 means trueconv is
faster), and the max error relative to the output's scale against a float64
reference. trueconv runs through the public ``trueconv.conv`` /
``trueconv.correlate`` with ``algorithm=`` / ``method=`` forced, so planner
and dtype overheads are included.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np


def timings(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm-up: compilation, FFT plans, thread pools
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def rows(rng: np.random.Generator, threads: int):
    """Yield ``(name, ours: dict[label, fn], peers: dict[label, fn], reference_fn)``."""
    import cv2
    import scipy.signal
    import torch
    import torch.nn.functional as F

    import trueconv

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    f32 = np.float32

    x = rng.standard_normal((8, 32, 112, 112)).astype(f32)
    w = rng.standard_normal((32, 1, 3, 3)).astype(f32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    yield ("depthwise 3x3 C=32 @112 b8",
           {"direct": lambda: trueconv.conv(x, w, padding=1, groups=32, algorithm="direct")},
           {"torch": lambda: F.conv2d(xt, wt, padding=1, groups=32)},
           lambda: F.conv2d(xt.double(), wt.double(), padding=1, groups=32).numpy())

    image = rng.standard_normal((1024, 1024)).astype(f32)
    for k in (3, 15, 63):
        kernel = rng.standard_normal((k, k)).astype(f32)
        ours = {
            name: (lambda a=name: trueconv.conv(image[None], kernel[None, None],
                                                padding=k // 2, algorithm=a)[0])
            for name in (("direct", "fft") if k > 3 else ("direct",))
        }
        flipped = kernel[::-1, ::-1]
        yield (f"image 1024^2 {k}x{k}", ours,
               {"cv2.filter2D": lambda: cv2.filter2D(image, -1, kernel,
                                                     borderType=cv2.BORDER_CONSTANT),
                "scipy.oaconvolve": lambda: scipy.signal.oaconvolve(image, flipped, "same")},
               lambda: scipy.signal.fftconvolve(image.astype(np.float64),
                                                kernel[::-1, ::-1].astype(np.float64), "same"))

    signal = rng.standard_normal(10**6).astype(f32)
    for taps in (16, 256, 4096):
        kernel = rng.standard_normal(taps).astype(f32)
        ours = {name: (lambda a=name: trueconv.correlate(signal, kernel, "full", method=a))
                for name in ("direct", "fft")}
        peers = {"scipy.oaconvolve": lambda: scipy.signal.oaconvolve(signal, kernel[::-1])}
        if taps <= 256:
            peers["np.convolve"] = lambda: np.convolve(signal, kernel[::-1])
        yield (f"1-D 1e6 x {taps} taps", ours, peers,
               lambda: scipy.signal.fftconvolve(signal.astype(np.float64),
                                                kernel[::-1].astype(np.float64)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated substrings of row names")
    args = parser.parse_args(argv)

    import os

    import trueconv._threads as threads_module

    threads_module.set_num_threads(args.threads)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    print(f"threads={args.threads} repeat={args.repeat} loadavg={os.getloadavg()[0]:.1f}")
    print("| row | algorithm | best ms | median ms | fastest peer (best ms) | ratio "
          "| max err / scale |")
    print("|---|---|---|---|---|---|---|")
    for name, ours, peers, reference in rows(np.random.default_rng(0), args.threads):
        if wanted and not any(s in name for s in wanted):
            continue
        expected = reference()
        scale = float(np.abs(expected).max())
        peer_times = {label: timings(fn, args.repeat)[0] for label, fn in peers.items()}
        peer, peer_best = min(peer_times.items(), key=lambda item: item[1])
        for label, fn in ours.items():
            best, median = timings(fn, args.repeat)
            error = float(np.abs(np.asarray(fn(), np.float64) - expected).max()) / scale
            print(f"| {name} | {label} | {best * 1e3:.2f} | {median * 1e3:.2f} | {peer} "
                  f"({peer_best * 1e3:.2f}) | {peer_best / best:.2f}x | {error:.1e} |")


if __name__ == "__main__":
    main()
