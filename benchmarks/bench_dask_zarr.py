"""Filter a zarr array several times larger than the memory the run may use (not a test).

The array goes through ``trueconv.dask.filter_zarr`` (the engine of
``trueconv filter in.zarr out.zarr``) on a ``dask.distributed.LocalCluster`` whose
worker processes have a hard memory limit, once per worker count. A thread
samples the resident memory (RSS) of the client process and of every process it
started (scheduler and nannies run in the client; each worker is a child
process) every 50 ms; the peak of the sum is what the run really held.
Throughput is input bytes / wall time of the filter call (read, halo exchange,
FFT convolution, compressed write).

Run it as a script (asv discovery ignores this module: no ``time_*`` names)::

    python benchmarks/bench_dask_zarr.py                       # 16384 x 16384 float32 = 1 GiB
    python benchmarks/bench_dask_zarr.py --size 4096 --workers 1  # quick (64 MiB, ~10 s)

Needs about twice the array's size free on disk (input + output); everything
it writes is deleted at the end (``--keep`` keeps the input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np


class RSSSampler:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._root = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_total = 0
        self.peak_client = 0
        self.peak_children: dict[int, int] = {}

    def sample(self) -> tuple[int, int, dict[int, int]]:
        import psutil

        client = self._root.memory_info().rss
        children = {}
        for child in self._root.children(recursive=True):
            try:
                children[child.pid] = child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a worker restarting
                pass
        return client, client + sum(children.values()), children

    def _run(self) -> None:
        while not self._stop.is_set():
            client, total, children = self.sample()
            self.peak_total = max(self.peak_total, total)
            self.peak_client = max(self.peak_client, client)
            for pid, rss in children.items():
                self.peak_children[pid] = max(self.peak_children.get(pid, 0), rss)
            self._stop.wait(self._interval)

    def cpu_seconds(self) -> float:
        """User + system CPU time of this process and its living descendants so far."""
        import psutil

        total = 0.0
        for process in [self._root, *self._root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_input(path: str, shape: tuple[int, int], chunk: int) -> None:
    """Write a float32 array of uniform noise, chunk by chunk (never whole in memory)."""
    import dask
    import dask.array as da
    import zarr

    # Uncompressed: reading costs I/O, not a codec (random data would not compress anyway).
    store = zarr.create_array(path, shape=shape, chunks=(chunk, chunk), dtype="float32",
                              compressors=None)
    noise = da.random.default_rng(20261122).random(shape, chunks=chunk, dtype=np.float32)
    with dask.config.set(scheduler="threads", num_workers=2):
        da.store(noise, store, lock=False)


def gaussian_kernel(size: int) -> np.ndarray:
    sigma = size / 6
    axis = np.arange(size) - (size - 1) / 2
    one = np.exp(-0.5 * (axis / sigma) ** 2)
    kernel = np.outer(one, one)
    return (kernel / kernel.sum()).astype(np.float32)


def spot_check(source: str, target: str, kernel: np.ndarray, rng: np.random.Generator) -> float:
    """Max relative error of a few output tiles (corners included) against scipy.signal."""
    import scipy.signal as ss
    import zarr

    src = zarr.open_array(source, mode="r")
    dst = zarr.open_array(target, mode="r")
    rows, cols = src.shape
    half = kernel.shape[0] // 2
    worst = 0.0
    tiles = [(0, 0), (rows - 64, cols - 64)] + [
        (int(rng.integers(0, rows - 64)), int(rng.integers(0, cols - 64))) for _ in range(3)]
    for r, c in tiles:
        r0, c0 = max(r - half, 0), max(c - half, 0)
        r1, c1 = min(r + 64 + half, rows), min(c + 64 + half, cols)
        region = src[r0:r1, c0:c1].astype(np.float64)
        # 'symm' boundary: mirror the region where it touches the array's edge
        padded = np.pad(region, ((half - (r - r0), half - (r1 - r - 64)),
                                 (half - (c - c0), half - (c1 - c - 64))), mode="symmetric")
        expected = ss.convolve(padded, kernel.astype(np.float64), "valid", method="fft")
        got = dst[r:r + 64, c:c + 64].astype(np.float64)
        worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
    return worst


def run_once(source: str, target: str, kernel: np.ndarray, workers: int, memory_limit: str,
             chunk: int, nbytes: int) -> dict:
    import distributed
    from dask.utils import parse_bytes

    import trueconv.dask

    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
        dashboard_address=":0",  # any free port (None still binds 8787)
    )
    client = distributed.Client(cluster)
    try:
        client.run(lambda: __import__("trueconv.dask"))  # imports belong to the baseline
        sampler = RSSSampler()
        _, baseline, _ = sampler.sample()
        cpu_before = sampler.cpu_seconds()
        with sampler:
            start = time.perf_counter()
            trueconv.dask.filter_zarr(source, target, kernel, chunks=chunk, boundary="symm",
                                      progress=False, overwrite=True)
            elapsed = time.perf_counter() - start
        # CPU seconds say more than wall time on a shared machine (minus the sampler's own)
        cpu = sampler.cpu_seconds() - cpu_before
        spilled = sum(client.run(_spilled_bytes).values())
        restarted = len(client.scheduler_info()["workers"]) != workers
    finally:
        client.close()
        cluster.close()
    worker_peaks = sorted(sampler.peak_children.values(), reverse=True)[:workers]
    return {
        "workers": workers,
        "memory_limit_per_worker": parse_bytes(memory_limit),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "mb_per_s": nbytes / 1e6 / elapsed,
        "peak_rss_total": sampler.peak_total,
        "baseline_rss_total": baseline,
        "peak_rss_client": sampler.peak_client,
        "peak_rss_workers": worker_peaks,
        "spilled_bytes": spilled,
        "worker_lost": restarted,
    }


def _spilled_bytes(dask_worker) -> int:  # noqa: ANN001 - client.run passes the worker
    total = getattr(dask_worker.data, "spilled_total", None)
    return int(getattr(total, "disk", 0) or 0) if total is not None else 0


def mib(count: float) -> str:
    return f"{count / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="square array side (float32)")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows, if not --size (e.g. twice as many)")
    parser.add_argument("--chunk", type=int, default=1024, help="chunk side")
    parser.add_argument("--kernel", type=int, default=31, help="square kernel side")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to run")
    parser.add_argument("--memory-limit", default="256MiB", help="per worker process")
    parser.add_argument("--dir", default=None,
                        help="where the zarr stores go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the input store")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    shape = (args.rows or args.size, args.size)
    nbytes = shape[0] * shape[1] * 4
    workdir = tempfile.mkdtemp(prefix="trueconv-bench-dask-", dir=args.dir)
    free = shutil.disk_usage(workdir).free
    if free < 2.2 * nbytes:
        shutil.rmtree(workdir)
        print(f"need about {mib(2.2 * nbytes)} free in {workdir}, have {mib(free)}",
              file=sys.stderr)
        return 1
    source = os.path.join(workdir, "in.zarr")
    target = os.path.join(workdir, "out.zarr")
    kernel = gaussian_kernel(args.kernel)
    print(f"# {shape[0]} x {shape[1]} float32 ({mib(nbytes)}), chunks {args.chunk}, "
          f"{args.kernel} x {args.kernel} kernel, workers limited to {args.memory_limit} each; "
          f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results = []
    try:
        start = time.perf_counter()
        make_input(source, shape, args.chunk)
        print(f"# input written in {time.perf_counter() - start:.1f} s")
        rng = np.random.default_rng(0)
        for workers in args.workers:
            result = run_once(source, target, kernel, workers, args.memory_limit, args.chunk,
                              nbytes)
            result["max_rel_error_spot_check"] = spot_check(source, target, kernel, rng)
            result["array_bytes"] = nbytes
            result["load_average"] = os.getloadavg()[0]
            results.append(result)
            shutil.rmtree(target, ignore_errors=True)
            print(
                f"workers={workers}: {result['seconds']:.1f} s "
                f"({result['cpu_seconds']:.0f} CPU s), "
                f"{result['mb_per_s']:.1f} MB/s, "
                f"peak RSS {mib(result['peak_rss_total'])} total (baseline "
                f"{mib(result['baseline_rss_total'])}; client {mib(result['peak_rss_client'])}, "
                f"workers {', '.join(mib(w) for w in result['peak_rss_workers'])}) = "
                f"{result['peak_rss_total'] / nbytes:.0%} of the array; spilled "
                f"{mib(result['spilled_bytes'])}; worker lost: {result['worker_lost']}; "
                f"spot check max rel err {result['max_rel_error_spot_check']:.1e}",
                flush=True,
            )
    finally:
        if args.keep:
            shutil.rmtree(target, ignore_errors=True)
            print(f"# input kept at {source}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
