"""Regenerate the README pictures: a synthetic photo, filtered by ``trueconv filter`` itself.

Run from the repository root:  .venv/bin/python docs/images/make_images.py

Only ``before.png`` is drawn here (deterministically, with Pillow); every other
picture is written by the ``trueconv`` command, with the exact commands the
README shows.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COMMANDS = [
    "trueconv filter docs/images/before.png docs/images/sobel-x.png --kernel sobel-x --normalize --force",
    "trueconv filter docs/images/before.png docs/images/gaussian-2.png --kernel gaussian:2 --force",
    "trueconv filter docs/images/before.png docs/images/motion.png --kernel motion:15:30 --force",
    "trueconv explain -o docs/images/explain.gif --force",
]


def draw_before(path: Path) -> None:
    """A 160x240 RGB scene: a colour gradient, shapes with hard edges, stripes and fine noise."""
    height, width = 160, 240
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    base = np.stack([70 + 120 * x, 60 + 80 * y, 170 - 90 * x], axis=-1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 90, 80), fill=(235, 225, 90))
    draw.ellipse((120, 40, 210, 130), fill=(30, 30, 40))
    draw.polygon([(30, 150), (80, 95), (130, 150)], fill=(220, 80, 60))
    for n in range(6):
        draw.rectangle((150 + 14 * n, 138, 156 + 14 * n, 156), fill=(250, 250, 250))
    draw.line((0, 0, width, 100), fill=(255, 255, 255), width=3)
    noise = np.random.default_rng(2026).normal(0, 4, (height, width, 3))
    pixels = np.clip(np.asarray(image).astype(float) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, optimize=True)


def main() -> int:
    root = HERE.parent.parent
    draw_before(HERE / "before.png")
    executable = Path(sys.executable).with_name("trueconv")
    for command in COMMANDS:
        argv = shlex.split(command)
        print("$", command)
        subprocess.run([str(executable), *argv[1:]], cwd=root, check=True)
    for picture in sorted(HERE.glob("*.[pg][ni][gf]")):
        size = picture.stat().st_size
        print(f"{picture.name}: {size // 1024} KiB")
        if size > 100 * 1024:
            print(f"  {picture.name} is over 100 KiB", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
