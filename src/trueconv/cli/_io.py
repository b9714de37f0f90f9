"""Reading and writing the files ``trueconv filter`` accepts, defensively.

Everything a file declares is checked before anything is allocated
(EDGE_CASES #70-#78): ``.npy`` magic bytes, header, ``prod(shape) * itemsize``
against the bytes that follow and against the memory limit, never pickles;
images against Pillow's decompression-bomb cap (``PIL.Image.MAX_IMAGE_PIXELS``)
before decoding; truncated or corrupt files become one error naming the file.

Decoded layout: an image is ``(H, W)`` (grayscale) or ``(H, W, C)`` (colour
channels last) in its stored integer or float type, with the alpha channel,
if any, kept apart so the filter never touches it. Conversions are explicit:
palette images become RGB or RGBA, bilevel becomes 8-bit gray, CMYK and YCbCr
become RGB, and the EXIF orientation is applied (the output is what a viewer
showed). 16-bit colour PNG (RGB, RGBA, gray+alpha) goes through pypng, because
Pillow silently reduces it to 8 bits; 16-bit TIFF of any layout goes through
tifffile; both keep 16 bits.

Outputs are written to a temporary file in the destination directory and
moved into place with ``os.replace``, so a failed run leaves nothing behind
and an existing file is either untouched or wholly replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import CLIError

__all__ = [
    "Picture", "read_npy", "read_input", "output_format", "check_paths", "check_target", "write_output",
    "atomic_write", "FORMATS",
]

# Output format by file suffix.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
           ".npy": "NPY"}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Picture:
    """Decoded pixels: ``pixels`` is (H, W) or (H, W, C); ``alpha`` is (H, W) or None."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str

    @property
    def description(self) -> str:
        height, width = self.pixels.shape[:2]
        channels = 1 if self.pixels.ndim == 2 else self.pixels.shape[2]
        layout = {1: "gray", 3: "RGB"}.get(channels, f"{channels}-channel")
        alpha = "+alpha" if self.alpha is not None else ""
        return f"{self.format} {width}x{height} {layout}{alpha} {self.pixels.dtype}"


def _name(path: Path) -> str:
    return repr(str(path))


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse ``nbytes`` above trueconv's memory limit, before allocating them."""
    from .._memory import format_bytes, get_memory_limit

    limit = get_memory_limit()
    if nbytes > limit:
        raise CLIError(
            f"{what} needs {format_bytes(nbytes)}, above the memory limit of {format_bytes(limit)} "
            f"(set TRUECONV_MEMORY_LIMIT to raise it)"
        )


