"""``trueconv bench``: the report's structure on a tiny run (never its timings)."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

import trueconv
from trueconv import _threads
from trueconv.algorithms import ALGORITHMS
from trueconv.cli import main
from trueconv.cli import bench

ROW = re.compile(r"^\| (?P<label>[^|]+) \| (?P<dtype>\w+) \| (?P<time>[\d.]+ (?:s|ms|us)) \| "
                 r"(?P<algorithm>[\w+]+) \| (?P<gflops>[\d.]+) \| (?P<peer>[^|]+) \| "
                 r"(?P<peer_time>[\d.]+ (?:s|ms|us)) \| (?P<ratio>[\d.]+x) \| (?P<error>[\d.e+-]+) \| "
                 r"(?P<peers>[^|]+) \|$")


@pytest.fixture(autouse=True)
def keep_threads():
    before = _threads._num_threads
    yield
    if before is not None:
        trueconv.set_num_threads(before)
    _threads._num_threads = before


def test_tiny_run_writes_a_structured_report(tmp_path, capsys):
    output, image = tmp_path / "report.md", tmp_path / "report.png"
    rows = "1x1 256->64 @56 b1,1-D 1e6 samples x 16 taps"
    plot = ["--plot", str(image)] if importlib.util.find_spec("matplotlib") else []
    status = main(["bench", "--only", rows, "--against", "torch,scipy", "--repeats", "1",
                   "--threads", "1", "--output", str(output), *plot])
    assert status == 0
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# trueconv benchmark\n")
    for field in ("- date:", "- machine:", "- threads: 1 for every library", "- versions: trueconv",
                  "- thread pools (threadpoolctl):", "- OpenBLAS env:", "- timing: median"):
        assert field in text
    assert "## Forward layers" in text and "## 1-D signals" in text
    parsed = [ROW.match(line) for line in text.splitlines() if line.startswith("| ") and "---" not in line
              and not line.startswith("| case")]
    assert len(parsed) == 2 and all(parsed), text
    layer, signal = (m.groupdict() for m in parsed)
    assert layer["label"] == "1x1 256->64 @56 b1" and layer["dtype"] == "float32"
    assert layer["peer"] == "torch"
    assert signal["peer"] in ("np.convolve", "scipy.signal.oaconvolve") and signal["dtype"] == "float64"
    for row, tolerance in ((layer, 1e-4), (signal, 1e-10)):
        assert set(row["algorithm"].split("+")) <= set(ALGORITHMS)
        assert 0 <= float(row["error"]) <= tolerance
        assert float(row["ratio"][:-1]) > 0
    assert "Rows at >= 1.0x the fastest peer:" in text
    if plot:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1x1 256->64 @56 b1" in capsys.readouterr().err  # progress goes to stderr


def test_report_to_stdout_without_peers(capsys):
    assert main(["bench", "--only", "1-D 1e6 samples x 16 taps", "--against", "opencv",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1-D 1e6 samples x 16 taps | float64 |" in out
    assert "| - | - | - |" in out  # no peer of that kind: no ratio, not a fake one


def test_list_and_quick_selection(capsys):
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    quick = bench.select_cases(quick=True, only=None)
    assert len(listed) == len(quick) >= 4
    assert {c.group for c in quick} == {"layers", "filter", "signal"}
    everything = bench.select_cases(quick=False, only=None)
    labels = {c.label for c in everything}
    for label, *_ in bench.LAYERS:
        assert f"{label} b1" in labels and f"{label} b8" in labels
    assert sum(c.group == "filter" for c in everything) == 10
    assert sum(c.group == "signal" for c in everything) == 3


def test_backward_row_is_skipped_with_a_note_without_conv_grad(monkeypatch):
    monkeypatch.delattr(trueconv, "conv_grad", raising=False)
    (case,) = bench.backward_cases()
    assert "conv_grad is not available" in case.note
    row = bench.run_case(case, ["torch"], repeats=1)
    assert row.note and row.ratio is None
    assert case.note in "\n".join(bench.table([row]))


@pytest.mark.parametrize("argv, message", [
    (["--against", "matlab"], "--against: unknown peers ['matlab']"),
    (["--only", "no such row"], "no benchmark row matches"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_bad_options_are_one_line_errors(capsys, argv, message):
    assert main(["bench", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trueconv bench: error: ") and message in err and err.count("\n") == 1


def test_error_and_timing_helpers():
    assert bench.max_relative_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)
    pair = (np.array([1.0]), np.array([4.0, 0.0]))
    assert bench.max_relative_error(pair, (np.array([1.0]), np.array([2.0, 0.0]))) == pytest.approx(1.0)
    calls = []
    seconds, runs = bench.time_call(lambda: calls.append(1), repeats=4)
    assert seconds >= 0 and runs == 4 and len(calls) == 5  # one warm-up, then the repeats


def test_rounds_report_the_median_of_each_library():
    (case,) = [c for c in bench.all_cases() if c.group == "signal"][:1]
    rows = [bench.Row(case, t, alg, err, {"np.convolve": p, "scipy": q}, 3)
            for t, alg, err, p, q in [(1.0, "fft", 1e-16, 4.0, 9.0), (3.0, "direct", 3e-16, 2.0, 8.0),
                                      (2.0, "fft", 2e-16, 6.0, 7.0)]]
    merged = bench.merge_rounds(rows)
    assert merged.seconds == 2.0 and merged.peers == {"np.convolve": 4.0, "scipy": 8.0}
    assert merged.algorithm == "direct+fft" and merged.error == 3e-16 and merged.runs == 9
    assert merged.ratio == 2.0
    assert bench.merge_rounds(rows[:1]) is rows[0]


def test_rounds_run_the_suite_again(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["bench", "--only", "16 taps", "--against", "scipy", "--repeats", "1",
                 "--rounds", "2", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[round 1/2]" in err and "[round 2/2]" in err
    assert "rounds: the whole suite ran 2 times" in out.read_text()
