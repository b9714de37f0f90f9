"""``trueconv filter``: filter an image or array file with a kernel, convolution by default.

Each colour channel is filtered on its own with :func:`trueconv.convolve2d`
(``--kind convolution``) or :func:`trueconv.correlate2d` (``--kind
correlation``), SciPy's ``mode``/``boundary``/``fillvalue`` semantics, in
float64 (the kernel is float64, and NumPy promotion does the rest). The alpha
channel is not filtered: it follows the geometry of the result (cropped for
``valid``, extended by the boundary rule for ``full``, transparent beyond the
edge for ``fill``).

Type rules, applied after filtering:

* integer output (the input's integer type by default, or ``--output-dtype``):
  rounded half to even and clipped to the type's range; between unsigned
  depths the values are rescaled (uint16 to uint8 divides by 257);
* ``--normalize``: the result's finite min..max over all colour channels is
  mapped onto the whole output range (0..1 for float output);
* float output keeps the float64 result's values (float32 rounds once).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import CLIError

OUTPUT_DTYPES = ("uint8", "uint16", "float32", "float64")
ALGORITHMS = ("auto", "direct", "fft")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter",
        help="filter an image, .npy or .zarr file with a kernel (true convolution by default)",
        description="Filter INPUT with a kernel and write OUTPUT. Formats: PNG, JPEG, TIFF "
        "(8/16 bit, gray, RGB, RGBA; alpha is kept, not filtered), .npy (2-D, or 3-D with "
        "channels last) and .zarr (chunked through trueconv.dask; the last two axes are the "
        "image, leading axes such as channels are filtered independently). The output format "
        "follows OUTPUT's suffix.",
        epilog="Kernels: sobel-x, sobel-y, prewitt-x, prewitt-y, laplacian, sharpen, emboss, "
        "box:K, gaussian:SIGMA, motion:LENGTH:ANGLE, a .npy/.txt/.csv file, or an inline matrix "
        "such as '1,0,-1;2,0,-2;1,0,-1'. Example: trueconv filter photo.png edges.png "
        "--kernel sobel-x --normalize",
    )
    parser.add_argument("input", metavar="INPUT", help="image (PNG, JPEG, TIFF), .npy or .zarr")
    parser.add_argument("output", metavar="OUTPUT", help="output file (.png, .jpg, .tif, .npy, .zarr)")
    parser.add_argument("--kernel", "-k", required=True, metavar="SPEC", help="kernel SPEC (see below)")
    parser.add_argument("--kind", choices=("convolution", "correlation"), default="convolution",
                        help="true convolution (flipped kernel, default) or cross-correlation")
    parser.add_argument("--mode", choices=("same", "valid", "full"), default="same",
                        help="output size: same as the input (default), valid (kernel fully "
                        "inside) or full")
    parser.add_argument("--boundary", choices=("fill", "wrap", "symm"), default="symm",
                        help="how the image extends beyond its edges: symm (mirror, default: no "
                        "dark frame), wrap (periodic) or fill (--fillvalue)")
    parser.add_argument("--fillvalue", type=float, default=0.0, metavar="V",
                        help="value outside the image for --boundary fill (default 0)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="auto",
                        help="auto (planner picks, default), direct (exact sum, what "
                        "trueconv.convolve2d runs) or fft")
    parser.add_argument("--normalize", action="store_true",
                        help="rescale the result's min..max to the output type's full range")
    parser.add_argument("--output-dtype", choices=OUTPUT_DTYPES, default=None,
                        help="output sample type (default: the input's); float types only for "
                        ".npy, .tif and .zarr")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    parser.add_argument("--chunks", type=int, default=None, metavar="N",
                        help="chunk size for .zarr input/output (Dask)")
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------
# the numeric core (no files): testable on arrays
# --------------------------------------------------------------------------
def filter_channels(
    pixels: np.ndarray, kernel: np.ndarray, kind: str, mode: str, boundary: str,
    fillvalue: float, algorithm: str,
) -> np.ndarray:
    """Filter every channel of a (H, W) or (H, W, C) array; return float64 (or complex)."""
    import trueconv
    from .._signal import _signal

    def one(channel: np.ndarray) -> np.ndarray:
        if algorithm == "direct":
            function = trueconv.convolve2d if kind == "convolution" else trueconv.correlate2d
            return function(channel, kernel, mode=mode, boundary=boundary, fillvalue=fillvalue)
        # Same call as convolve2d/correlate2d, with the planner allowed to choose (FFT for
        # large kernels): convolve2d itself always sums directly, as SciPy's does.
        fn = "convolve2d" if kind == "convolution" else "correlate2d"
        return _signal(channel, kernel, mode, algorithm, kind, fn, boundary, fillvalue,
                       correlate2d_rules=kind == "correlation")

    if pixels.ndim == 2:
        return one(pixels)
    return np.stack([one(pixels[..., c]) for c in range(pixels.shape[2])], axis=-1)


def follow_geometry(alpha: np.ndarray, kernel_shape: tuple[int, int], kind: str, mode: str,
                    boundary: str) -> np.ndarray:
    """Crop or extend ``alpha`` exactly as ``mode`` moves the filtered pixels.

    In 'same' mode output pixel (i, j) sits on input pixel (i, j). Relative to
    it, 'valid' drops the ``before`` pads and 'full' adds ``k - 1 - before``
    more, where ``before`` is the 'same' pad from ``_spec.signal_pad_widths``
    (mirrored for correlate2d, as SciPy's correlate2d is convolve2d of the
    flipped kernel).
    """
    from .._padding import pad_spatial
    from .._spec import signal_pad_widths

    if mode == "same":
        return alpha
    same = [signal_pad_widths(k, "same", mirrored=kind == "correlation") for k in kernel_shape]
    if mode == "valid":
        index = tuple(slice(before, before + n - k + 1)
                      for (before, _), n, k in zip(same, alpha.shape, kernel_shape))
        return alpha[index]
    extra = [(k - 1 - before, k - 1 - after) for (before, after), k in zip(same, kernel_shape)]
    # Beyond the image edge a 'fill' boundary is transparent; wrap/symm extend alpha like colour.
    return pad_spatial(alpha, extra, boundary, 0)


def convert(values: np.ndarray, source: np.dtype, target: np.dtype, normalize: bool,
            bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Turn the float64 result into ``target`` by the type rules in the module docstring."""
    if values.dtype.kind == "c":
        if normalize or target.kind != "c":
            raise CLIError(f"the result is complex; it can only be written as {source} .npy "
                           f"(no --normalize or --output-dtype)")
        return values.astype(target)
    values = values.astype(np.float64, copy=False)
    if normalize:
        low, high = bounds if bounds is not None else _finite_range(values)
        span = high - low
        scaled = np.zeros_like(values) if span == 0 else (values - low) / span
        values = scaled * np.iinfo(target).max if target.kind in "iu" else scaled
    elif target.kind in "u" and source.kind == "u" and target != source:
        values = values * (np.iinfo(target).max / np.iinfo(source).max)
    if target.kind in "iu":
        if np.isnan(values).any():
            raise CLIError(f"the result contains NaN, which {target} cannot hold: write float "
                           f"(.npy or .tif with --output-dtype float32/float64)")
        info = np.iinfo(target)
        return np.clip(np.rint(values), info.min, info.max).astype(target)
    return values.astype(target)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _output_dtype(requested: str | None, source: np.dtype, format: str) -> np.dtype:
    if requested is not None:
        target = np.dtype(requested)
        if target.kind == "f" and format in ("PNG", "JPEG"):
            raise CLIError(f"--output-dtype {requested} needs .npy or .tif output; {format} stores "
                           f"integers only")
        if source.kind == "c":
            raise CLIError(f"the input is complex ({source}); --output-dtype cannot apply")
        return target
    if source.kind in "iuf" and source.itemsize > 8:
        raise CLIError(f"input dtype {source} is not supported; save as float64")
    return source


