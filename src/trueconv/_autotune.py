"""The measured autotuner and its on-disk plan cache.

With ``trueconv.set_autotune(True)`` (or ``TRUECONV_AUTOTUNE=1``) the planner
asks :func:`tune` to time the eligible algorithms once per *key* and keeps the
winner. The key holds everything that can change the answer: the canonical
problem (shapes, dtype, stride, dilation, pads, groups), the candidate set (it
already reflects the data facts and the memory limit), the CPU model, the
thread count and the numpy/scipy/trueconv versions. Timing runs on synthetic
data of the problem's shape, never on the user's arrays (whose NaN/Inf or
huge values would distort the timings), as the median of a few repeats after
a warm-up, within a bounded budget per key.

Winners persist in ``autotune.json`` under the user cache directory
(``$TRUECONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/trueconv``, else
``~/.cache/trueconv``). The file is shared by processes, so (EDGE_CASES #79-#83):

* writes go to a unique temporary file in the same directory, are fsynced and
  then ``os.replace``\\ d over the cache, so a reader sees the old or the new
  file, never half of one;
* a writer takes an advisory lock (``fcntl.flock`` on ``autotune.json.lock``)
  and re-reads the file before writing, merging its entries with what other
  processes wrote meanwhile;
* a corrupt, truncated, non-UTF-8 or wrong-schema file is treated as empty
  with one :class:`TrueconvCacheWarning`, and is replaced on the next write;
* an unwritable directory means tuning runs uncached (in memory only), with
  one warning;
* an entry is used only if its winner is still among the eligible candidates
  (a cached Winograd never serves a stride-2 call).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._spec import ConvSpec
from ._threads import get_num_threads

__all__ = [
    "TrueconvCacheWarning",
    "set_autotune",
    "get_autotune",
    "autotune_enabled",
    "cache_path",
    "tune",
    "clear_memory_cache",
]

SCHEMA = 1
FILENAME = "autotune.json"
_ENV_ENABLE = "TRUECONV_AUTOTUNE"
_ENV_DIR = "TRUECONV_CACHE_DIR"
_ENV_BUDGET = "TRUECONV_AUTOTUNE_BUDGET"
#: Seconds of timing per key, all candidates together (after the first warm-up runs).
DEFAULT_BUDGET = 2.0
MAX_REPEATS = 5
#: Entries kept in the file; the oldest go first (stale versions accumulate otherwise).
MAX_ENTRIES = 5000


class TrueconvCacheWarning(UserWarning):
    """The autotune cache could not be read or written; trueconv carries on without it."""


_enabled: bool | None = None
_memory: dict[str, dict[str, Any]] = {}
_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def _reinit_after_fork() -> None:
    # A lock held by another thread at fork time would never be released in the child.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def set_autotune(enabled: bool) -> None:
    """Switch the measured autotuner on or off for ``algorithm="auto"``.

    When on, the first call with a new problem times the eligible algorithms
    on synthetic data of the same shape (a budget of two seconds per problem,
    ``TRUECONV_AUTOTUNE_BUDGET`` to change it, plus one full run of each
    candidate that looks competitive) and caches the fastest in the user cache
    directory; later calls, in this process or another, reuse it.
    :func:`trueconv.plan` reports ``measured=True`` for such choices. Choices
    change numerics only within the dtype's tolerance, and never the NaN/Inf
    behaviour: data with NaN/Inf is only ever given to exact algorithms.

    Parameters
    ----------
    enabled : bool
        True to measure, False for the cost-model heuristics (the default
        unless the environment variable ``TRUECONV_AUTOTUNE=1``).

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.

    See Also
    --------
    trueconv.plan

    Examples
    --------
    >>> import trueconv
    >>> trueconv.set_autotune(False)
    >>> trueconv.get_autotune()
    False
    """
    global _enabled
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_autotune: enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    _enabled = bool(enabled)


def get_autotune() -> bool:
    """Return whether ``auto`` measures candidates (see :func:`set_autotune`).

    Examples
    --------
    >>> import trueconv
    >>> isinstance(trueconv.get_autotune(), bool)
    True
    """
    return autotune_enabled()


def autotune_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(_ENV_ENABLE, "").strip().lower() in ("1", "true", "yes", "on")


def clear_memory_cache() -> None:
    """Forget the winners this process knows (the file stays); tests use it."""
    _memory.clear()
    _warned.clear()


def cache_dir() -> Path | None:
    """The cache directory, or None when no location can be determined."""
    explicit = os.environ.get(_ENV_DIR)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "trueconv"
    home = os.path.expanduser("~")
    if home == "~" or not home:
        return None
    return Path(home) / ".cache" / "trueconv"


def cache_path() -> Path | None:
    """The JSON file that holds tuned winners (None if there is no cache directory)."""
    directory = cache_dir()
    return None if directory is None else directory / FILENAME


def _warn_once(kind: str, path: object, message: str) -> None:
    # One warning per cache file and process, whatever goes wrong with it (EDGE_CASES #79):
    # a broken cache must not turn into a warning storm.
    token = ("cache", str(path))
    if token in _warned:
        return
    _warned.add(token)
    warnings.warn(message, TrueconvCacheWarning, stacklevel=4)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_static_key: dict[str, Any] = {}


def _environment() -> dict[str, Any]:
    if not _static_key:
        import scipy

        from . import __version__
        from ._calibration import cpu_model

        _static_key.update(cpu=cpu_model(), numpy=np.__version__, scipy=scipy.__version__,
                           trueconv=__version__)
    return {**_static_key, "threads": get_num_threads()}


def key_for(spec: ConvSpec, candidates: list[str] | tuple[str, ...]) -> str:
    """The JSON text that identifies one tuning question."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    body = {"spec": fields, "candidates": sorted(candidates), **_environment()}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=list)


