"""The measured autotuner and its JSON cache (EDGE_CASES.md #79-#83)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import trueconv
from references import assert_close_scaled, conv_reference
from trueconv import _autotune, _planner
from trueconv._api import conv_with_plan
from trueconv._spec import ConvSpec
from trueconv.algorithms import ALGORITHMS

# 8 channels and a 2x2 kernel: no candidate needs a Numba compile (direct's compiled loop
# serves <= 4 channels, Winograd 3-tap kernels), so tuning takes milliseconds.
X_SHAPE, W_SHAPE = (2, 8, 12, 12), (8, 8, 2, 2)


@pytest.fixture(autouse=True)
def tuner(tmp_path, monkeypatch):
    """Autotune on, a private cache directory, a small budget, no state from other tests."""
    monkeypatch.setenv("TRUECONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRUECONV_AUTOTUNE_BUDGET", "0.05")
    _autotune.clear_memory_cache()
    _planner.plan_cache.cache_clear()
    _planner.candidates.cache_clear()
    trueconv.set_autotune(True)
    yield tmp_path / "cache"
    trueconv.set_autotune(False)
    _autotune.clear_memory_cache()
    _planner.candidates.cache_clear()


def cache_file(directory) -> str:
    return str(directory / _autotune.FILENAME)


def read_json(directory) -> dict:
    with open(cache_file(directory), encoding="utf-8") as handle:
        return json.load(handle)


def plan(**params):
    return trueconv.plan(X_SHAPE, W_SHAPE, "float32", padding=params.pop("padding", 1), **params)


def test_measured_plan_is_cached_on_disk_and_reused(tuner, monkeypatch):
    first = plan()
    assert first.measured is True and first.algorithm in ALGORITHMS
    assert "measured fastest" in first.reason and "now cached in" in first.reason
    data = read_json(tuner)
    assert data["schema"] == _autotune.SCHEMA and len(data["entries"]) == 1
    (entry,) = data["entries"].values()
    assert entry["algorithm"] == first.algorithm
    assert set(entry["seconds"]) <= set(ALGORITHMS) and len(entry["seconds"]) >= 1

    # a new process (here: a cleared memory) reads the winner instead of measuring again
    _autotune.clear_memory_cache()
    monkeypatch.setattr(_autotune, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = plan()
    assert again.algorithm == first.algorithm and again.measured
    assert "from the autotune cache" in again.reason


def test_key_holds_spec_environment_and_candidates():
    spec = ConvSpec(1, 2, 2, 1, (8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), "float32")
    key = json.loads(_autotune.key_for(spec, ["im2col", "direct"]))
    assert key["candidates"] == ["direct", "im2col"]
    assert key["spec"]["dtype"] == "float32" and key["spec"]["stride"] == [1, 1]
    assert {"cpu", "threads", "numpy", "scipy", "trueconv"} <= set(key)
    assert _autotune.key_for(spec, ["direct"]) != _autotune.key_for(spec.with_batch(2), ["direct"])


def test_tuned_conv_is_correct_and_nan_data_stays_exact(rng, monkeypatch):
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    w = rng.standard_normal(W_SHAPE).astype(np.float32)
    out, used = conv_with_plan(x, w, padding=1)
    assert used.measured
    assert_close_scaled(out, conv_reference(x, w, pad_widths=((1, 1), (1, 1))), np.float32)
    # a transform winner must not serve NaN data: the candidate set (and key) differ. The
    # spy makes the transform (fft) win wherever it is a candidate, so the engine's first,
    # data-blind choice is a transform and the values must be checked and the call re-tuned.
    x = rng.standard_normal((1, 8, 13, 11)).astype(np.float32)  # a shape not tuned yet
    x[0, 1, 3, 3] = np.nan
    seen = []

    def spy(spec, chunks, budget=None):
        seen.append(set(chunks))
        return {name: (1e-6 if not ALGORITHMS[name].exact else 1.0) for name in chunks}

    monkeypatch.setattr(_autotune, "measure", spy)
    out, used = conv_with_plan(x, w, padding=1)
    assert ALGORITHMS[used.algorithm].exact
    assert len(seen) == 2 and any(not ALGORITHMS[name].exact for name in seen[0])
    assert all(ALGORITHMS[name].exact for name in seen[-1])
    with np.errstate(invalid="ignore"):
        assert_close_scaled(out, conv_reference(x, w, pad_widths=((1, 1), (1, 1))), np.float32)


def test_synthetic_data_has_the_shape_never_the_values(rng):
    spec = ConvSpec(3, 4, 2, 2, (5, 6), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0)), "complex64")
    x, w = _autotune.synthetic_inputs(spec, 2)
    assert x.shape == (2, 4, 5, 6) and w.shape == (2, 2, 3, 3)
    assert x.dtype == w.dtype == np.complex64 and np.isfinite(x).all()


@pytest.mark.parametrize("content", [
    b"",                                                      # empty
    b'{"schema": 1, "entries": {"a": {"algori',               # truncated
    b"\xff\xfe\x00garbage",                                   # not UTF-8
    b"[1, 2, 3]",                                             # wrong layout
    b'{"schema": 999, "entries": {}}',                        # other schema version
    b'{"schema": 1, "entries": []}',                          # wrong layout inside
])
def test_bad_cache_file_is_a_miss_with_one_warning(tuner, content):
    os.makedirs(tuner)
    with open(cache_file(tuner), "wb") as handle:
        handle.write(content)
    with pytest.warns(trueconv.TrueconvCacheWarning, match="ignoring the autotune cache"):
        first = plan()
    assert first.measured
    # rebuilt: valid JSON with our entry; and no second warning for the next problem
    assert len(read_json(tuner)["entries"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan(padding=0)
    assert len(read_json(tuner)["entries"]) == 2


def test_malformed_entries_are_dropped_the_rest_kept(tuner):
    plan()
    data = read_json(tuner)
    data["entries"]["junk"] = {"algorithm": 3}
    data["entries"]["junk2"] = {"algorithm": "direct", "seconds": {"direct": "fast"}}
    with open(cache_file(tuner), "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    _autotune.clear_memory_cache()
    with pytest.warns(trueconv.TrueconvCacheWarning, match="ignoring 2 malformed entries"):
        again = plan()
    assert "from the autotune cache" in again.reason


def test_other_version_entries_are_misses_and_kept(tuner, monkeypatch):
    _autotune._environment()  # fill the static part of the key
    monkeypatch.setitem(_autotune._static_key, "trueconv", "0.0.1-old")
    old = plan()
    monkeypatch.setitem(_autotune._static_key, "trueconv", trueconv.__version__)
    _autotune.clear_memory_cache()
    measured = []
    real_measure = _autotune.measure
    monkeypatch.setattr(_autotune, "measure",
                        lambda *a, **k: measured.append(1) or real_measure(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another version's entries are not an error
        new = plan()
    assert measured, "an entry of another trueconv version was used"
    assert old.measured and new.measured
    versions = {json.loads(key)["trueconv"] for key in read_json(tuner)["entries"]}
    assert versions == {"0.0.1-old", trueconv.__version__}


@pytest.mark.parametrize("stride", [1, 2])
def test_cached_winner_that_is_not_eligible_is_ignored(tuner, monkeypatch, stride):
    """A cached winner the call cannot use (e.g. Winograd for stride 2) is a miss."""
    spec_plan = plan(stride=stride)  # writes the real entry
    data = read_json(tuner)
    (key,) = data["entries"]
    intruder = "winograd" if "winograd" not in json.loads(key)["candidates"] else "not-an-algorithm"
    data["entries"][key] = {"algorithm": intruder, "seconds": {intruder: 1e-9}, "created": 0}
    with open(cache_file(tuner), "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    _autotune.clear_memory_cache()
    again = plan(stride=stride)
    assert again.algorithm != intruder and again.algorithm in json.loads(key)["candidates"]
    assert "now cached in" in again.reason
    assert read_json(tuner)["entries"][key]["algorithm"] == again.algorithm
    assert spec_plan.measured


def test_unwritable_directory_runs_uncached_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TRUECONV_CACHE_DIR", str(blocker / "cache"))  # mkdir fails, even as root
    with pytest.warns(trueconv.TrueconvCacheWarning, match="cannot write the autotune cache"):
        first = plan()
    assert first.measured and "in memory only" in first.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan().algorithm == first.algorithm  # from memory, no second warning
        plan(padding=0)  # a new problem: measured, write fails again, still no warning


def test_no_cache_directory_at_all(monkeypatch):
    monkeypatch.delenv("TRUECONV_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    assert _autotune.cache_path() is None
    with pytest.warns(trueconv.TrueconvCacheWarning, match="no user cache directory"):
        assert plan().measured


def test_cache_location_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("TRUECONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _autotune.cache_path() == tmp_path / "trueconv" / "autotune.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _autotune.cache_path() == tmp_path / "home" / ".cache" / "trueconv" / "autotune.json"


def test_set_autotune_and_environment(monkeypatch):
    with pytest.raises(TypeError, match="set_autotune: enabled must be a bool"):
        trueconv.set_autotune("yes")
    monkeypatch.setattr(_autotune, "_enabled", None)
    monkeypatch.setenv("TRUECONV_AUTOTUNE", "1")
    assert trueconv.get_autotune() is True
    monkeypatch.setenv("TRUECONV_AUTOTUNE", "0")
    assert trueconv.get_autotune() is False
    trueconv.set_autotune(False)
    assert plan().measured is False


def test_threads_tuning_at_once_agree(tuner):
    results, errors = [], []

    def work():
        try:
            results.append(plan())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({p.algorithm for p in results}) == 1
    assert len(read_json(tuner)["entries"]) == 1


WRITER = textwrap.dedent("""
    import os, sys, time, trueconv
    from trueconv import _autotune
    tag, gate = sys.argv[1], sys.argv[2]
    trueconv.set_autotune(True)
    open(os.path.join(gate, "ready-" + tag), "w").close()
    while not os.path.exists(os.path.join(gate, "go")):
        time.sleep(0.001)
    # a real tuning, then many small merges racing with the other process
    trueconv.plan((1, 8, 10 + int(tag == "b"), 10), (8, 8, 2, 2), "float64", padding=1)
    path = _autotune.cache_path()
    for i in range(25):
        entry = {"algorithm": "direct", "seconds": {"direct": 1.0}, "created": time.time()}
        _autotune.write_entries(path, {f"{tag}-{i}": entry})