def _check_kernel_fits(image_shape: tuple[int, int], kernel_shape: tuple[int, int], mode: str) -> None:
    if mode == "valid" and any(k > n for k, n in zip(kernel_shape, image_shape)):
        raise CLIError(
            f"the kernel ({kernel_shape[0]}x{kernel_shape[1]}) is larger than the image "
            f"({image_shape[0]}x{image_shape[1]}), so --mode valid has no output: use --mode same or full"
        )


def _run_zarr(args: argparse.Namespace, kernel: np.ndarray) -> int:
    source, target = str(args.input).rstrip("/"), str(args.output).rstrip("/")
    if not (source.endswith(".zarr") and target.endswith(".zarr")):
        raise CLIError("zarr filtering reads one .zarr store and writes another: both INPUT and "
                       "OUTPUT must end in .zarr")
    unsupported = [flag for flag, used in (
        ("--normalize", args.normalize), ("--output-dtype", args.output_dtype is not None),
        ("--fillvalue", args.fillvalue != 0), ("--algorithm", args.algorithm != "auto")) if used]
    if unsupported:
        raise CLIError(f"{', '.join(unsupported)} cannot be used with .zarr stores")
    if args.chunks is not None and args.chunks < 1:
        raise CLIError(f"--chunks must be a positive integer, got {args.chunks}")
    if Path(source).resolve() == Path(target).resolve():
        raise CLIError(f"output {target!r} is the input store; refusing to overwrite it")
    if not Path(source).exists():
        raise CLIError(f"{source!r} does not exist")
    if Path(target).exists() and not args.force:
        raise CLIError(f"output {target!r} exists; pass --force to overwrite it")
    if not Path(target).resolve().parent.is_dir():
        raise CLIError(f"output directory {str(Path(target).parent)!r} does not exist")
    try:
        from trueconv.dask import filter_zarr
    except ImportError as exc:
        raise CLIError(f".zarr filtering needs trueconv.dask.filter_zarr with dask and zarr "
                       f"installed (pip install 'trueconv[dask]'): {exc}") from None
    # A progress bar only for a person watching: scripts and logs get the one summary line.
    written = filter_zarr(source, target, kernel, chunks=args.chunks, mode=args.mode,
                          boundary=args.boundary, kind=args.kind, overwrite=args.force,
                          progress=sys.stderr.isatty())
    shape = getattr(written, "shape", "?")
    print(f"wrote {target} (zarr {shape}; {args.kind} with a {kernel.shape[0]}x{kernel.shape[1]} "
          f"kernel over the last two axes, mode {args.mode}, boundary {args.boundary})")
    return 0


