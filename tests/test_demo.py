"""`trueconv demo` runs, shows both kinds side by side, and says which algorithm ran."""

from __future__ import annotations

import re

import numpy as np
import pytest

import trueconv
from trueconv.cli import main


def test_demo_runs_and_reports_the_algorithm(capsys) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    # every seed example printed, each matching its source
    assert out.count("matches the numbers in the source: yes") == 4
    assert "source: NO" not in out
    for row in ("60    56    52", "76    72    52", "13    20    17", "-13   -20   -17"):
        assert row in out
    assert "kind='correlation'" in out and "kind='convolution'" in out
    assert "0.0554" in out  # the source's random-bias printout is explained
    # the image part says which algorithm ran, why, and how long it took
    match = re.search(r"algorithm: (\w+) \((.+)\)\ntime: ([0-9.]+) ms \(first call ([0-9.]+) ms", out)
    assert match, out[-400:]
    assert match.group(1) in trueconv.ALGORITHMS
    assert float(match.group(3)) >= 0 and float(match.group(4)) >= 0


@pytest.mark.parametrize("algorithm", sorted(trueconv.ALGORITHMS))
def test_demo_with_each_algorithm(algorithm, capsys) -> None:
    assert main(["demo", "--algorithm", algorithm]) == 0
    out = capsys.readouterr().out
    assert f"algorithm: {algorithm} (requested explicitly)" in out


def test_demo_bad_algorithm_is_one_line_error(capsys) -> None:
    assert main(["demo", "--algorithm", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trueconv demo: error: ") and "algorithm must be one of" in err
    assert "\n" not in err


def test_demo_image_ships_with_the_package() -> None:
    from trueconv._examples import sample_image

    image = sample_image()
    assert image.dtype == np.uint8 and image.shape == (64, 96)