def _check_pixels(path: Path, height: int, width: int) -> None:
    """Pillow's decompression-bomb cap, applied to every image format before decoding."""
    from PIL import Image

    cap = Image.MAX_IMAGE_PIXELS
    if cap is not None and height * width > cap:
        raise CLIError(
            f"{_name(path)} declares {width}x{height} = {height * width} pixels, above the "
            f"decompression-bomb limit of {cap} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        )


# --------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------
def read_npy(path: Path | str) -> np.ndarray:
    """Read a ``.npy`` file safely: magic, header and sizes checked first; never pickles.

    Raises
    ------
    CLIError
        Not an .npy file (``.npz`` archives are named as such), object or
        structured dtype, a shape whose data the file does not hold
        (truncated, or a forged header), or data above the memory limit.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CLIError(f"{_name(path)} does not exist") from None
    with handle:
        magic = handle.read(len(_NPY_MAGIC))
        if magic.startswith(_ZIP_MAGIC):
            raise CLIError(f"{_name(path)} is a zip archive (.npz?); .npz is not supported: save "
                           f"the one array you want with numpy.save as .npy")
        if magic != _NPY_MAGIC:
            raise CLIError(f"{_name(path)} is not a .npy file (no \\x93NUMPY magic bytes)")
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:  # 2.0 and 3.0 share the layout (3.0 allows UTF-8 in field names)
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, EOFError, SyntaxError) as exc:
            raise CLIError(f"{_name(path)}: invalid .npy header ({exc})") from None
        if dtype.hasobject:
            raise CLIError(f"{_name(path)} holds Python objects (dtype {dtype}); trueconv never "
                           f"loads pickled data")
        if dtype.names is not None or dtype.subdtype is not None:
            raise CLIError(f"{_name(path)} has structured dtype {dtype}; expected plain numbers")
        declared = math.prod(shape) * dtype.itemsize
        available = os.fstat(handle.fileno()).st_size - handle.tell()
        if declared > available:
            raise CLIError(
                f"{_name(path)} is truncated or its header is forged: shape {shape} of {dtype} "
                f"needs {declared} bytes but the file holds {available} after the header"
            )
        check_allocation(declared, f"{_name(path)} (shape {shape}, {dtype})")
        handle.seek(0)
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CLIError(f"{_name(path)}: {str(exc).splitlines()[0]}") from None


def _npy_picture(path: Path) -> Picture:
    array = read_npy(path)
    if array.ndim not in (2, 3) or array.size == 0:
        raise CLIError(f"{_name(path)}: expected a non-empty 2-D (H, W) or 3-D (H, W, C) array, "
                       f"got shape {array.shape}")
    if array.dtype.kind not in "iufc":
        raise CLIError(f"{_name(path)}: expected numbers, got dtype {array.dtype}")
    if array.dtype.byteorder == ">":  # keep native order for everything downstream
        array = array.astype(array.dtype.newbyteorder("="))
    return Picture(array, None, "NPY")


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def _png_is_16bit_colour(path: Path) -> bool:
    """IHDR bit depth 16 with colour type 2 (RGB), 4 (gray+alpha) or 6 (RGBA)."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    return head.startswith(_PNG_MAGIC) and len(head) >= 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _split_alpha(array: np.ndarray, has_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not has_alpha:
        return array, None
    colour = array[..., :-1]
    return (colour[..., 0] if colour.shape[-1] == 1 else colour).copy(), array[..., -1].copy()


def _pillow_picture(path: Path) -> Picture:
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in ("PNG", "JPEG", "MPO"):
                    raise CLIError(f"{_name(path)}: unsupported image format {image.format} "
                                   f"(supported: PNG, JPEG, TIFF, .npy, .zarr)")
                width, height = image.size
                _check_pixels(path, height, width)
                if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":
                    raise CLIError(f"{_name(path)} has {image.n_frames} frames; only single-frame "
                                   f"images are supported")
                if image.format == "PNG" and _png_is_16bit_colour(path):
                    return _png16_picture(path)
                image.load()
                format = "JPEG" if image.format == "MPO" else image.format
                return _from_pillow(path, ImageOps.exif_transpose(image), format)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CLIError(f"{_name(path)}: refused as a possible decompression bomb ({exc})") from None
    except CLIError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # UnidentifiedImageError, "image file is truncated", broken chunks and CRCs...
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(f"cannot decode {_name(path)}: {message}") from None


def _pypng() -> object:
    try:
        import png
    except ImportError:
        raise CLIError("16-bit colour PNG needs pypng: pip install 'trueconv[images]'") from None
    return png


def _png16_picture(path: Path) -> Picture:
    """A 16-bit colour PNG, decoded by pypng (Pillow would keep only 8 bits per channel)."""
    png = _pypng()

    try:
        with open(path, "rb") as handle:  # pypng's filename= form leaves the file open
            width, height, rows, info = png.Reader(file=handle).asDirect()
            planes = info["planes"]
            array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError, EOFError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(f"cannot decode {_name(path)}: {message}") from None
    array = array.reshape(height, width, planes)
    if info["greyscale"] and not info["alpha"]:
        array = array[..., 0]
    return Picture(*_split_alpha(array, bool(info["alpha"])), format="PNG")


def _write_png16(temporary: Path, data: np.ndarray) -> None:
    """Write uint16 ``(H, W, C)`` data (gray+alpha, RGB or RGBA) as a 16-bit PNG with pypng."""
    png = _pypng()

    height, width, planes = data.shape
    writer = png.Writer(width=width, height=height, greyscale=planes in (1, 2),
                        alpha=planes in (2, 4), bitdepth=16)
    with open(temporary, "wb") as handle:
        writer.write(handle, data.reshape(height, width * planes))


def _from_pillow(path: Path, image: object, format: str) -> Picture:
    mode = image.mode  # type: ignore[attr-defined]
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info  # type: ignore[attr-defined]
        image, mode = image.convert("RGBA" if transparent else "RGB"), ("RGBA" if transparent else "RGB")  # type: ignore[attr-defined]
    elif mode == "1":
        image, mode = image.convert("L"), "L"  # type: ignore[attr-defined]
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image, mode = image.convert("RGB"), "RGB"  # type: ignore[attr-defined]
    elif mode in ("La", "RGBa"):
        mode = mode.upper()
        image = image.convert(mode)  # type: ignore[attr-defined]
    if mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F"):
        raise CLIError(f"{_name(path)}: unsupported image mode {mode}")
    array = np.asarray(image)
    if mode.startswith("I;16"):
        array = array.astype(np.uint16)  # native byte order
    return Picture(*_split_alpha(array, mode in ("LA", "RGBA")), format=format)


def _tiff_picture(path: Path) -> Picture:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1 or len(tif.series) != 1:
                raise CLIError(f"{_name(path)} has {len(tif.pages)} pages; only single-image TIFF "
                               f"files are supported")
            page, series = tif.pages[0], tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            if axes not in ("YX", "YXS", "SYX"):
                raise CLIError(f"{_name(path)}: unsupported TIFF layout {axes} {shape}; expected "
                               f"a single 2-D grayscale or colour image")
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            _check_pixels(path, height, width)
            check_allocation(math.prod(shape) * dtype.itemsize, f"{_name(path)} (shape {shape})")
            if dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype == np.float16:
                raise CLIError(f"{_name(path)}: unsupported TIFF sample type {dtype}")
            photometric = getattr(page.photometric, "name", str(page.photometric))
            if photometric not in ("MINISBLACK", "RGB"):
                raise CLIError(f"{_name(path)}: unsupported TIFF photometric {photometric} "
                               f"(expected MINISBLACK or RGB)")
            extras = len(page.extrasamples or ())
            if extras > 1:
                raise CLIError(f"{_name(path)} has {extras} extra samples; at most one (alpha) "
                               f"is supported")
            array = series.asarray()
    except CLIError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, EOFError, IndexError, KeyError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(f"cannot decode {_name(path)}: {message}") from None
    if axes == "SYX":
        array = np.moveaxis(array, 0, -1)
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Picture(*_split_alpha(array, extras == 1 and array.ndim == 3), format="TIFF")


def read_input(path: Path | str) -> Picture:
    """Decode an input file by its content (not its name): .npy, TIFF, PNG or JPEG."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{_name(path)} does not exist")
    if path.is_dir():
        raise CLIError(f"{_name(path)} is a directory, not an image or .npy file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        raise CLIError(f"{_name(path)} is empty")
    if head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGIC) or path.suffix.lower() == ".npy":
        return _npy_picture(path)
    if head[:4] in _TIFF_MAGICS:
        return _tiff_picture(path)
    return _pillow_picture(path)


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def output_format(path: Path | str) -> str:
    """Return 'PNG', 'JPEG', 'TIFF' or 'NPY' from the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(set(FORMATS) | {".zarr"}))
        raise CLIError(f"cannot tell the output format of {_name(Path(path))}: use one of {known}")
    return FORMATS[suffix]