def run(args: argparse.Namespace) -> int:
    from ._io import (Picture, check_allocation, check_paths, check_writable, output_format,
                      read_input, write_output)
    from ._kernels import parse_kernel

    if args.boundary != "fill" and args.fillvalue != 0:
        raise CLIError(f"--fillvalue only applies with --boundary fill (got --boundary {args.boundary})")
    kernel = parse_kernel(args.kernel)
    if str(args.input).rstrip("/").endswith(".zarr") or str(args.output).rstrip("/").endswith(".zarr"):
        return _run_zarr(args, kernel)
    if args.chunks is not None:
        raise CLIError("--chunks applies only to .zarr input and output")

    source, target = Path(args.input), Path(args.output)
    format = output_format(target)
    check_paths(source, target, args.force)
    start = time.perf_counter()
    picture = read_input(source)
    pixels = picture.pixels
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    _check_kernel_fits((height, width), kernel.shape, args.mode)
    dtype = _output_dtype(args.output_dtype, pixels.dtype, format)
    if dtype.kind == "c" and format != "NPY":
        raise CLIError(f"the input is complex ({pixels.dtype}); write .npy")
    check_writable(format, dtype, channels, picture.alpha is not None, target)

    from .._spec import conv_output_size, signal_pad_widths

    out_shape = [conv_output_size(n + sum(signal_pad_widths(k, args.mode)), k, 1, 1)
                 for n, k in zip((height, width), kernel.shape)]
    # float64 result per channel, the stacked result, and one padded channel in flight.
    itemsize = 16 if dtype.kind == "c" or pixels.dtype.kind == "c" else 8
    check_allocation(3 * int(np.prod(out_shape)) * channels * itemsize, f"filtering {source}")

    result = filter_channels(pixels, kernel, args.kind, args.mode, args.boundary, args.fillvalue,
                             args.algorithm)
    alpha = picture.alpha
    if alpha is not None:
        alpha = follow_geometry(alpha, kernel.shape, args.kind, args.mode, args.boundary)
        alpha = convert(alpha.astype(np.float64), alpha.dtype, dtype, normalize=False)
    out = Picture(convert(result, pixels.dtype, dtype, args.normalize), alpha, format)
    write_output(target, format, out, args.force)
    elapsed = time.perf_counter() - start
    print(f"wrote {target} ({out.description}; {args.kind} with a {kernel.shape[0]}x"
          f"{kernel.shape[1]} kernel, mode {args.mode}, boundary {args.boundary}) in {elapsed:.2f} s")
    return 0
