"""Kernel SPEC parser for the command line: named kernels, files and inline matrices.

A SPEC is one of

* a named kernel: ``sobel-x``, ``sobel-y``, ``prewitt-x``, ``prewitt-y``,
  ``laplacian``, ``sharpen``, ``emboss``, ``box:K``, ``gaussian:SIGMA``,
  ``motion:LENGTH:ANGLE``;
* a file: ``.npy`` (read without pickles, size checked before loading),
  ``.txt`` or ``.csv`` (one row per line, numbers separated by commas or
  spaces, ``#`` starts a comment);
* an inline matrix: rows separated by ``;``, numbers by ``,`` (or spaces),
  e.g. ``"1,0,-1;2,0,-2;1,0,-1"``.

Every kernel comes back as a 2-D C-contiguous float64 array with finite values.
The named kernels are written the way ``--kind convolution`` (the default)
applies them: ``sobel-x`` is ``[[1, 0, -1], [2, 0, -2], [1, 0, -1]]``, whose
true convolution is the derivative along x (bright on the right is positive),
as ``scipy.ndimage.sobel(axis=1)`` computes it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["parse_kernel", "parse_matrix", "gaussian_kernel", "motion_kernel", "NAMED_KERNELS"]

# Larger kernels are not a filter any more but a typo (and would be slow to print).
MAX_KERNEL_SIDE = 1025
MAX_KERNEL_FILE_BYTES = 16 * 2**20

_FIXED = {
    "sobel-x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "sobel-y": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    "prewitt-x": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "prewitt-y": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
    "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
}


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text!r} is not a finite number")
    return value


def _box(params: list[str], spec: str) -> np.ndarray:
    (size_text,) = _arity(params, 1, spec, "box:K")
    size = _positive_int(size_text, spec, "K")
    return np.full((size, size), 1.0 / (size * size))


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Return the normalized 2-D Gaussian that ``scipy.ndimage.gaussian_filter`` applies.

    The radius is ``int(truncate * sigma + 0.5)`` and the 1-D weights are
    ``exp(-x**2 / (2 sigma**2))`` normalized to sum 1, as in
    ``scipy.ndimage._filters._gaussian_kernel1d``; the 2-D kernel is their
    outer product (a separable Gaussian), so it sums to 1 too.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, positive.
    truncate : float, optional
        Cut the kernel off at this many standard deviations (default 4.0).

    Returns
    -------
    ndarray
        float64, shape ``(2r + 1, 2r + 1)``.

    Examples
    --------
    >>> from trueconv.cli._kernels import gaussian_kernel
    >>> k = gaussian_kernel(0.5)
    >>> k.shape, round(float(k.sum()), 12)
    ((5, 5), 1.0)
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"gaussian_kernel: sigma must be a positive number, got {sigma!r}")
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    weights /= weights.sum()
    return np.outer(weights, weights)


def _gaussian(params: list[str], spec: str) -> np.ndarray:
    (sigma_text,) = _arity(params, 1, spec, "gaussian:SIGMA")
    sigma = _number(sigma_text, f"kernel {spec!r} SIGMA")
    if sigma <= 0:
        raise ValueError(f"kernel {spec!r}: SIGMA must be positive, got {sigma_text}")
    if int(4.0 * sigma + 0.5) * 2 + 1 > MAX_KERNEL_SIDE:
        raise ValueError(f"kernel {spec!r}: SIGMA {sigma_text} gives a kernel wider than "
                         f"{MAX_KERNEL_SIDE} pixels")
    return gaussian_kernel(sigma)


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """Return a normalized line ``length`` pixels long at ``angle`` degrees.

    ``length`` sample points one pixel apart, centred on the kernel's centre,
    run along the direction ``angle`` degrees counter-clockwise from the
    horizontal (rows grow downwards, so a positive angle rises to the right).
    Each point is spread over its four neighbouring pixels by bilinear
    weights, so lines at any angle stay anti-aliased and the kernel sums to 1.
    The kernel is symmetric under a half turn, so convolution and correlation
    with it agree.

    Examples
    --------
    >>> from trueconv.cli._kernels import motion_kernel
    >>> motion_kernel(3, 0) * 3
    array([[1., 1., 1.]])
    >>> motion_kernel(3, 90) * 3
    array([[1.],
           [1.],
           [1.]])
    """
    if length < 1:
        raise ValueError(f"motion_kernel: length must be a positive integer, got {length!r}")
    theta = math.radians(angle)
    # Snap the tiny cos/sin residue of multiples of 90 degrees, so axis lines stay 1 pixel wide.
    dx, dy = round(math.cos(theta), 12), round(math.sin(theta), 12)
    t = np.arange(length, dtype=np.float64) - (length - 1) / 2
    cols, rows = t * dx, -t * dy
    radius_c = math.ceil(float(np.max(np.abs(cols))) - 1e-9)
    radius_r = math.ceil(float(np.max(np.abs(rows))) - 1e-9)
    kernel = np.zeros((2 * radius_r + 1, 2 * radius_c + 1))
    for r, c in zip(rows + radius_r, cols + radius_c):
        r0, c0 = math.floor(r + 1e-9), math.floor(c + 1e-9)
        fr, fc = max(r - r0, 0.0), max(c - c0, 0.0)
        for rr, wr in ((r0, 1 - fr), (r0 + 1, fr)):
            for cc, wc in ((c0, 1 - fc), (c0 + 1, fc)):
                if wr * wc > 1e-12:
                    kernel[rr, cc] += wr * wc
    return kernel / kernel.sum()


def _motion(params: list[str], spec: str) -> np.ndarray:
    length_text, angle_text = _arity(params, 2, spec, "motion:LENGTH:ANGLE")
    length = _positive_int(length_text, spec, "LENGTH")
    if length > MAX_KERNEL_SIDE:
        raise ValueError(f"kernel {spec!r}: LENGTH must be at most {MAX_KERNEL_SIDE}, got {length}")
    return motion_kernel(length, _number(angle_text, f"kernel {spec!r} ANGLE"))


_PARAMETRIC: dict[str, Callable[[list[str], str], np.ndarray]] = {
    "box": _box, "gaussian": _gaussian, "motion": _motion,
}
NAMED_KERNELS = (*_FIXED, "box:K", "gaussian:SIGMA", "motion:LENGTH:ANGLE")


def _arity(params: list[str], count: int, spec: str, form: str) -> list[str]:
    if len(params) != count or not all(p.strip() for p in params):
        raise ValueError(f"kernel {spec!r}: expected the form {form}")
    return [p.strip() for p in params]


def _positive_int(text: str, spec: str, name: str) -> int:
    value = _number(text, f"kernel {spec!r} {name}")
    if value != int(value) or value < 1:
        raise ValueError(f"kernel {spec!r}: {name} must be a positive integer, got {text}")
    if value > MAX_KERNEL_SIDE:
        raise ValueError(f"kernel {spec!r}: {name} must be at most {MAX_KERNEL_SIDE}, got {text}")
    return int(value)


def parse_matrix(text: str, what: str = "matrix") -> np.ndarray:
    """Parse ``"1,0,-1;2,0,-2"`` (rows by ``;`` or newlines, numbers by ``,`` or spaces).

    Returns a 2-D float64 array; rows must all have the same length and every
    entry must be a finite number. ``what`` names the value in error messages.

    Examples
    --------
    >>> from trueconv.cli._kernels import parse_matrix
    >>> parse_matrix("1,0,-1;2,0,-2")
    array([[ 1.,  0., -1.],
           [ 2.,  0., -2.]])
    >>> parse_matrix("0.5 0.5")
    array([[0.5, 0.5]])
    """
    lines = [line.split("#", 1)[0].strip() for line in re.split(r"[;\n]", text)]
    rows = [[_number(item, what) for item in re.split(r"[,\s]+", line) if item] for line in lines if line]
    if not rows:
        raise ValueError(f"{what} is empty: expected rows separated by ';' and numbers by ',', "
                         f"like '1,0,-1;2,0,-2;1,0,-1'")
    lengths = [len(row) for row in rows]
    if len(set(lengths)) != 1:
        raise ValueError(f"{what}: rows have different lengths {lengths}; every row needs the same "
                         f"number of values")
    return np.array(rows, dtype=np.float64)


def _check_kernel(kernel: np.ndarray, source: str) -> np.ndarray:
    if kernel.ndim != 2:
        raise ValueError(f"kernel {source}: expected a 2-D matrix, got shape {kernel.shape}")
    if kernel.size == 0:
        raise ValueError(f"kernel {source}: the matrix is empty (shape {kernel.shape})")
    if max(kernel.shape) > MAX_KERNEL_SIDE:
        raise ValueError(f"kernel {source}: shape {kernel.shape} exceeds {MAX_KERNEL_SIDE} per side")
    if kernel.dtype.kind not in "iuf":
        raise ValueError(f"kernel {source}: expected real numbers, got dtype {kernel.dtype}")
    kernel = np.ascontiguousarray(kernel, dtype=np.float64)
    if not np.all(np.isfinite(kernel)):
        raise ValueError(f"kernel {source}: contains NaN or infinity")
    return kernel


def _read_kernel_file(path: Path) -> np.ndarray:
    from ._io import read_npy  # the safe .npy reader (magic, size, no pickles)

    if not path.is_file():
        raise ValueError(f"kernel file {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    size = path.stat().st_size
    if size > MAX_KERNEL_FILE_BYTES:
        raise ValueError(f"kernel file {str(path)!r} is {size} bytes; a text kernel is limited to "
                         f"{MAX_KERNEL_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"kernel file {str(path)!r} is not UTF-8 text") from None
    # In a file, newlines separate rows; ';' is still accepted.
    return parse_matrix(text, f"kernel file {str(path)!r}")


def parse_kernel(spec: str) -> np.ndarray:
    """Return the 2-D float64 kernel a ``--kernel SPEC`` names.

    Parameters
    ----------
    spec : str
        A named kernel (see the module docstring), a ``.npy``/``.txt``/``.csv``
        path, or an inline matrix like ``"1,0,-1;2,0,-2;1,0,-1"``.

    Returns
    -------
    ndarray
        2-D, float64, C-contiguous, finite.

    Raises
    ------
    ValueError
        Unknown name, malformed numbers or rows, missing or unreadable file.

    Examples
    --------
    >>> from trueconv.cli._kernels import parse_kernel
    >>> parse_kernel("sobel-x")
    array([[ 1.,  0., -1.],
           [ 2.,  0., -2.],
           [ 1.,  0., -1.]])
    >>> parse_kernel("box:2")
    array([[0.25, 0.25],
           [0.25, 0.25]])
    >>> parse_kernel("1,2;3,4").shape
    (2, 2)
    """
    text = spec.strip()
    if not text:
        raise ValueError("kernel SPEC is empty")
    name, *params = text.split(":")
    key = name.strip().lower()
    if key in _FIXED:
        if params:
            raise ValueError(f"kernel {spec!r}: {key} takes no parameters")
        return np.array(_FIXED[key], dtype=np.float64)
    if key in _PARAMETRIC:
        return _check_kernel(_PARAMETRIC[key](params, spec), repr(spec))
    if Path(text).suffix.lower() in (".npy", ".txt", ".csv"):
        return _check_kernel(_read_kernel_file(Path(text)), repr(text))
    if re.fullmatch(r"[A-Za-z][\w-]*(:.*)?", text) and text.lower() not in ("nan", "inf", "infinity"):
        raise ValueError(
            f"unknown kernel {spec!r}: use one of {', '.join(NAMED_KERNELS)}, a .npy/.txt/.csv "
            f"file, or an inline matrix like '1,0,-1;2,0,-2;1,0,-1'"
        )
    return _check_kernel(parse_matrix(text, f"kernel {spec!r}"), repr(spec))