""")


def test_two_processes_tuning_at_once_keep_every_entry(tuner, tmp_path):
    import time

    gate = tmp_path / "gate"
    gate.mkdir()
    env = dict(os.environ, TRUECONV_CACHE_DIR=str(tuner), TRUECONV_AUTOTUNE_BUDGET="0.05")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, tag, str(gate)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((gate / f"ready-{tag}").exists() for tag in "ab") and time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            break
        time.sleep(0.005)
    (gate / "go").touch()  # both interpreters are up: they tune and write at the same moment
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    entries = read_json(tuner)["entries"]  # valid JSON
    assert {f"{tag}-{i}" for tag in "ab" for i in range(25)} <= set(entries)
    tuned = [json.loads(k) for k in entries if k.startswith("{")]
    assert len(tuned) == 2  # both processes' measured winners survived
    assert not [name for name in os.listdir(tuner) if name.endswith(".tmp")]  # no temp litter


class Sleeper:
    """A fake algorithm that takes ``per_item`` seconds per batch item and counts its runs."""

    exact = True

    def __init__(self, name, per_item):
        self.name, self.per_item, self.runs = name, per_item, []

    def supports(self, spec):
        return None

    def workspace_bytes(self, spec):
        return 0

    def run(self, x, weight, spec):
        import time

        self.runs.append(spec.batch)
        time.sleep(self.per_item * spec.batch)
        return np.zeros(spec.full_output_shape, dtype=x.dtype)


def test_measure_times_full_chunks_and_stops_hopeless_candidates(monkeypatch):
    fast, slow = Sleeper("fast", 0.001), Sleeper("slow", 0.02)
    monkeypatch.setitem(ALGORITHMS, "fast", fast)
    monkeypatch.setitem(ALGORITHMS, "slow", slow)
    spec = ConvSpec(4, 1, 1, 1, (4,), (1,), (1,), (1,), ((0, 0),), "float64")
    seconds = _autotune.measure(spec, {"fast": 2, "slow": 4}, budget=0.05)
    assert min(seconds, key=seconds.get) == "fast"
    # fast: warm-up and probe on one item, then timed runs on chunks of 2, scaled to the batch
    assert fast.runs[:2] == [1, 1] and set(fast.runs[2:]) == {2} and len(fast.runs) >= 3
    assert seconds["fast"] >= 2 * 2 * 0.001
    # slow: its probe already shows it is over 4x slower, so it never runs in full
    assert slow.runs == [1, 1] and seconds["slow"] >= 4 * 0.02


def test_a_near_tie_is_timed_again_in_reverse_order(monkeypatch):
    # A burst of load during the true winner's first block must not decide a near tie: the
    # two fastest are timed once more, the runner-up first, and keep their better median.
    scripted = {"im2col": [1.2, 0.8], "direct": [1.0, 1.0], "fft": [2.0]}  # seconds per block
    order = []

    def fake_block(run, x, w, sub, scale, give_up, until):
        name = run.__self__.name
        order.append(name)
        return scripted[name].pop(0)

    monkeypatch.setattr(_autotune, "_median_block", fake_block)
    spec = ConvSpec(1, 4, 4, 1, (12, 12), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), "float64")
    seconds = _autotune.measure(spec, {"im2col": 1, "direct": 1, "fft": 1}, budget=0.01)
    assert order == ["im2col", "direct", "fft", "im2col", "direct"]
    assert seconds == {"im2col": 0.8, "direct": 1.0, "fft": 2.0}
    # no runoff when the winner is clear
    scripted.update({"im2col": [0.5], "direct": [1.0], "fft": [2.0]})
    order.clear()
    seconds = _autotune.measure(spec, {"im2col": 1, "direct": 1, "fft": 1}, budget=0.01)
    assert order == ["im2col", "direct", "fft"] and seconds["im2col"] == 0.5
