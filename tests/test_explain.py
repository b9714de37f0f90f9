"""``trueconv explain``: the data model behind the drawing, and the files it writes."""

from __future__ import annotations

import numpy as np
import pytest

import trueconv
from trueconv._examples import SEED_EXAMPLES
from trueconv.cli import main
from trueconv.cli.explain import (DEFAULT_IMAGE, DEFAULT_KERNEL, KINDS, TITLE_FRAMES, explain, html_page,
                                  render_frames)
from trueconv.cli._kernels import parse_matrix

from references import conv_reference

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SEED = SEED_EXAMPLES[0]


def test_defaults_are_the_seed_example():
    np.testing.assert_array_equal(parse_matrix(DEFAULT_IMAGE), SEED.image)
    np.testing.assert_array_equal(parse_matrix(DEFAULT_KERNEL), SEED.kernel)


def test_seed_model_final_numbers():
    model = explain(SEED.image, SEED.kernel)
    assert model.output_shape == (3, 3)
    assert len(model.frames) == TITLE_FRAMES + 9
    last = model.frames[-1]
    panels = {p.kind: p for p in last.panels}
    np.testing.assert_array_equal(panels["correlation"].output, [[60, 56, 52], [39, 61, 66], [54, 78, 82]])
    np.testing.assert_array_equal(panels["correlation"].output, SEED.expected_correlation)
    np.testing.assert_array_equal(panels["convolution"].output, SEED.expected_convolution)
    np.testing.assert_array_equal(model.results["correlation"], SEED.expected_correlation)


def test_every_frame_shows_consistent_numbers():
    model = explain(SEED.image, SEED.kernel)
    assert model.frames[0].is_title and model.frames[0].panels == ()
    steps = model.frames[TITLE_FRAMES:]
    for n, frame in enumerate(steps):
        assert [p.kind for p in frame.panels] == list(KINDS)  # one panel per side per cell
        i, j = divmod(n, 3)
        for panel in frame.panels:
            assert panel.cell == (i, j) and panel.window == (i, j)
            np.testing.assert_array_equal(panel.values, SEED.image[i:i + 3, j:j + 3])
            expected_kernel = SEED.kernel if panel.kind == "correlation" else SEED.kernel[::-1, ::-1]
            np.testing.assert_array_equal(panel.kernel, expected_kernel)
            np.testing.assert_array_equal(panel.products, panel.values * expected_kernel)
            assert panel.total == panel.products.sum()
            filled = ~np.isnan(panel.output)
            assert filled.sum() == n + 1  # the output fills one cell per step
            assert panel.output[i, j] == panel.total


@pytest.mark.parametrize("image_shape, kernel_shape, padding, stride", [
    ((5, 5), (3, 3), 1, 2), ((4, 6), (2, 3), 0, 1), ((6, 5), (3, 2), 2, 3), ((3, 3), (3, 3), 0, 1),
])
def test_results_equal_trueconv_and_reference(image_shape, kernel_shape, padding, stride):
    rng = np.random.default_rng(sum(image_shape) + padding)
    image = rng.integers(-5, 6, size=image_shape)
    kernel = rng.integers(-3, 4, size=kernel_shape)
    model = explain(image, kernel, padding, stride)
    x, w = image[np.newaxis, np.newaxis], kernel[np.newaxis, np.newaxis]
    for kind in KINDS:
        ours = trueconv.conv2d(x, w, stride=stride, padding=padding, kind=kind)[0, 0]
        flipped = w if kind == "correlation" else w[..., ::-1, ::-1]
        reference = conv_reference(x, flipped, stride=stride, pad_widths=((padding, padding),) * 2)[0, 0]
        np.testing.assert_array_equal(model.results[kind], ours)
        np.testing.assert_array_equal(model.results[kind], reference)
        np.testing.assert_array_equal(model.frames[-1].panels[KINDS.index(kind)].output, ours)
    assert len(model.frames) == TITLE_FRAMES + ours.size


