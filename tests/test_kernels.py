"""Kernel SPEC parser (trueconv.cli._kernels): named kernels against independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from trueconv.cli import CLIError
from trueconv.cli._kernels import NAMED_KERNELS, motion_kernel, parse_kernel, parse_matrix


def _ndimage_kernel(sigma: float) -> np.ndarray:
    """The weights scipy.ndimage.gaussian_filter applies: its response to a unit impulse."""
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros((2 * radius + 1, 2 * radius + 1))
    impulse[radius, radius] = 1.0
    return ndi.gaussian_filter(impulse, sigma, mode="constant", truncate=4.0)


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 1.7, 2.0, 3.25])
def test_gaussian_matches_scipy_ndimage(sigma):
    kernel = parse_kernel(f"gaussian:{sigma}")
    expected = _ndimage_kernel(sigma)
    assert kernel.dtype == np.float64
    assert kernel.shape == expected.shape == (2 * int(4 * sigma + 0.5) + 1,) * 2
    np.testing.assert_allclose(kernel, expected, rtol=1e-12, atol=1e-15)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-13)


def test_sobel_x_convolution_is_ndimage_sobel():
    # Written for --kind convolution: the true convolution is the x derivative ndimage computes.
    import trueconv

    image = np.random.default_rng(3).random((9, 11))
    ours = trueconv.convolve2d(image, parse_kernel("sobel-x"), mode="same", boundary="symm")
    np.testing.assert_allclose(ours, ndi.sobel(image, axis=1, mode="reflect"), rtol=1e-12, atol=1e-12)
    ours_y = trueconv.convolve2d(image, parse_kernel("sobel-y"), mode="same", boundary="symm")
    np.testing.assert_allclose(ours_y, ndi.sobel(image, axis=0, mode="reflect"), rtol=1e-12, atol=1e-12)
    ours_p = trueconv.convolve2d(image, parse_kernel("prewitt-x"), mode="same", boundary="symm")
    np.testing.assert_allclose(ours_p, ndi.prewitt(image, axis=1, mode="reflect"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("laplacian", [[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    ("sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    ("emboss", [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
    ("prewitt-y", [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]),
    ("SOBEL-X", [[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    ("box:3", np.full((3, 3), 1 / 9)),
    ("box:1", [[1.0]]),
])
def test_fixed_kernels(name, expected):
    kernel = parse_kernel(name)
    assert kernel.dtype == np.float64 and kernel.flags.c_contiguous
    np.testing.assert_array_equal(kernel, np.asarray(expected, dtype=np.float64))


@pytest.mark.parametrize("length, angle", [(1, 0), (5, 0), (5, 90), (7, 45), (4, 30), (9, 135), (6, -60)])
def test_motion_is_a_normalized_line(length, angle):
    kernel = parse_kernel(f"motion:{length}:{angle}")
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert (kernel >= 0).all()
    # half-turn symmetric: convolution and correlation agree
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)
    # its centre of mass is the centre, and its direction is the requested angle:
    # the principal axis of the weights (rows grow downwards, angle counter-clockwise).
    rows, cols = np.indices(kernel.shape)
    rc, cc = (kernel.shape[0] - 1) / 2, (kernel.shape[1] - 1) / 2
    assert (kernel * rows).sum() == pytest.approx(rc) and (kernel * cols).sum() == pytest.approx(cc)
    if length > 2:
        dx, dy = cols - cc, rc - rows
        cov = np.array([[(kernel * dx * dx).sum(), (kernel * dx * dy).sum()],
                        [(kernel * dx * dy).sum(), (kernel * dy * dy).sum()]])
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        direction = eigenvectors[:, -1]
        found = np.degrees(np.arctan2(direction[1], direction[0])) % 180
        assert min(abs(found - angle % 180), 180 - abs(found - angle % 180)) < 1.0
        # length: the spread along the line is that of `length` points one pixel apart
        expected_var = ((np.arange(length) - (length - 1) / 2) ** 2).mean()
        assert eigenvalues[-1] == pytest.approx(expected_var, rel=0.25)


def test_motion_axis_aligned_is_exact():
    np.testing.assert_array_equal(motion_kernel(5, 0), np.full((1, 5), 0.2))
    np.testing.assert_array_equal(motion_kernel(3, 90), np.full((3, 1), 1 / 3))
    np.testing.assert_array_equal(motion_kernel(3, 180), np.full((1, 3), 1 / 3))
    diagonal = motion_kernel(3, 45)
    np.testing.assert_allclose(diagonal[[2, 1, 0], [0, 1, 2]].sum(), 1 / 3 + diagonal[1, 1], atol=0.35)
    assert diagonal[0, 2] > diagonal[0, 0]  # rises to the right


@pytest.mark.parametrize("text, expected", [
    ("1,0,-1;2,0,-2;1,0,-1", [[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    ("1 2; 3 4", [[1, 2], [3, 4]]),
    ("0.5,-1e-3", [[0.5, -0.001]]),
    ("7", [[7]]),
    (" 1, 2 ;\n 3, 4 ", [[1, 2], [3, 4]]),
])
def test_inline_matrices(text, expected):
    np.testing.assert_array_equal(parse_kernel(text), np.asarray(expected, dtype=np.float64))


@pytest.mark.parametrize("spec, match", [
    ("1,2;3", "rows have different lengths"),
    ("1,a;2,3", "'a' is not a number"),
    ("1,nan", "not a finite number"),
    ("1,inf;2,3", "not a finite number"),
    ("", "empty"),
    (";;", "empty"),
    ("blur", "unknown kernel 'blur'"),
    ("gaussian", "expected the form gaussian:SIGMA"),
    ("gaussian:0", "SIGMA must be positive"),
    ("gaussian:-1", "SIGMA must be positive"),
    ("gaussian:abc", "'abc' is not a number"),
    ("gaussian:1000", "wider than"),
    ("box:0", "K must be a positive integer"),
    ("box:2.5", "K must be a positive integer"),
    ("box:3:4", "expected the form box:K"),
    ("motion:5", "motion:LENGTH:ANGLE"),
    ("motion:0:10", "LENGTH must be a positive integer"),
    ("motion:5:x", "'x' is not a number"),
    ("sobel-x:3", "takes no parameters"),
    ("missing.npy", "does not exist"),
])
def test_bad_specs(spec, match):
    with pytest.raises((ValueError, CLIError), match=match):
        parse_kernel(spec)


def test_named_list_is_complete():
    for name in NAMED_KERNELS:
        spec = name.replace(":K", ":3").replace(":SIGMA", ":1").replace(":LENGTH:ANGLE", ":5:30")
        assert parse_kernel(spec).ndim == 2


def test_kernel_files(tmp_path):
    kernel = np.array([[1.5, -2.0, 0.25], [0.0, 3.0, 1.0]])
    np.save(tmp_path / "k.npy", kernel)
    np.savetxt(tmp_path / "k.csv", kernel, delimiter=",")
    np.savetxt(tmp_path / "k.txt", kernel)
    (tmp_path / "c.txt").write_text("# a comment\n1 2  # trailing\n3 4\n")
    for name in ("k.npy", "k.csv", "k.txt"):
        np.testing.assert_array_equal(parse_kernel(str(tmp_path / name)), kernel)
    np.testing.assert_array_equal(parse_kernel(str(tmp_path / "c.txt")), [[1, 2], [3, 4]])
    np.save(tmp_path / "i.npy", np.array([[1, 2], [3, 4]], dtype=np.int16))
    assert parse_kernel(str(tmp_path / "i.npy")).dtype == np.float64


def test_bad_kernel_files(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    np.save(tmp_path / "complex.npy", np.ones((2, 2), dtype=complex))
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "obj.npy").write_bytes(b"")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {"three.npy": "2-D", "complex.npy": "real numbers", "nan.npy": "NaN", "ragged.csv": "different lengths",
             "binary.txt": "UTF-8", "obj.npy": "not a .npy file", "pickled.npy": "Python objects"}
    for name, match in cases.items():
        with pytest.raises((ValueError, CLIError), match=match):
            parse_kernel(str(tmp_path / name))


def test_parse_matrix_names_what():
    with pytest.raises(ValueError, match="--image: 'q' is not a number"):
        parse_matrix("1,q", "--image")
