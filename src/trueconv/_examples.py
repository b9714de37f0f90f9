"""The worked examples from the documents trueconv grew from (shared/seeds).

Each entry holds the input, the kernel, the call's parameters and the numbers
the source printed, so the demo can show them and the tests can pin them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SeedExample:
    title: str
    source: str
    image: np.ndarray
    kernel: np.ndarray
    padding: int = 0
    # What the source printed for the deep-learning operator (cross-correlation),
    # and for true convolution where the source shows it.
    expected_correlation: np.ndarray = field(default=None)  # type: ignore[assignment]
    expected_convolution: np.ndarray = field(default=None)  # type: ignore[assignment]
    # How the source's printout relates to the numbers above, when it is not literally them
    # (an nn.Conv2d layer adds a random bias the author did not set).
    source_note: str = ""


SEED_EXAMPLES = (
    SeedExample(
        title="5x5 image, kernel 0..8 (MXNet prints the correlation)",
        source="ConvNet-dont-do-Conv (2017)",
        image=np.array([[1, 2, 2, 1, 0], [3, 3, 3, 3, 0], [3, 0, 0, 2, 2], [0, 3, 0, 3, 3], [2, 2, 2, 3, 2]]),
        kernel=np.arange(9).reshape(3, 3),
        expected_correlation=np.array([[60, 56, 52], [39, 61, 66], [54, 78, 82]]),
        expected_convolution=np.array([[76, 72, 52], [81, 75, 62], [42, 42, 54]]),
    ),
    SeedExample(
        title="vertical edge [-1, 1] on a square",
        source="Performing Convolution (NOT cross-correlation) in pytorch",
        image=np.array([[0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0],
                        [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32),
        kernel=np.array([[-1, 1]], dtype=np.float32),
        expected_correlation=np.array([[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, -1, 0], [0, 1, 0, 0, -1, 0],
                                       [0, 1, 0, 0, -1, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32),
        expected_convolution=np.array([[0, 0, 0, 0, 0, 0], [0, -1, 0, 0, 1, 0], [0, -1, 0, 0, 1, 0],
                                       [0, -1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32),
    ),
    SeedExample(
        title="3x3 Sobel on 1..9 with padding 1 (songho.ca example)",
        source="Convolution in Deep Learning (2023)",
        image=np.arange(1, 10, dtype=np.float32).reshape(3, 3),
        kernel=np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32),
        padding=1,
        expected_correlation=np.array([[13, 20, 17], [18, 24, 18], [-13, -20, -17]], dtype=np.float32),
        expected_convolution=np.array([[-13, -20, -17], [-18, -24, -18], [13, 20, 17]], dtype=np.float32),
        source_note="the source printed 13.0554, 20.0554, ... and -13.1509, ...: these numbers "
        "plus the random bias of a fresh nn.Conv2d (0.0554, then -0.1509)",
    ),
    SeedExample(
        title="5x5 binary image, symmetric X kernel (both kinds agree)",
        source="Convolution in Deep Learning (2023)",
        image=np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]),
        kernel=np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]]),
        expected_correlation=np.array([[4, 3, 4], [2, 4, 3], [2, 3, 4]]),
        expected_convolution=np.array([[4, 3, 4], [2, 4, 3], [2, 3, 4]]),
        source_note="the source printed [[3 2 3] [1 3 2] [1 2 3]]: these numbers plus a random "
        "nn.Conv2d bias in [-1, 0), truncated by .type(torch.int)",
    ),
)


def sample_image() -> np.ndarray:
    """The small grayscale test card that ships with the package (uint8, 64 x 96)."""
    from importlib.resources import files

    with files("trueconv").joinpath("data/testcard.npy").open("rb") as handle:
        return np.load(handle, allow_pickle=False)
