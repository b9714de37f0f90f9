"""README.md's Python examples run as doctests: the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_pass() -> None:
    text = README.read_text(encoding="utf-8")
    assert ">>> import numpy as np, trueconv" in text  # the examples exist to be run
    result = doctest.testfile(
        str(README), module_relative=False, verbose=False, report=True,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
    )
    assert result.attempted >= 4, result
    assert result.failed == 0, result


def test_readme_setup_is_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    assert "demo:" in makefile and "test:" in makefile
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