def check_paths(source: Path, target: Path, force: bool) -> None:
    """Refuse a missing input, an output over the input, a missing directory or a silent overwrite."""
    if not source.exists():
        raise CLIError(f"{_name(source)} does not exist")
    if target.exists() and os.path.samefile(source, target):
        raise CLIError(f"output {_name(target)} is the input file; refusing to overwrite it")
    check_target(target, force)


def check_target(target: Path, force: bool) -> None:
    """Refuse an output in a missing or read-only directory, a directory, or a silent overwrite."""
    if target.exists() or target.is_symlink():
        if target.is_dir():
            raise CLIError(f"output {_name(target)} is a directory")
        if not force:
            raise CLIError(f"output {_name(target)} exists; pass --force to overwrite it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"output directory {_name(parent)} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"output directory {_name(parent)} is not writable")


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A fresh temp file next to ``target`` (same filesystem, so os.replace is atomic); removed on failure."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(target: Path, write: Callable[[Path], None], force: bool) -> None:
    """Run ``write(temporary_path)``, then move the result onto ``target`` in one step."""
    with _temporary_beside(target) as temporary:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        if not force and (target.exists() or target.is_symlink()):
            # Someone created it while we computed: still never overwrite without --force.
            raise CLIError(f"output {_name(target)} exists; pass --force to overwrite it")
        os.replace(temporary, target)