def test_gif_frames_match_model(tmp_path, capsys):
    out = tmp_path / "e.gif"
    assert main(["explain", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "60     56     52" in printed and "76     72     52" in printed
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames == TITLE_FRAMES + 9
        sizes = set()
        for index in range(gif.n_frames):
            gif.seek(index)
            frame = np.asarray(gif.convert("RGB"))
            sizes.add(frame.shape)
            if index >= TITLE_FRAMES:
                # both kernels are drawn: blue on the left half, red on the right half
                half = frame.shape[1] // 2
                blue = (frame[..., 2] > 180) & (frame[..., 0] < 60)
                red = (frame[..., 0] > 180) & (frame[..., 2] < 60)
                assert blue[:, :half].sum() > 100 and red[:, half:].sum() > 100
                assert blue[:, half:].sum() < 10 and red[:, :half].sum() < 10
        assert len(sizes) == 1
    # frames after the first store only changed pixels: decoding must still give every full frame
    drawn = render_frames(explain(SEED.image, SEED.kernel))
    with Image.open(out) as gif:
        for index, expected in enumerate(drawn):
            gif.seek(index)
            decoded = np.asarray(gif.convert("RGB")).astype(int)
            difference = np.abs(decoded - np.asarray(expected).astype(int))
            assert difference.mean() < 4.0, index  # 31-colour palette: anti-aliased text differs a little


def test_png_strip(tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert main(["explain", "--png", "-o", str(out), "--image", "1,2,3;4,5,6;7,8,9",
                 "--kernel", "1,0;0,-1", "--padding", "1"]) == 0
    model = explain(parse_matrix("1,2,3;4,5,6;7,8,9"), parse_matrix("1,0;0,-1"), padding=1)
    frames = render_frames(model)
    step_w, step_h = frames[1].size
    with Image.open(out) as strip:
        assert strip.format == "PNG" and not getattr(strip, "is_animated", False)
        # the title on top, then the 4x4 = 16 steps tiled 3 per row (6 rows)
        assert strip.size == (3 * step_w, frames[0].size[1] + 6 * step_h)
        page = np.asarray(strip.convert("RGB"))
        title_h = frames[0].size[1]
        last = page[title_h + 5 * step_h:, :step_w]  # step 16 sits in the first column of row 6
        np.testing.assert_array_equal(last, np.asarray(frames[16]))


def test_html_written_with_values(tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["explain", "--html", str(out), "--kernel", "1,2;3,4", "--stride", "2"]) == 0
    text = out.read_text(encoding="utf-8")
    for element in ('id="image"', 'id="kernel"', 'id="step"', 'id="play"',
                    'id="correlation-result"', 'id="convolution-result"'):
        assert element in text
    assert '"kernel": "1,2;3,4"' in text and '"stride": 2' in text
    # self-contained: nothing is fetched from anywhere
    for needle in ("http:", "https:", "//cdn", "src=", "<link", "@import", "url(", "fetch(", "XMLHttpRequest"):
        assert needle not in text


def test_html_defaults_cannot_break_out_of_script():
    page = html_page(image="1</script><script>alert(1)</script>")
    assert "</script><script>alert" not in page


@pytest.mark.parametrize("argv, match", [
    ([], "nothing to write"),
    (["-o", "x.gif", "--image", "1,2;3"], "rows have different lengths"),
    (["-o", "x.gif", "--kernel", "a,b"], "--kernel: 'a' is not a number"),
    (["-o", "x.gif", "--kernel", "1,1,1,1,1,1;1,1,1,1,1,1", "--image", "1,2;3,4"], "does not fit"),
    (["-o", "x.gif", "--image", ";".join([",".join(["1"] * 17)] * 3)], "at most 16"),
    (["-o", "x.gif", "--stride", "0"], "--stride must be between 1"),
    (["-o", "x.gif", "--padding", "9"], "--padding must be between 0"),
    (["-o", "x.gif", "--png"], "use a .png name with --png"),
    (["-o", "x.txt"], "a .gif name otherwise"),
    (["--html", "x.gif"], "use a .html name"),
    (["-o", "missing/x.gif"], "output directory"),
])
def test_errors(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trueconv explain: error: ") and match in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "e.gif"
    out.write_bytes(b"keep")
    assert main(["explain", "-o", str(out)]) == 1
    assert out.read_bytes() == b"keep"
    assert main(["explain", "-o", str(out), "--force"]) == 0
    assert out.read_bytes()[:6] == b"GIF89a"
