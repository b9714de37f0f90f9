"""``trueconv explain``: the sliding-window picture of correlation against convolution.

For each output cell the drawing shows the (zero-padded) input grid with the
kernel window over it, each input value's kernel weight, the products, their
sum and the output filling in. Cross-correlation (what
``torch.nn.functional.conv2d`` computes) is on the left with the kernel in
blue; true convolution (what ``scipy.signal.convolve2d`` computes) is on the
right with the kernel in red, drawn flipped (rotated 180 degrees), because
that is the kernel convolution slides. The default example is the one from
"Convolutional Neural Networks don't actually perform convolution" (seeds).

The numbers come from a data model (:func:`explain`) built separately from
the drawing, so tests check what each frame shows without reading pixels.
Output sizes come from ``_spec.conv_output_size``, the same law as
:func:`trueconv.conv2d`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import CLIError

DEFAULT_IMAGE = "1,2,2,1,0;3,3,3,3,0;3,0,0,2,2;0,3,0,3,3;2,2,2,3,2"
DEFAULT_KERNEL = "0,1,2;3,4,5;6,7,8"
KINDS: tuple[Literal["correlation"], Literal["convolution"]] = ("correlation", "convolution")
TITLE_FRAMES = 1  # one title frame before the steps
# Everything is drawn cell by cell; beyond these sizes the picture stops teaching.
MAX_IMAGE_SIDE = 16
MAX_KERNEL_SIDE = 7
MAX_PADDING = 4
MAX_STRIDE = 4
MAX_STEPS = 144

BLUE, RED = (31, 94, 204), (200, 36, 36)
TINT = {"correlation": (214, 228, 250), "convolution": (250, 218, 218)}
INK = {"correlation": BLUE, "convolution": RED}
LIBRARY = {"correlation": "cross-correlation = torch.nn.functional.conv2d",
           "convolution": "convolution = scipy.signal.convolve2d (kernel flipped)"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="draw correlation and convolution step by step (animated GIF, PNG strip or HTML page)",
        description="Draw, for every output cell, the kernel window over the input, the "
        "products, the sum and the output filling in: cross-correlation (blue kernel, "
        "PyTorch's conv2d) beside true convolution (red, flipped kernel, SciPy's convolve2d).",
        epilog="Example: trueconv explain -o explain.gif; trueconv explain --kernel '1,0;0,-1' "
        "--png -o strip.png; trueconv explain --html explain.html",
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, metavar="MATRIX",
                        help=f"input grid, rows by ';' (default: the seeds' 5x5 {DEFAULT_IMAGE!r})")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, metavar="MATRIX",
                        help=f"kernel, rows by ';' (default {DEFAULT_KERNEL!r})")
    parser.add_argument("--padding", type=int, default=0, metavar="P", help="zero padding on every side")
    parser.add_argument("--stride", type=int, default=1, metavar="S", help="step of the window")
    parser.add_argument("-o", "--output", metavar="PATH", help="animated .gif (or .png strip)")
    parser.add_argument("--png", action="store_true", help="write a one-page PNG strip instead of a GIF")
    parser.add_argument("--html", metavar="PATH", help="write the interactive page (self-contained)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------
# data model
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    """What one side shows for one output cell.

    ``window`` is the top-left corner of the kernel in padded coordinates;
    ``kernel`` is the kernel *as applied* (flipped for convolution);
    ``output`` holds the results computed so far, NaN where not yet reached.
    """

    kind: str
    cell: tuple[int, int]
    window: tuple[int, int]
    kernel: np.ndarray
    values: np.ndarray
    products: np.ndarray
    total: float
    output: np.ndarray


@dataclass(frozen=True)
class Frame:
    """One picture: a title (no panels) or one step with a panel per side."""

    caption: str
    panels: tuple[Panel, ...] = ()

    @property
    def is_title(self) -> bool:
        return not self.panels


@dataclass(frozen=True)
class Explanation:
    """The whole explanation: inputs, padded grid, frames and final results."""

    image: np.ndarray
    kernel: np.ndarray
    padding: int
    stride: int
    padded: np.ndarray
    output_shape: tuple[int, int]
    frames: list[Frame] = field(repr=False)
    results: dict[str, np.ndarray] = field(repr=False)


def _check_limits(image: np.ndarray, kernel: np.ndarray, padding: int, stride: int) -> None:
    if max(image.shape) > MAX_IMAGE_SIDE:
        raise CLIError(f"explain draws every cell: --image is {image.shape[0]}x{image.shape[1]}, "
                       f"at most {MAX_IMAGE_SIDE} per side")
    if max(kernel.shape) > MAX_KERNEL_SIDE:
        raise CLIError(f"explain draws every cell: --kernel is {kernel.shape[0]}x{kernel.shape[1]}, "
                       f"at most {MAX_KERNEL_SIDE} per side")
    if not 0 <= padding <= MAX_PADDING:
        raise CLIError(f"--padding must be between 0 and {MAX_PADDING}, got {padding}")
    if not 1 <= stride <= MAX_STRIDE:
        raise CLIError(f"--stride must be between 1 and {MAX_STRIDE}, got {stride}")


def explain(image: np.ndarray, kernel: np.ndarray, padding: int = 0, stride: int = 1) -> Explanation:
    """Build the step-by-step model of correlation and convolution of two small grids.

    Parameters
    ----------
    image, kernel : ndarray
        2-D grids of real numbers.
    padding : int
        Zero padding on every side (PyTorch's ``padding``).
    stride : int
        Step of the window (PyTorch's ``stride``).

    Returns
    -------
    Explanation
        ``frames[0]`` is the title; then one frame per output cell in row-major
        order, each with a correlation and a convolution :class:`Panel`.
        ``results`` holds the two finished outputs, equal to
        ``trueconv.conv2d(..., kind=...)``.

    Examples
    --------
    >>> import numpy as np
    >>> from trueconv.cli.explain import explain
    >>> model = explain(np.array([[1, 2], [3, 4]]), np.array([[1, 0], [0, -1]]), padding=1)
    >>> model.output_shape, len(model.frames)
    ((3, 3), 10)
    >>> model.results["correlation"]
    array([[-1., -2.,  0.],
           [-3., -3.,  2.],
           [ 0.,  3.,  4.]])
    """
    from .._spec import conv_output_size

    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if image.ndim != 2 or kernel.ndim != 2:
        raise CLIError(f"explain needs 2-D grids, got image {image.shape} and kernel {kernel.shape}")
    _check_limits(image, kernel, padding, stride)
    padded = np.pad(image, padding)
    output_shape = tuple(conv_output_size(n, k, stride, 1) for n, k in zip(padded.shape, kernel.shape))
    if min(output_shape) < 1:
        raise CLIError(
            f"the {kernel.shape[0]}x{kernel.shape[1]} kernel does not fit the padded "
            f"{padded.shape[0]}x{padded.shape[1]} image: use a smaller kernel or more --padding"
        )
    if math.prod(output_shape) > MAX_STEPS:
        raise CLIError(f"explain draws one frame per output cell: {output_shape[0]}x{output_shape[1]} "
                       f"cells is more than {MAX_STEPS}; use a smaller image or a larger --stride")
    applied = {"correlation": kernel, "convolution": kernel[::-1, ::-1]}
    outputs = {kind: np.full(output_shape, np.nan) for kind in KINDS}
    kh, kw = kernel.shape
    frames = [Frame(caption=(
        f"image {image.shape[0]}x{image.shape[1]}, kernel {kh}x{kw}, padding {padding}, "
        f"stride {stride}: correlation slides the kernel as written (blue); convolution "
        f"slides it flipped, rotated 180 degrees (red)"))]
    for i in range(output_shape[0]):
        for j in range(output_shape[1]):
            top, left = i * stride, j * stride
            values = padded[top:top + kh, left:left + kw]
            panels = []
            for kind in KINDS:
                products = values * applied[kind]
                total = float(products.sum())
                outputs[kind][i, j] = total
                panels.append(Panel(kind, (i, j), (top, left), applied[kind], values.copy(),
                                    products, total, outputs[kind].copy()))
            frames.append(Frame(caption=f"output cell ({i}, {j})", panels=tuple(panels)))
    return Explanation(image, kernel, padding, stride, padded, output_shape, frames,
                       {kind: outputs[kind].copy() for kind in KINDS})


def format_number(value: float) -> str:
    """Integers without a decimal point, others with up to 3 decimals (``-0`` shown as ``0``)."""
    if math.isnan(value):
        return ""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------
class _Fonts:
    def __init__(self) -> None:
        from PIL import ImageFont

        self.cell = ImageFont.load_default(size=15)
        self.small = ImageFont.load_default(size=10)
        self.text = ImageFont.load_default(size=13)
        self.title = ImageFont.load_default(size=15)


def _text_width(draw: object, text: str, font: object) -> float:
    return draw.textlength(text, font=font)  # type: ignore[attr-defined]


def _cell_size(model: Explanation, fonts: _Fonts) -> int:
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    numbers = [format_number(v) for v in np.concatenate([model.padded.ravel(), model.kernel.ravel()])]
    widest = max(_text_width(draw, n, fonts.cell) for n in numbers)
    return int(max(34, widest + 14))


def _arithmetic_lines(panel: Panel) -> list[str]:
    lines = []
    for row_values, row_kernel in zip(panel.values, panel.kernel):
        # U+00B7: Pillow's bundled font has no multiplication sign.
        terms = [f"{format_number(v)}\u00b7{format_number(k)}" for v, k in zip(row_values, row_kernel)]
        lines.append(" + ".join(terms))
    lines[0] = "  " + lines[0]
    lines[1:] = ["+ " + line for line in lines[1:]]
    lines.append(f"= {format_number(panel.total)}")
    return lines


def _panel_size(model: Explanation, fonts: _Fonts, cell: int) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    hp, wp = model.padded.shape
    ho, wo = model.output_shape
    grids = wp * cell + 40 + wo * cell
    step = model.frames[-1].panels
    text = max(_text_width(draw, line, fonts.text) for p in step for line in _arithmetic_lines(p))
    heading = max(_text_width(draw, LIBRARY[k], fonts.title) for k in KINDS)
    width = int(max(grids, text, heading)) + 32
    height = 34 + max(hp, ho) * cell + 16 + 18 * (model.kernel.shape[0] + 1) + 16
    return width, height


def _draw_grid(draw: object, origin: tuple[int, int], values: np.ndarray, cell: int, fonts: _Fonts,
               fill: object = None, ink: tuple[int, int, int] = (30, 30, 30)) -> None:
    x0, y0 = origin
    for (r, c), value in np.ndenumerate(values):
        box = (x0 + c * cell, y0 + r * cell, x0 + (c + 1) * cell, y0 + (r + 1) * cell)
        colour = fill(r, c) if callable(fill) else (255, 255, 255)
        draw.rectangle(box, fill=colour, outline=(150, 150, 150))  # type: ignore[attr-defined]
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), format_number(value),  # type: ignore[attr-defined]
                  font=fonts.cell, fill=ink, anchor="mm")


def _draw_panel(image: object, origin: tuple[int, int], model: Explanation, panel: Panel,
                fonts: _Fonts, cell: int) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    ink, tint = INK[panel.kind], TINT[panel.kind]
    x0, y0 = origin[0] + 16, origin[1] + 8
    draw.text((x0, y0), LIBRARY[panel.kind], font=fonts.title, fill=ink)
    grid_y = y0 + 26
    p, (top, left), (kh, kw) = model.padding, panel.window, panel.kernel.shape
    hp, wp = model.padded.shape

    def input_fill(r: int, c: int) -> tuple[int, int, int]:
        if top <= r < top + kh and left <= c < left + kw:
            return tint
        inside = p <= r < hp - p and p <= c < wp - p
        return (255, 255, 255) if inside else (236, 236, 236)

    _draw_grid(draw, (x0, grid_y), model.padded, cell, fonts, input_fill)
    # The kernel weight each input value is multiplied by, in the corner (as the seeds' GIFs do).
    for (r, c), weight in np.ndenumerate(panel.kernel):
        bx, by = x0 + (left + c) * cell, grid_y + (top + r) * cell
        draw.text((bx + cell - 3, by + cell - 2), format_number(weight), font=fonts.small,
                  fill=ink, anchor="rd")
    draw.rectangle((x0 + left * cell, grid_y + top * cell, x0 + (left + kw) * cell,
                    grid_y + (top + kh) * cell), outline=ink, width=3)

    out_x = x0 + wp * cell + 40
    i, j = panel.cell

    def output_fill(r: int, c: int) -> tuple[int, int, int]:
        return tint if (r, c) == (i, j) else (255, 255, 255)

    _draw_grid(draw, (out_x, grid_y), panel.output, cell, fonts, output_fill, ink=ink)
    draw.rectangle((out_x + j * cell, grid_y + i * cell, out_x + (j + 1) * cell,
                    grid_y + (i + 1) * cell), outline=ink, width=3)
    arrow_y = grid_y + cell / 2
    draw.line((out_x - 32, arrow_y, out_x - 10, arrow_y), fill=ink, width=2)
    draw.polygon([(out_x - 8, arrow_y), (out_x - 15, arrow_y - 5), (out_x - 15, arrow_y + 5)], fill=ink)
    text_y = grid_y + max(hp, model.output_shape[0]) * cell + 12
    for n, line in enumerate(_arithmetic_lines(panel)):
        draw.text((x0, text_y + 18 * n), line, font=fonts.text, fill=(30, 30, 30) if n < kh else ink)


def _draw_title(size: tuple[int, int], model: Explanation, fonts: _Fonts, cell: int) -> object:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((16, 10), "Correlation vs convolution: the same window, the kernel flipped",
              font=fonts.title, fill=(30, 30, 30))
    x, y = 16, 44
    items = [("image", model.image, None), ("kernel K (correlation)", model.kernel, BLUE),
             ("K flipped (convolution)", model.kernel[::-1, ::-1], RED)]
    for label, values, ink in items:
        draw.text((x, y), label, font=fonts.text, fill=ink or (30, 30, 30))
        tint = (lambda r, c, t=TINT["correlation" if ink == BLUE else "convolution"]: t) if ink else None
        _draw_grid(draw, (x, y + 22), values, cell, fonts, tint, ink=ink or (30, 30, 30))
        x += max(values.shape[1] * cell, int(_text_width(draw, label, fonts.text))) + 36
    lines = _wrap(model.frames[0].caption, draw, fonts.text, size[0] - 32)
    base = y + 22 + max(model.image.shape[0], model.kernel.shape[0]) * cell + 14
    for n, line in enumerate(lines):
        draw.text((16, base + 18 * n), line, font=fonts.text, fill=(30, 30, 30))
    return image


def _wrap(text: str, draw: object, font: object, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and _text_width(draw, candidate, font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current] if current else lines


def render_frames(model: Explanation) -> list[object]:
    """Draw every frame of ``model`` as a Pillow RGB image (title first)."""
    from PIL import Image, ImageDraw

    fonts = _Fonts()
    cell = _cell_size(model, fonts)
    panel_w, panel_h = _panel_size(model, fonts, cell)
    title_w = 16 + sum(max(a.shape[1] * cell, 170) + 36 for a in (model.image, model.kernel, model.kernel))
    width = max(2 * panel_w, title_w)
    height = max(panel_h + 30, 44 + 22 + max(model.image.shape[0], model.kernel.shape[0]) * cell + 80)
    images = []
    for frame in model.frames:
        if frame.is_title:
            images.append(_draw_title((width, height), model, fonts, cell))
            continue
        image = Image.new("RGB", (width, height), (255, 255, 255))
        for n, panel in enumerate(frame.panels):
            _draw_panel(image, (n * panel_w, 24), model, panel, fonts, cell)
        draw = ImageDraw.Draw(image)
        draw.text((16, 6), frame.caption, font=fonts.text, fill=(90, 90, 90))
        draw.line((panel_w, 30, panel_w, height - 8), fill=(200, 200, 200), width=1)
        images.append(image)
    return images


def write_gif(model: Explanation, path: Path) -> None:
    """Animated GIF, one frame per model frame, small enough for a README.

    All frames share one 31-colour palette, and every frame after the first
    stores only the pixels that changed (the rest is the transparent index 31,
    drawn over the previous frame: disposal 1), like gifsicle's optimisation.
    That takes the seed example from about 135 KB to about 75 KB, losslessly
    with respect to the quantized frames.
    """
    from PIL import Image

    images = render_frames(model)
    width, height = images[0].size  # type: ignore[attr-defined]
    sample = Image.new("RGB", (width, 2 * height))
    sample.paste(images[0], (0, 0))
    sample.paste(images[-1], (0, height))
    palette_image = sample.quantize(31, dither=Image.Dither.NONE)
    indices = [np.asarray(im.quantize(palette=palette_image, dither=Image.Dither.NONE))  # type: ignore[attr-defined]
               for im in images]
    transparent = 31
    palette = palette_image.getpalette()[: 3 * 31] + [255, 0, 255]
    frames = []
    for n, current in enumerate(indices):
        delta = current.copy()
        if n:
            delta[current == indices[n - 1]] = transparent
        frame = Image.fromarray(delta, mode="P")
        frame.putpalette(palette)
        frames.append(frame)
    durations = [2500] * TITLE_FRAMES + [900] * (len(frames) - TITLE_FRAMES)
    durations[-1] = 3000
    # Frames are distinct (the output fills one cell per step), so Pillow keeps all of them.
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=0, transparency=transparent, disposal=1, optimize=False)


def write_strip(model: Explanation, handle_path: Path) -> None:
    """One page: the title on top, then the steps tiled like the output grid."""
    from PIL import Image

    images = render_frames(model)
    title, steps = images[0], images[1:]
    columns = min(model.output_shape[1], 3)
    rows = -(-len(steps) // columns)
    w, h = steps[0].size  # type: ignore[attr-defined]
    page = Image.new("RGB", (w * columns, title.size[1] + h * rows), (255, 255, 255))  # type: ignore[attr-defined]
    page.paste(title, (0, 0))
    for n, step in enumerate(steps):
        page.paste(step, ((n % columns) * w, title.size[1] + (n // columns) * h))  # type: ignore[attr-defined]
    page.save(handle_path, format="PNG", optimize=True)


# --------------------------------------------------------------------------
# HTML page
# --------------------------------------------------------------------------
def html_page(image: str = DEFAULT_IMAGE, kernel: str = DEFAULT_KERNEL, padding: int = 0,
              stride: int = 1) -> str:
    """Return the self-contained interactive page with these starting values.

    The page (``trueconv/data/explain.html``) computes both results itself in
    JavaScript; ``?image=...&kernel=...&padding=...&stride=...`` in its URL
    overrides the values given here.
    """
    from importlib.resources import files

    template = files("trueconv").joinpath("data/explain.html").read_text(encoding="utf-8")
    defaults = json.dumps({"image": image, "kernel": kernel, "padding": padding, "stride": stride})
    # "</" cannot end the <script> block early once escaped.
    return template.replace("__TRUECONV_DEFAULTS__", defaults.replace("</", "<\\/"))


# --------------------------------------------------------------------------
# command
# --------------------------------------------------------------------------
def _matrix_text(matrix: np.ndarray) -> str:
    return ";".join(",".join(format_number(v) for v in row) for row in matrix)


def run(args: argparse.Namespace) -> int:
    from ._io import atomic_write, check_target
    from ._kernels import parse_matrix

    if not args.output and not args.html:
        raise CLIError("nothing to write: give -o OUT.gif (or --png -o OUT.png) and/or --html OUT.html")
    image = parse_matrix(args.image, "--image")
    kernel = parse_matrix(args.kernel, "--kernel")
    model = explain(image, kernel, args.padding, args.stride)

    targets = []
    if args.output:
        target = Path(args.output)
        suffix = target.suffix.lower()
        as_png = args.png or suffix == ".png"
        if suffix != (".png" if as_png else ".gif"):
            raise CLIError(f"-o {args.output!r}: use a .png name with --png, a .gif name otherwise")
        targets.append((target, write_strip if as_png else write_gif))
    if args.html:
        target = Path(args.html)
        if target.suffix.lower() not in (".html", ".htm"):
            raise CLIError(f"--html {args.html!r}: use a .html name")
        page = html_page(_matrix_text(image), _matrix_text(kernel), args.padding, args.stride)
        targets.append((target, lambda _model, path, text=page: path.write_text(text, encoding="utf-8")))
    for target, _ in targets:
        check_target(target, args.force)
    for target, writer in targets:
        atomic_write(target, lambda path, writer=writer: writer(model, path), args.force)
        print(f"wrote {target}")
    for kind in KINDS:
        rows = [" ".join(f"{format_number(v):>6}" for v in row) for row in model.results[kind]]
        print(f"{kind}:\n" + "\n".join(rows))
    return 0