def _stack(picture: Picture) -> np.ndarray:
    if picture.alpha is None:
        return picture.pixels
    colour = picture.pixels if picture.pixels.ndim == 3 else picture.pixels[..., np.newaxis]
    return np.concatenate([colour, picture.alpha[..., np.newaxis]], axis=-1)


def check_writable(format: str, dtype: np.dtype, channels: int, has_alpha: bool, target: Path) -> None:
    """Refuse, before any work, a result the output format cannot hold without loss."""
    name = _name(target)
    if format == "NPY":
        return
    if dtype.kind == "c":
        raise CLIError(f"{format} cannot store complex values; write {name} as .npy instead")
    if format == "JPEG":
        if dtype != np.uint8:
            raise CLIError(f"JPEG stores 8 bits per channel but the result is {dtype}: pass "
                           f"--output-dtype uint8 or write .png/.tif")
        if has_alpha:
            raise CLIError("JPEG cannot store the alpha channel: write .png or .tif")
        if channels not in (1, 3):
            raise CLIError(f"JPEG stores 1 or 3 channels, the result has {channels}")
    if format == "PNG":
        if dtype not in (np.uint8, np.uint16):
            raise CLIError(f"PNG stores uint8 or uint16, but the result is {dtype}: pass "
                           f"--output-dtype uint8 or uint16, or write .tif/.npy")
        if channels not in (1, 3):
            raise CLIError(f"PNG stores 1 or 3 colour channels, the result has {channels}")
    if format == "TIFF":
        if dtype.kind not in "iuf":
            raise CLIError(f"TIFF cannot store {dtype}")
        if channels not in (1, 3):
            raise CLIError(f"TIFF output supports 1 or 3 colour channels, the result has {channels}")


def write_output(target: Path, format: str, picture: Picture, force: bool) -> None:
    """Encode ``picture`` as ``format`` and move it onto ``target`` atomically."""
    def write(temporary: Path) -> None:
        if format == "NPY":
            with open(temporary, "wb") as handle:
                np.save(handle, _stack(picture), allow_pickle=False)
        elif format == "TIFF":
            import tifffile

            data = _stack(picture)
            rgb = picture.pixels.ndim == 3
            tifffile.imwrite(
                temporary, data, photometric="rgb" if rgb else "minisblack",
                extrasamples=("unassalpha",) if picture.alpha is not None else None,
                planarconfig="contig" if data.ndim == 3 else None,
            )
        elif format == "PNG" and picture.pixels.dtype == np.uint16 and _stack(picture).ndim == 3:
            _write_png16(temporary, _stack(picture))  # Pillow cannot write 16-bit colour PNG
        else:
            from PIL import Image

            data = _stack(picture)
            image = Image.fromarray(data)  # uint8 -> L/LA/RGB/RGBA, uint16 (H, W) -> I;16
            options = {"quality": 95} if format == "JPEG" else {}
            image.save(temporary, format=format, **options)

    atomic_write(target, write, force)
