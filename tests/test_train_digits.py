"""``trueconv train-digits``: a shortened run learns; the output line has the promised form."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from trueconv.cli import build_parser, main  # noqa: E402

FINAL_LINE = re.compile(
    r"^test accuracy (?P<accuracy>[01]\.\d{3}) \| trueconv (?P<ours>\d+\.\d{2}) s/epoch \| "
    r"torch\.nn\.Conv2d (?P<torch>\d+\.\d{2}) s/epoch$"
)
SHORT = ["train-digits", "--epochs", "2", "--limit", "600", "--no-progress"]


def run(capsys, *extra):
    assert main([*SHORT, *extra]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    match = FINAL_LINE.match(out[-1])
    assert match, f"unexpected final line {out[-1]!r}"
    return out, float(match["accuracy"])


def test_shortened_run_learns_and_is_deterministic(capsys):
    out, accuracy = run(capsys, "--seed", "3")
    # 10 classes: chance is 0.1; two epochs over 600 images already give > 0.6.
    assert accuracy > 0.6, out
    assert out[0].startswith("digits: 600 training and 450 test images of 8x8; 2 epochs")
    again, accuracy_again = run(capsys, "--seed", "3")
    assert accuracy_again == accuracy
    # same seed, same initial weights and batches: the torch twin reports the same accuracy too
    assert again[1] == out[1] and again[1].startswith("torch.nn.Conv2d model: test accuracy ")


def test_true_convolution_layers_train_too(capsys):
    out, accuracy = run(capsys, "--kind", "convolution", "--algorithm", "im2col", "--limit", "300",
                        "--epochs", "1")
    assert accuracy > 0.3, out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--algorithm", "magic"], "--algorithm must be one of auto, "),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert main(["train-digits", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"trueconv train-digits: error: {message}") and "\n" not in err


def test_subcommand_is_listed_and_limit_is_hidden():
    parser = build_parser()
    assert "train-digits" in parser.format_help()
    sub = parser._subparsers._group_actions[0].choices["train-digits"]
    text = sub.format_help()
    assert "--epochs" in text and "--seed" in text and "--limit" not in text