# ---------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------

def _valid_entry(value: object) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("algorithm"), str):
        return False
    seconds = value.get("seconds")
    return isinstance(seconds, dict) and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) for t in seconds.values()
    ) and value["algorithm"] in seconds


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Return the entries of ``path``; any problem means an empty cache and one warning."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return {}  # a missing directory shows up (once) when writing
    except OSError as exc:
        _warn_once("read", path, f"trueconv: cannot read the autotune cache {path} ({exc}); "
                                 f"tuning without it")
        return {}
    problem = None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "it is not UTF-8 text"
    except json.JSONDecodeError as exc:
        problem = f"it is not valid JSON ({exc.msg} at byte {exc.pos}; truncated?)"
    else:
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            problem = "it does not have the autotune cache layout"
        elif data.get("schema") != SCHEMA:
            problem = f"it has schema {data.get('schema')!r}, this trueconv reads schema {SCHEMA}"
    if problem is not None:
        _warn_once("corrupt", path, f"trueconv: ignoring the autotune cache {path}: {problem}; "
                                    f"it will be rewritten")
        return {}
    entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
    if len(entries) != len(data["entries"]):
        _warn_once("entries", path, f"trueconv: ignoring {len(data['entries']) - len(entries)} "
                                    f"malformed entries of the autotune cache {path}")
    return entries


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 10.0) -> Iterator[None]:
    """Advisory inter-process lock next to ``path`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: os.replace still keeps the file whole
        yield
        return
    with open(f"{path}.lock", "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break  # a stuck holder: carry on; the atomic replace keeps the file valid
                time.sleep(0.01)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_entries(path: Path, new: dict[str, dict[str, Any]]) -> bool:
    """Merge ``new`` into the file at ``path`` atomically; False (and one warning) on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            entries = read_cache(path)  # re-read: another process may have written meanwhile
            entries.update(new)
            if len(entries) > MAX_ENTRIES:
                newest = sorted(entries.items(), key=lambda kv: kv[1].get("created", 0))
                entries = dict(newest[-MAX_ENTRIES:])
            text = json.dumps({"schema": SCHEMA, "entries": entries}, indent=1, sort_keys=True)
            fd, tmp = tempfile.mkstemp(prefix=".autotune-", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return True
    except OSError as exc:
        _warn_once("write", path, f"trueconv: cannot write the autotune cache {path} ({exc}); "
                                  f"tuned choices are kept in memory only")
        return False


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tuned:
    """The outcome of one tuning question."""

    algorithm: str
    seconds: dict[str, float]
    source: str


def synthetic_inputs(spec: ConvSpec, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random finite data of the problem's shape and compute dtype (never the user's arrays)."""
    rng = np.random.default_rng(seed)
    x_shape = (batch, spec.in_channels, *spec.input_shape)
    w_shape = (spec.out_channels, spec.in_channels_per_group, *spec.kernel_shape)
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        return (rng.integers(0 if dtype.kind == "u" else -8, 8, x_shape).astype(dtype),
                rng.integers(0 if dtype.kind == "u" else -8, 8, w_shape).astype(dtype))

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        if dtype.kind == "c":
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    return draw(x_shape), draw(w_shape)


def _budget() -> float:
    raw = os.environ.get(_ENV_BUDGET, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_BUDGET
    except ValueError:
        return DEFAULT_BUDGET


#: Untimed idle seconds before each candidate's timed runs.
SETTLE = 0.05


#: The two fastest candidates are timed again when they are this close: on a shared
#: machine a burst of load during one candidate's block decides a near tie.
RUNOFF_MARGIN = 1.3


def _median_block(run: Any, x: np.ndarray, w: np.ndarray, sub: ConvSpec, scale: int,
                  give_up: float, until: float) -> float:
    """Median seconds of back-to-back runs (scaled to the whole batch), at least one run."""
    times: list[float] = []
    while len(times) < MAX_REPEATS:
        start = time.perf_counter()
        run(x, w, sub)
        times.append(time.perf_counter() - start)
        if times[0] * scale > give_up or time.perf_counter() > until:
            break
    times.sort()
    return times[len(times) // 2] * scale


def measure(spec: ConvSpec, chunks: dict[str, int], budget: float | None = None) -> dict[str, float]:
    """Median seconds of each candidate on the whole batch (timed per chunk, then scaled).

    ``chunks`` maps candidates, most promising first, to their batch chunk.
    Each candidate runs twice on a single batch item: a warm-up (it also
    compiles Numba loops, so compile time never counts) and a probe. A
    candidate whose probe, scaled to the batch, is already 4x slower than the
    best so far is recorded from the probe and not run in full; the others
    run on full chunks, repeated up to :data:`MAX_REPEATS` times within their
    share of the budget (at least once). When the two fastest are within
    :data:`RUNOFF_MARGIN` of each other, both are timed once more, in reverse
    order, and keep the better of their two medians. So the total time is
    bounded by the budget plus one full run of each candidate that looked
    competitive and two of the runoff's.
    """
    from .algorithms import ALGORITHMS

    budget = _budget() if budget is None else budget
    deadline = time.perf_counter() + budget
    seconds: dict[str, float] = {}
    inputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    names = list(chunks)
    plans: dict[str, tuple[Any, np.ndarray, np.ndarray, ConvSpec, int]] = {}
    for index, name in enumerate(names):
        chunk = max(1, min(chunks[name], spec.batch))
        if chunk not in inputs:
            inputs[chunk] = synthetic_inputs(spec, chunk)
        x, w = inputs[chunk]
        run = ALGORITHMS[name].run
        scale = -(-spec.batch // chunk)  # chunks per call
        one = spec.with_batch(1)
        run(x[:1], w, one)  # warm-up
        if len(names) > 1:
            # Let the previous candidate's spinning BLAS/worker threads park: on 2 cores they
            # would otherwise slow this candidate down (see trueconv.cli.bench.time_calls).
            time.sleep(SETTLE)
        start = time.perf_counter()
        run(x[:1], w, one)
        probe = (time.perf_counter() - start) * spec.batch
        best = min(seconds.values(), default=float("inf"))
        if probe > 4 * best:
            seconds[name] = probe
            continue
        share = time.perf_counter() + max(0.0, deadline - time.perf_counter()) / (len(names) - index)
        plans[name] = (run, x, w, spec.with_batch(chunk), scale)
        seconds[name] = _median_block(*plans[name], 4 * best, share)
    ranked = sorted(plans, key=seconds.__getitem__)[:2]
    if len(ranked) == 2 and seconds[ranked[1]] < RUNOFF_MARGIN * seconds[ranked[0]]:
        for name in reversed(ranked):
            time.sleep(SETTLE)
            until = time.perf_counter() + max(0.0, budget / 4)
            seconds[name] = min(seconds[name], _median_block(*plans[name], float("inf"), until))
    return seconds


def tune(spec: ConvSpec, chunks: dict[str, int]) -> Tuned | None:
    """Return the fastest of ``chunks`` (candidates -> batch chunk), cached per key."""
    key = key_for(spec, list(chunks))
    path = cache_path()
    with _lock:
        entry = _memory.get(key)
        source = "from this process's autotune memory"
        if entry is None and path is not None:
            entry = read_cache(path).get(key)
            source = f"from the autotune cache {path}"
        if entry is not None and entry["algorithm"] in chunks:
            _memory[key] = entry
            seconds = {k: float(v) for k, v in entry["seconds"].items() if k in chunks}
            return Tuned(entry["algorithm"], seconds, source)
        # a missing or invalid entry (winner no longer eligible) is a miss: measure afresh
        seconds = measure(spec, chunks)
        if not seconds:
            return None
        winner = min(seconds, key=seconds.__getitem__)
        entry = {"algorithm": winner, "seconds": seconds, "created": time.time()}
        _memory[key] = entry
        if path is None:
            _warn_once("nodir", None, "trueconv: no user cache directory (HOME unset?); set "
                                      "TRUECONV_CACHE_DIR to keep autotune results")
            source = "kept in memory only"
        elif write_entries(path, {key: entry}):
            source = f"now cached in {path}"
        else:
            source = "kept in memory only (cache not writable)"
        return Tuned(winner, seconds, source)
