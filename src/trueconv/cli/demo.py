"""``trueconv demo``: the seed examples, correlation beside convolution, and a filtered image."""

from __future__ import annotations

import argparse
import time

import numpy as np

SHADES = " .:-=+*#%@"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the worked examples and filter the bundled test image",
        description="Show cross-correlation (what deep-learning frameworks call convolution) "
        "beside true convolution on the seed examples, then filter a bundled image.",
    )
    parser.add_argument("--algorithm", default="auto", help="algorithm for the image filter")
    parser.set_defaults(func=run)


def side_by_side(left: np.ndarray, right: np.ndarray, titles: tuple[str, str]) -> str:
    """Format two small 2-D arrays next to each other."""
    def rows(a: np.ndarray) -> list[str]:
        return [" ".join(f"{v:>5g}" for v in row) for row in a]

    lrows, rrows = rows(left), rows(right)
    width = max(len(r) for r in lrows + [titles[0]])
    lines = [f"  {titles[0]:<{width}}   |   {titles[1]}"]
    lines += [f"  {a:<{width}}   |   {b}" for a, b in zip(lrows, rrows)]
    return "\n".join(lines)


def ascii_art(image: np.ndarray, width: int = 48) -> str:
    """Render a 2-D array as characters, darkest to brightest."""
    step = max(1, image.shape[1] // width)
    small = image[:: step * 2, ::step].astype(np.float64)
    low, high = small.min(), small.max()
    scaled = np.zeros_like(small) if high == low else (small - low) / (high - low)
    index = np.minimum((scaled * len(SHADES)).astype(int), len(SHADES) - 1)
    return "\n".join("  " + "".join(SHADES[i] for i in row) for row in index)


def run(args: argparse.Namespace) -> int:
    import trueconv
    from trueconv._api import conv_with_plan
    from trueconv._examples import SEED_EXAMPLES, sample_image

    print("trueconv demo: cross-correlation (PyTorch's 'conv') vs true convolution (SciPy's)\n")
    for example in SEED_EXAMPLES:
        x = example.image[np.newaxis, np.newaxis]
        w = example.kernel[np.newaxis, np.newaxis]
        corr = trueconv.conv2d(x, w, padding=example.padding)[0, 0]
        conv = trueconv.conv2d(x, w, padding=example.padding, kind="convolution")[0, 0]
        ok = np.array_equal(corr, example.expected_correlation) and np.array_equal(
            conv, example.expected_convolution
        )
        print(f"{example.title}  [{example.source}]")
        print(side_by_side(example.kernel, np.flip(example.kernel), ("kernel", "kernel as convolution applies it (flipped)")))
        print(side_by_side(corr, conv, ("kind='correlation' (= torch F.conv2d)", "kind='convolution' (= scipy.signal.convolve2d)")))
        print(f"  matches the numbers in the source: {'yes' if ok else 'NO'}")
        if example.source_note:
            print(f"  ({example.source_note})")
        print()

    image = sample_image().astype(np.float32)
    sobel_x = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)

    def filter_card() -> tuple[np.ndarray, object, float]:
        start = time.perf_counter()
        result, plan_used = conv_with_plan(
            image[np.newaxis, np.newaxis], sobel_x[np.newaxis, np.newaxis], padding="same",
            padding_mode="replicate", kind="convolution", algorithm=args.algorithm, fn="demo",
        )
        return result, plan_used, time.perf_counter() - start

    # The first call may compile Numba loops (once per machine; cached on disk), so the
    # demo reports it apart from the steady-state time.
    _, _, first = filter_card()
    edges, plan, elapsed = filter_card()
    print(f"bundled test card {image.shape[0]}x{image.shape[1]} (uint8):")
    print(ascii_art(image))
    print("\n|Sobel-x| edges (true convolution, padding='same', padding_mode='replicate'):")
    print(ascii_art(np.abs(edges[0, 0])))
    print(f"\nalgorithm: {plan.algorithm} ({plan.reason})")
    print(f"time: {elapsed * 1e3:.2f} ms (first call {first * 1e3:.2f} ms, including any one-time "
          f"compilation of trueconv's Numba loops)")
    return 0
