"""``trueconv filter``: files written by the command, read back by independent readers.

Inputs are made with Pillow / tifffile / numpy directly, the command runs
in-process through ``trueconv.cli.main`` (one test runs the real executable),
and outputs are decoded again with Pillow / tifffile / numpy and compared with
``scipy.signal.convolve2d``/``correlate2d`` (the independent oracle) and with
``trueconv.convolve2d``/``correlate2d`` on the decoded pixels.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

import trueconv
from trueconv.cli import main

PIL = pytest.importorskip("PIL")
tifffile = pytest.importorskip("tifffile")
from PIL import Image  # noqa: E402

SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
ODD = np.array([[1, 2, 0, -1], [0, 3, 1, 1], [2, -1, 0, 1]], dtype=np.float64)  # 3x4, asymmetric


def rng_image(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def oracle(pixels, kernel, kind="convolution", mode="same", boundary="symm", fillvalue=0.0):
    """Float64 result per channel by scipy.signal (independent), checked against trueconv too."""
    scipy_fn = scipy.signal.convolve2d if kind == "convolution" else scipy.signal.correlate2d
    ours_fn = trueconv.convolve2d if kind == "convolution" else trueconv.correlate2d
    channels = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(pixels.shape[2])]
    results = []
    for channel in channels:
        expected = scipy_fn(channel.astype(np.float64), kernel, mode=mode, boundary=boundary,
                            fillvalue=fillvalue)
        ours = ours_fn(channel, kernel, mode=mode, boundary=boundary, fillvalue=fillvalue)
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-9 * max(1.0, np.abs(expected).max()))
        results.append(ours)
    return results[0] if pixels.ndim == 2 else np.stack(results, axis=-1)


def to_int(values, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def run(capsys, *argv):
    code = main(["filter", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert err == ""
    return out


def fail(capsys, *argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trueconv filter: error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------
# formats and bit depths: round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode_name, shape, dtype", [
    ("L", (23, 31), np.uint8),
    ("RGB", (17, 20, 3), np.uint8),
    ("I;16", (19, 22), np.uint16),
])
def test_png_round_trip(tmp_path, capsys, mode_name, shape, dtype):
    pixels = rng_image(shape, dtype)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "--kernel", "1,0,-1;2,0,-2;1,0,-1",
       "--algorithm", "direct")
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == mode_name
        result = np.asarray(image)
    assert result.dtype == dtype and result.shape == shape
    np.testing.assert_array_equal(result, to_int(oracle(pixels, SOBEL_X), dtype))
    if dtype == np.uint16:
        # 16 bits really kept: values above 255 that are not multiples of 257, and IHDR depth 16
        assert (result > 255).any() and (result % 257 != 0).any()
        assert (tmp_path / "out.png").read_bytes()[24] == 16


def test_png_rgba_alpha_kept(tmp_path, capsys):
    pixels = rng_image((15, 18, 4), np.uint8, seed=1)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "box:3", "--algorithm", "direct")
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "RGBA"
        result = np.asarray(image)
    np.testing.assert_array_equal(result[..., 3], pixels[..., 3])
    np.testing.assert_array_equal(result[..., :3], to_int(oracle(pixels[..., :3], np.full((3, 3), 1 / 9)), np.uint8))


def test_png_gray_alpha_kept(tmp_path, capsys):
    pixels = rng_image((12, 9, 2), np.uint8, seed=2)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "laplacian")
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "LA"
        result = np.asarray(image)
    np.testing.assert_array_equal(result[..., 1], pixels[..., 1])
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    np.testing.assert_array_equal(result[..., 0], to_int(oracle(pixels[..., 0], laplacian), np.uint8))


def test_palette_png_becomes_rgb(tmp_path, capsys):
    pixels = rng_image((10, 12, 3), np.uint8, seed=3)
    Image.fromarray(pixels).quantize(16).save(tmp_path / "in.png")
    with Image.open(tmp_path / "in.png") as image:
        assert image.mode == "P"
        decoded = np.asarray(image.convert("RGB"))
    ok(capsys, tmp_path / "in.png", tmp_path / "out.npy", "-k", "sharpen", "--output-dtype", "float64")
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float64)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), oracle(decoded, sharpen))


def test_documented_mode_conversions(tmp_path, capsys):
    from PIL import ImageOps

    pixels = rng_image((10, 14, 3), np.uint8, seed=16)
    # EXIF orientation 6: viewers rotate it; the command filters what they show
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rotated.jpg") as image:
        shown = np.asarray(ImageOps.exif_transpose(image))
    assert shown.shape == (14, 10, 3)
    ok(capsys, tmp_path / "rotated.jpg", tmp_path / "r.npy", "-k", "1", "--output-dtype", "float64")
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), shown.astype(np.float64))
    # CMYK JPEG becomes RGB; bilevel becomes 8-bit gray
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        rgb = np.asarray(image.convert("RGB"))
    ok(capsys, tmp_path / "cmyk.jpg", tmp_path / "c.png", "-k", "1")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)
    Image.fromarray(pixels[..., 0] > 128).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as image:
        assert image.mode == "1"
    ok(capsys, tmp_path / "bits.png", tmp_path / "b.png", "-k", "1")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")),
                                  np.where(pixels[..., 0] > 128, 255, 0).astype(np.uint8))


@pytest.mark.parametrize("mode_name", ["L", "RGB"])
def test_jpeg_input_and_output(tmp_path, capsys, mode_name):
    rng = np.random.default_rng(4)
    smooth = np.cumsum(np.cumsum(rng.integers(0, 3, size=(32, 40)), 0), 1)
    gray = (smooth * 255 // smooth.max()).astype(np.uint8)
    pixels = gray if mode_name == "L" else np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    Image.fromarray(pixels).save(tmp_path / "in.jpg", quality=90)
    with Image.open(tmp_path / "in.jpg") as image:
        decoded = np.asarray(image)  # what the command sees
    gaussian = "gaussian:1"
    from trueconv.cli._kernels import gaussian_kernel
    expected = to_int(oracle(decoded, gaussian_kernel(1.0)), np.uint8)
    ok(capsys, tmp_path / "in.jpg", tmp_path / "out.png", "-k", gaussian, "--algorithm", "direct")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)
    ok(capsys, tmp_path / "in.jpg", tmp_path / "out.jpg", "-k", gaussian)
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.format == "JPEG" and image.mode == mode_name
        lossy = np.asarray(image).astype(int)
    assert np.abs(lossy - expected).mean() < 2.0  # JPEG is lossy; the filtered image is smooth


@pytest.mark.parametrize("layout, dtype", [
    ("gray", np.uint8), ("gray", np.uint16), ("rgb", np.uint16), ("rgba", np.uint16),
    ("gray", np.float32), ("planar", np.uint8),
])
def test_tiff_round_trip(tmp_path, capsys, layout, dtype):
    shape = {"gray": (14, 17), "rgb": (13, 11, 3), "rgba": (12, 10, 4), "planar": (3, 9, 8)}[layout]
    pixels = rng_image(shape, dtype, seed=5)
    options = {"gray": {"photometric": "minisblack"}, "rgb": {"photometric": "rgb"},
               "rgba": {"photometric": "rgb", "extrasamples": ["unassalpha"]},
               "planar": {"photometric": "rgb", "planarconfig": "separate"}}[layout]
    tifffile.imwrite(tmp_path / "in.tif", pixels, **options)
    decoded = np.moveaxis(pixels, 0, -1) if layout == "planar" else pixels
    ok(capsys, tmp_path / "in.tif", tmp_path / "out.tif", "-k", ODD_TEXT, "--kind", "correlation",
       "--algorithm", "direct")
    result = tifffile.imread(tmp_path / "out.tif")
    assert result.dtype == dtype
    colour = decoded[..., :3] if layout == "rgba" else decoded
    expected = oracle(colour, ODD, kind="correlation")
    if np.dtype(dtype).kind == "f":
        np.testing.assert_array_equal(result, expected.astype(dtype))
    else:
        np.testing.assert_array_equal(result[..., :3] if layout == "rgba" else result, to_int(expected, dtype))
    if layout == "rgba":
        np.testing.assert_array_equal(result[..., 3], decoded[..., 3])
        with tifffile.TiffFile(tmp_path / "out.tif") as tif:
            assert len(tif.pages[0].extrasamples) == 1


ODD_TEXT = "1,2,0,-1;0,3,1,1;2,-1,0,1"


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.int16])
def test_npy_round_trip(tmp_path, capsys, dtype):
    pixels = rng_image((11, 13, 2) if dtype == np.float32 else (11, 13), dtype, seed=6)
    np.save(tmp_path / "in.npy", pixels)
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.npy", "-k", ODD_TEXT, "--algorithm", "direct")
    result = np.load(tmp_path / "out.npy", allow_pickle=False)
    assert result.dtype == dtype and result.shape == pixels.shape
    expected = oracle(pixels, ODD)
    if np.dtype(dtype).kind == "f":
        # float .npy keeps full precision: the float64 result, rounded once to the input's type
        np.testing.assert_array_equal(result, expected.astype(dtype))
    else:
        np.testing.assert_array_equal(result, to_int(expected, dtype))


# --------------------------------------------------------------------------
# kind, mode, boundary, fillvalue, algorithm
# --------------------------------------------------------------------------
CASES = [  # a deterministic sample of kind x mode x boundary, with even and odd kernels
    ("convolution", "same", "symm", ODD_TEXT), ("correlation", "same", "symm", ODD_TEXT),
    ("convolution", "valid", "fill", ODD_TEXT), ("correlation", "full", "wrap", ODD_TEXT),
    ("convolution", "full", "symm", "1,2;3,-4"), ("correlation", "same", "wrap", "1,2;3,-4"),
    ("convolution", "same", "fill", "1,2;3,-4"), ("correlation", "valid", "symm", "sobel-y"),
]


@pytest.mark.parametrize("kind, mode, boundary, kernel", CASES)
def test_kinds_modes_boundaries(tmp_path, capsys, kind, mode, boundary, kernel):
    from trueconv.cli._kernels import parse_kernel

    pixels = rng_image((9, 12), np.float64, seed=7)
    np.save(tmp_path / "in.npy", pixels)
    extra = ["--fillvalue", "2.5"] if boundary == "fill" else []
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.npy", "-k", kernel, "--kind", kind, "--mode", mode,
       "--boundary", boundary, "--algorithm", "direct", *extra)
    fill = 2.5 if boundary == "fill" else 0.0
    expected = oracle(pixels, parse_kernel(kernel), kind, mode, boundary, fill)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_defaults_are_convolution_same_symm(tmp_path, capsys):
    pixels = rng_image((8, 10), np.float64, seed=8)
    np.save(tmp_path / "in.npy", pixels)
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.npy", "-k", ODD_TEXT)
    expected = scipy.signal.convolve2d(pixels, ODD, mode="same", boundary="symm")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["auto", "fft"])
def test_other_algorithms_agree(tmp_path, capsys, algorithm):
    from trueconv.cli._kernels import gaussian_kernel

    pixels = rng_image((40, 33), np.float64, seed=9)
    np.save(tmp_path / "in.npy", pixels)
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.npy", "-k", "gaussian:2.5", "--algorithm", algorithm,
       "--kind", "correlation", "--mode", "full")
    expected = scipy.signal.correlate2d(pixels, gaussian_kernel(2.5), mode="full", boundary="symm")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


# --------------------------------------------------------------------------
# type rules: clipping, --normalize, --output-dtype
# --------------------------------------------------------------------------
def test_normalize_uses_full_range(tmp_path, capsys):
    pixels = rng_image((16, 16, 3), np.uint8, seed=10)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "sobel-x", "--normalize")
    result = np.asarray(Image.open(tmp_path / "out.png"))
    raw = oracle(pixels, SOBEL_X)
    expected = to_int((raw - raw.min()) / (raw.max() - raw.min()) * 255, np.uint8)
    np.testing.assert_array_equal(result, expected)
    assert result.min() == 0 and result.max() == 255


def test_normalize_float_output_is_unit_range(tmp_path, capsys):
    pixels = rng_image((10, 10), np.uint16, seed=11)
    tifffile.imwrite(tmp_path / "in.tif", pixels)
    ok(capsys, tmp_path / "in.tif", tmp_path / "out.tif", "-k", "emboss", "--normalize", "--output-dtype", "float32")
    result = tifffile.imread(tmp_path / "out.tif")
    assert result.dtype == np.float32 and result.min() == 0.0 and result.max() == 1.0


def test_clipping_by_default(tmp_path, capsys):
    pixels = np.zeros((7, 7), np.uint8)
    pixels[:, 4:] = 200
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "sobel-x")
    result = np.asarray(Image.open(tmp_path / "out.png"))
    raw = oracle(pixels, SOBEL_X)
    assert raw.max() > 255 and raw.min() >= 0
    np.testing.assert_array_equal(result, to_int(raw, np.uint8))
    assert result.max() == 255


def test_output_dtype_depth_change_rescales(tmp_path, capsys):
    pixels = rng_image((9, 8), np.uint8, seed=12)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "1", "--output-dtype", "uint16")
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(image), pixels.astype(np.uint16) * 257)
    ok(capsys, tmp_path / "out.png", tmp_path / "back.png", "-k", "1", "--output-dtype", "uint8")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back.png")), pixels)


def test_float_npy_to_png_needs_output_dtype(tmp_path, capsys):
    pixels = rng_image((6, 6), np.float64, seed=13) * 40 + 100
    np.save(tmp_path / "in.npy", pixels)
    fail(capsys, tmp_path / "in.npy", tmp_path / "out.png", "-k", "box:3", match="--output-dtype uint8")
    assert not (tmp_path / "out.png").exists()
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.png", "-k", "box:3", "--output-dtype", "uint8")
    expected = to_int(oracle(pixels, np.full((3, 3), 1 / 9)), np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)


@pytest.mark.parametrize("argv, match", [
    (["--output-dtype", "float32"], "needs .npy or .tif output"),
])
def test_float_types_only_for_npy_and_tiff(tmp_path, capsys, argv, match):
    Image.fromarray(rng_image((5, 5))).save(tmp_path / "in.png")
    fail(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "box:2", *argv, match=match)
    fail(capsys, tmp_path / "in.png", tmp_path / "out.jpg", "-k", "box:2", *argv, match=match)
    ok(capsys, tmp_path / "in.png", tmp_path / "out.tif", "-k", "box:2", *argv)
    assert tifffile.imread(tmp_path / "out.tif").dtype == np.float32


def test_format_limits(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "rgb16.tif", rng_image((6, 6, 3), np.uint16), photometric="rgb")
    fail(capsys, tmp_path / "rgb16.tif", tmp_path / "o.jpg", "-k", "box:2", match="JPEG stores 8 bits")
    Image.fromarray(rng_image((6, 6, 4))).save(tmp_path / "rgba.png")
    fail(capsys, tmp_path / "rgba.png", tmp_path / "o.jpg", "-k", "box:2", match="JPEG cannot store the alpha")
    fail(capsys, tmp_path / "rgba.png", tmp_path / "o.bmp", "-k", "box:2", match="cannot tell the output format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb16.tif", "rgba.png"]


# --------------------------------------------------------------------------
# alpha follows the geometry of valid/full output
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["convolution", "correlation"])
@pytest.mark.parametrize("kshape", [(3, 5), (2, 4)])
@pytest.mark.parametrize("mode, boundary", [("valid", "symm"), ("full", "fill"), ("full", "wrap")])
def test_alpha_geometry(tmp_path, capsys, kind, kshape, mode, boundary):
    # A delta kernel that is the identity in 'same' mode moves colour exactly as the
    # geometry should move alpha; with colour == alpha the two outputs must agree.
    alpha = rng_image((9, 11), np.uint8, seed=14)
    fn = scipy.signal.convolve2d if kind == "convolution" else scipy.signal.correlate2d
    for position in np.ndindex(kshape):
        delta = np.zeros(kshape)
        delta[position] = 1
        if np.array_equal(fn(alpha, delta, mode="same"), alpha):
            break
    else:  # pragma: no cover
        pytest.fail("no identity delta")
    text = ";".join(",".join(str(int(v)) for v in row) for row in delta)
    Image.fromarray(np.stack([alpha] * 4, axis=-1)).save(tmp_path / "in.png")
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", text, "--kind", kind, "--mode", mode,
       "--boundary", boundary)
    result = np.asarray(Image.open(tmp_path / "out.png"))
    expected = to_int(fn(alpha.astype(float), delta, mode=mode, boundary=boundary), np.uint8)
    assert result.shape[:2] == expected.shape
    np.testing.assert_array_equal(result[..., 0], expected)
    np.testing.assert_array_equal(result[..., 3], expected)


# --------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, nothing written
# --------------------------------------------------------------------------
@pytest.fixture
def card(tmp_path):
    path = tmp_path / "card.png"
    Image.fromarray(rng_image((12, 14), np.uint8, seed=15)).save(path)
    return path


def test_missing_input(tmp_path, capsys):
    fail(capsys, tmp_path / "nope.png", tmp_path / "o.png", "-k", "box:3", match="'" + str(tmp_path / "nope.png") + "' does not exist")


def test_corrupt_and_truncated_images(tmp_path, capsys, card):
    (tmp_path / "garbage.png").write_bytes(os.urandom(300))
    fail(capsys, tmp_path / "garbage.png", tmp_path / "o.png", "-k", "box:3", match="cannot decode")
    data = card.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    fail(capsys, tmp_path / "cut.png", tmp_path / "o.png", "-k", "box:3", match="cannot decode")
    Image.fromarray(rng_image((40, 40, 3))).save(tmp_path / "in.jpg")
    jpeg = (tmp_path / "in.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    line = fail(capsys, tmp_path / "cut.jpg", tmp_path / "o.png", "-k", "box:3", match="cannot decode")
    assert "truncated" in line
    (tmp_path / "cut.tif").write_bytes(b"II*\x00" + b"\x08\x00\x00\x00" + b"\x05\x00")
    fail(capsys, tmp_path / "cut.tif", tmp_path / "o.png", "-k", "box:3", match="cannot decode")
    (tmp_path / "empty.png").write_bytes(b"")
    fail(capsys, tmp_path / "empty.png", tmp_path / "o.png", "-k", "box:3", match="is empty")
    assert not (tmp_path / "o.png").exists() and leftovers(tmp_path) == []


def test_unsupported_formats(tmp_path, capsys):
    Image.fromarray(rng_image((8, 8, 3))).save(tmp_path / "in.bmp")
    fail(capsys, tmp_path / "in.bmp", tmp_path / "o.png", "-k", "box:3", match="unsupported image format BMP")
    frames = [Image.fromarray(rng_image((8, 8), seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    fail(capsys, tmp_path / "anim.png", tmp_path / "o.png", "-k", "box:3", match="has 3 frames")
    tifffile.imwrite(tmp_path / "pages.tif", rng_image((3, 8, 8)), photometric="minisblack", metadata=None)
    fail(capsys, tmp_path / "pages.tif", tmp_path / "o.png", "-k", "box:3", match="pages")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16_bytes(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG built by hand from the spec (independent of every PNG library)."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(height))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _png16_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a non-interlaced 16-bit PNG written with filter type 0 or any filter, by pypng's rows."""
    import png

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    assert info["bitdepth"] == 16
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return array.reshape(height, width, info["planes"]), data[25]


@pytest.mark.parametrize("colour_type, planes", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_round_trip(tmp_path, capsys, colour_type, planes):
    # Pillow would read these as 8 bits without a word: trueconv must keep all 16.
    pixels = rng_image((9, 11, planes), np.uint16, seed=colour_type)
    (tmp_path / "in.png").write_bytes(_png16_bytes(pixels, colour_type))
    ok(capsys, tmp_path / "in.png", tmp_path / "out.png", "-k", "box:3", "--algorithm", "direct")
    result, written_type = _png16_decode((tmp_path / "out.png").read_bytes())
    assert written_type == colour_type and result.shape == pixels.shape
    colour = pixels[..., :-1] if planes in (2, 4) else pixels
    expected = to_int(oracle(colour if colour.shape[-1] > 1 else colour[..., 0], np.full((3, 3), 1 / 9)),
                      np.uint16)
    got = result[..., :-1] if planes in (2, 4) else result
    np.testing.assert_array_equal(got if got.shape[-1] > 1 else got[..., 0], expected)
    if planes in (2, 4):
        np.testing.assert_array_equal(result[..., -1], pixels[..., -1])  # alpha kept, 16 bits
    assert (result > 255).any() and (result % 257 != 0).any()


def test_16bit_rgb_tiff_to_png_keeps_16_bits(tmp_path, capsys):
    pixels = rng_image((6, 7, 3), np.uint16, seed=4)
    tifffile.imwrite(tmp_path / "rgb16.tif", pixels, photometric="rgb")
    ok(capsys, tmp_path / "rgb16.tif", tmp_path / "o.png", "-k", "box:2", "--algorithm", "direct")
    result, colour_type = _png16_decode((tmp_path / "o.png").read_bytes())
    assert colour_type == 2
    np.testing.assert_array_equal(result, to_int(oracle(pixels, np.full((2, 2), 1 / 4)), np.uint16))


def test_decompression_bomb(tmp_path, capsys, monkeypatch, card):
    tifffile.imwrite(tmp_path / "big.tif", rng_image((30, 30)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    fail(capsys, card, tmp_path / "o.png", "-k", "box:3", match="decompression bomb")
    fail(capsys, tmp_path / "big.tif", tmp_path / "o.png", "-k", "box:3", match="decompression-bomb limit")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2 * 12 * 14 // 3)  # Pillow itself errors at 2x
    fail(capsys, card, tmp_path / "o.png", "-k", "box:3", match="decompression")


@pytest.mark.parametrize("spec, match", [
    ("1,2;3", "rows have different lengths"),
    ("1,x,3", "'x' is not a number"),
    ("gaussian:-2", "SIGMA must be positive"),
    ("motion:5:abc", "'abc' is not a number"),
    ("nosuch", "unknown kernel 'nosuch'"),
])
def test_bad_kernel_specs(tmp_path, capsys, card, spec, match):
    fail(capsys, card, tmp_path / "o.png", "--kernel", spec, match=match)
    assert not (tmp_path / "o.png").exists()


def test_missing_output_directory(tmp_path, capsys, card):
    fail(capsys, card, tmp_path / "no" / "such" / "o.png", "-k", "box:3", match="output directory")


def test_kernel_larger_than_image_in_valid_mode(tmp_path, capsys, card):
    fail(capsys, card, tmp_path / "o.png", "-k", "box:13", "--mode", "valid", match="larger than the image")
    fail(capsys, card, tmp_path / "o.png", "-k", "gaussian:2", "--mode", "valid", match="(17x17) is larger")
    ok(capsys, card, tmp_path / "o.png", "-k", "box:13", "--mode", "same")


def test_existing_output_needs_force(tmp_path, capsys, card):
    target = tmp_path / "o.png"
    target.write_bytes(b"precious")
    fail(capsys, card, target, "-k", "box:3", match="pass --force")
    assert target.read_bytes() == b"precious"
    ok(capsys, card, target, "-k", "box:3", "--force")
    assert np.asarray(Image.open(target)).shape == (12, 14)
    assert leftovers(tmp_path) == []


def test_never_overwrites_the_input(tmp_path, capsys, card):
    before = digest(card)
    fail(capsys, card, card, "-k", "box:3", "--force", match="is the input file")
    os.link(card, tmp_path / "hardlink.png")
    fail(capsys, card, tmp_path / "hardlink.png", "-k", "box:3", "--force", match="is the input file")
    os.symlink(card, tmp_path / "symlink.png")
    fail(capsys, card, tmp_path / "symlink.png", "-k", "box:3", "--force", match="is the input file")
    assert digest(card) == before


def test_input_file_untouched(tmp_path, capsys, card):
    before = digest(card)
    ok(capsys, card, tmp_path / "o.npy", "-k", "sobel-x", "--output-dtype", "float64")
    assert digest(card) == before


def test_failed_write_leaves_nothing(tmp_path, capsys, card, monkeypatch):
    from PIL import PngImagePlugin

    def broken(image, fp, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(PngImagePlugin, "_save", broken)
    monkeypatch.setitem(Image.SAVE, "PNG", broken)
    fail(capsys, card, tmp_path / "o.png", "-k", "box:3", match="disk full (simulated)")
    assert not (tmp_path / "o.png").exists()
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["card.png"]
    (tmp_path / "keep.png").write_bytes(b"old")
    fail(capsys, card, tmp_path / "keep.png", "-k", "box:3", "--force", match="disk full")
    assert (tmp_path / "keep.png").read_bytes() == b"old" and leftovers(tmp_path) == []


def test_output_permissions_follow_umask(tmp_path, capsys, card):
    ok(capsys, card, tmp_path / "o.png", "-k", "box:3")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o666 & ~mask


# --------------------------------------------------------------------------
# .npy safety (EDGE_CASES #70-#74)
# --------------------------------------------------------------------------
def _npy_header(shape, dtype="<f8") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npy_safety(tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((10, 100)))
    (tmp_path / "cut.npy").write_bytes(good.read_bytes()[:1000])
    fail(capsys, tmp_path / "cut.npy", tmp_path / "o.npy", "-k", "box:3", match="truncated")
    (tmp_path / "forged.npy").write_bytes(_npy_header((1000000, 1000000)) + b"\x00" * 64)
    fail(capsys, tmp_path / "forged.npy", tmp_path / "o.npy", "-k", "box:3", match="8000000000000 bytes")
    (tmp_path / "head.npy").write_bytes(b"\x93NUMPY\x01\x00\x40")
    fail(capsys, tmp_path / "head.npy", tmp_path / "o.npy", "-k", "box:3", match="invalid .npy header")
    (tmp_path / "text.npy").write_bytes(b"this is not numpy at all")
    fail(capsys, tmp_path / "text.npy", tmp_path / "o.npy", "-k", "box:3", match="not a .npy file")
    np.save(tmp_path / "obj.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    fail(capsys, tmp_path / "obj.npy", tmp_path / "o.npy", "-k", "box:3", match="never loads pickled")
    np.savez(tmp_path / "arrays.npz", a=np.ones((4, 4)))
    fail(capsys, tmp_path / "arrays.npz", tmp_path / "o.npy", "-k", "box:3", match=".npz is not supported")
    np.save(tmp_path / "rank1.npy", np.ones(5))
    fail(capsys, tmp_path / "rank1.npy", tmp_path / "o.npy", "-k", "box:3", match="2-D (H, W) or 3-D")
    assert not (tmp_path / "o.npy").exists()


def test_npy_big_endian_and_fortran_order(tmp_path, capsys):
    pixels = np.asfortranarray(rng_image((7, 9), np.float64, seed=18).astype(">f8"))
    np.save(tmp_path / "in.npy", pixels)
    ok(capsys, tmp_path / "in.npy", tmp_path / "out.npy", "-k", ODD_TEXT)
    result = np.load(tmp_path / "out.npy")
    assert result.dtype == np.float64 and result.dtype.isnative
    np.testing.assert_allclose(result, oracle(pixels.astype(np.float64), ODD), rtol=1e-12, atol=1e-12)


def test_memory_limit_checked_before_loading(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "in.npy", np.ones((64, 64)))
    monkeypatch.setenv("TRUECONV_MEMORY_LIMIT", "1K")
    fail(capsys, tmp_path / "in.npy", tmp_path / "o.npy", "-k", "box:3", match="above the memory limit")


def test_option_conflicts(tmp_path, capsys, card):
    fail(capsys, card, tmp_path / "o.png", "-k", "box:3", "--fillvalue", "3", match="--fillvalue only applies")
    fail(capsys, card, tmp_path / "o.png", "-k", "box:3", "--chunks", "64", match="--chunks applies only to .zarr")


# --------------------------------------------------------------------------
# .zarr goes through trueconv.dask.filter_zarr
# --------------------------------------------------------------------------
def test_zarr_dispatch(tmp_path, capsys, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("trueconv.dask")
    fake.filter_zarr = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "trueconv.dask", fake)
    (tmp_path / "in.zarr").mkdir()
    ok(capsys, tmp_path / "in.zarr", tmp_path / "out.zarr", "-k", "gaussian:1", "--chunks", "2048",
       "--kind", "correlation", "--mode", "valid", "--boundary", "wrap", "--force")
    (args, kwargs), = calls
    assert args[0] == str(tmp_path / "in.zarr") and args[1] == str(tmp_path / "out.zarr")
    from trueconv.cli._kernels import gaussian_kernel
    np.testing.assert_array_equal(args[2], gaussian_kernel(1.0))
    assert kwargs == {"chunks": 2048, "mode": "valid", "boundary": "wrap", "kind": "correlation",
                      "overwrite": True, "progress": False}
    fail(capsys, tmp_path / "in.zarr", tmp_path / "out.npy", "-k", "box:3", match="both INPUT and OUTPUT")
    fail(capsys, tmp_path / "in.zarr", tmp_path / "o.zarr", "-k", "box:3", "--normalize", match="--normalize")
    fail(capsys, tmp_path / "in.zarr", tmp_path / "in.zarr", "-k", "box:3", match="is the input store")


def test_zarr_end_to_end(tmp_path, capsys):
    zarr = pytest.importorskip("zarr", reason="the dask extra (zarr) is not installed")
    pytest.importorskip("dask", reason="the dask extra is not installed")
    from trueconv.cli._kernels import gaussian_kernel

    pixels = rng_image((2, 37, 29), np.float64, seed=17)  # channels first: the last two axes are filtered
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=pixels.shape, chunks=(1, 16, 16), dtype="f8")
    source[:] = pixels
    ok(capsys, tmp_path / "in.zarr", tmp_path / "out.zarr", "-k", "gaussian:1.5", "--chunks", "16")
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    for channel in range(2):
        expected = scipy.signal.convolve2d(pixels[channel], gaussian_kernel(1.5), mode="same", boundary="symm")
        np.testing.assert_allclose(result[channel], expected, rtol=0, atol=1e-12)
    fail(capsys, tmp_path / "in.zarr", tmp_path / "out.zarr", "-k", "box:3", match="pass --force")
    fail(capsys, tmp_path / "in.zarr", tmp_path / "none" / "out.zarr", "-k", "box:3", match="output directory")


def test_zarr_without_adapter(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trueconv.dask", None)  # import fails as if not installed
    (tmp_path / "in.zarr").mkdir()
    fail(capsys, tmp_path / "in.zarr", tmp_path / "out.zarr", "-k", "box:3", match="needs trueconv.dask.filter_zarr")


# --------------------------------------------------------------------------
# the real executable: exit status, one line, no traceback
# --------------------------------------------------------------------------
def test_real_command_line(tmp_path, card):
    command = [sys.executable, "-m", "trueconv", "filter", str(card), str(tmp_path / "o.png"), "-k", "1,2;3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == ("trueconv filter: error: kernel '1,2;3': rows have different lengths "
                                   "[2, 1]; every row needs the same number of values")
    assert not (tmp_path / "o.png").exists()
