"""The worked examples from ../shared/seeds reproduce exactly.

The expected numbers are written here literally, copied from the documents
(not imported from trueconv._examples), so a wrong entry there cannot hide a
wrong result. Where a document printed an nn.Conv2d output, its random bias is
in the numbers (13.0554 = 13 + bias); those are reproduced with that bias.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss

import trueconv
from references import torch_conv
from trueconv._examples import SEED_EXAMPLES
from trueconv._spec import normalize_conv

MXNET_IMAGE = np.array([[1, 2, 2, 1, 0], [3, 3, 3, 3, 0], [3, 0, 0, 2, 2], [0, 3, 0, 3, 3],
                        [2, 2, 2, 3, 2]])
KERNEL_0_8 = np.arange(9).reshape(3, 3)
SQUARE = np.array([[0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0],
                   [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
SOBEL = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32)
ONE_TO_NINE = np.arange(1, 10, dtype=np.float32).reshape(3, 3)


def as_nchw(a: np.ndarray) -> np.ndarray:
    return a[np.newaxis, np.newaxis]


def conv2d_or_refusal(x, w, bias=None, *, algorithm: str, **params):
    """conv2d, or None after checking that a refusing algorithm says so clearly."""
    spec, _, _ = normalize_conv(x.shape, w.shape, None, 1, params.get("padding", 0), 1, 1,
                                "zeros", params.get("kind", "correlation"), "conv2d",
                                np.int64 if x.dtype.kind in "iu" else x.dtype)
    if trueconv.ALGORITHMS[algorithm].supports(spec) is None:
        return trueconv.conv2d(x, w, bias, algorithm=algorithm, **params)
    with pytest.raises(ValueError, match=rf"algorithm={algorithm!r} cannot serve this call"):
        trueconv.conv2d(x, w, bias, algorithm=algorithm, **params)
    return None


def assert_seed(actual: np.ndarray, expected, algorithm: str) -> None:
    """Exact for the exact algorithms; transform algorithms within float32 rounding."""
    if trueconv.ALGORITHMS[algorithm].exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, np.asarray(expected, dtype=actual.dtype), rtol=0,
                                   atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("algorithm", sorted(trueconv.ALGORITHMS))
def test_mxnet_5x5_kernel_0_to_8(algorithm) -> None:
    """ConvNet-dont-do-Conv (2017): MXNet printed [[60 56 52] [39 61 66] [54 78 82]]."""
    corr = conv2d_or_refusal(as_nchw(MXNET_IMAGE), as_nchw(KERNEL_0_8), algorithm=algorithm)
    if corr is None:
        return
    np.testing.assert_array_equal(corr[0, 0], [[60, 56, 52], [39, 61, 66], [54, 78, 82]])
    assert corr.dtype == MXNET_IMAGE.dtype  # integers in, exact integers out
    # the document's point: convolution is correlation with the kernel flipped (8..0)
    conv = trueconv.conv2d(as_nchw(MXNET_IMAGE), as_nchw(KERNEL_0_8), kind="convolution",
                           algorithm=algorithm)
    flipped = trueconv.conv2d(as_nchw(MXNET_IMAGE), as_nchw(KERNEL_0_8[::-1, ::-1]),
                              algorithm=algorithm)
    np.testing.assert_array_equal(conv, flipped)
    np.testing.assert_array_equal(conv[0, 0], ss.convolve2d(MXNET_IMAGE, KERNEL_0_8, "valid"))
    np.testing.assert_array_equal(conv[0, 0], [[76, 72, 52], [81, 75, 62], [42, 42, 54]])


def test_mxnet_example_through_signal_api() -> None:
    np.testing.assert_array_equal(trueconv.correlate2d(MXNET_IMAGE, KERNEL_0_8, "valid"),
                                  [[60, 56, 52], [39, 61, 66], [54, 78, 82]])
    np.testing.assert_array_equal(trueconv.correlate(MXNET_IMAGE, KERNEL_0_8, "valid"),
                                  [[60, 56, 52], [39, 61, 66], [54, 78, 82]])
    np.testing.assert_array_equal(trueconv.convolve(MXNET_IMAGE, KERNEL_0_8, "valid"),
                                  [[76, 72, 52], [81, 75, 62], [42, 42, 54]])


@pytest.mark.parametrize("algorithm", sorted(trueconv.ALGORITHMS))
def test_vertical_edge_square(algorithm) -> None:
    """'Performing Convolution (NOT cross-correlation) in pytorch': the two printed grids."""
    kernel = np.array([[-1, 1]], dtype=np.float32)
    corr = conv2d_or_refusal(as_nchw(SQUARE), as_nchw(kernel), algorithm=algorithm)
    if corr is None:
        return
    conv = trueconv.conv2d(as_nchw(SQUARE), as_nchw(kernel), kind="convolution",
                           algorithm=algorithm)
    edge = [0, 1, 0, 0, -1, 0]
    zero = [0] * 6
    assert_seed(corr[0, 0], [zero, edge, edge, edge, zero], algorithm)
    assert_seed(conv[0, 0], [zero] + [[-v for v in edge]] * 3 + [zero], algorithm)
    assert corr.shape == (1, 1, 5, 6) and corr.dtype == np.float32


@pytest.mark.parametrize("algorithm", sorted(trueconv.ALGORITHMS))
def test_sobel_padding_1_songho(algorithm) -> None:
    """'Convolution in Deep Learning' (2023): songho.ca's Sobel example, padding 1."""
    conv = conv2d_or_refusal(as_nchw(ONE_TO_NINE), as_nchw(SOBEL), padding=1,
                             kind="convolution", algorithm=algorithm)
    if conv is None:
        return
    # songho.ca's (true convolution) answer
    assert_seed(conv[0, 0], [[-13, -20, -17], [-18, -24, -18], [13, 20, 17]], algorithm)
    corr = trueconv.conv2d(as_nchw(ONE_TO_NINE), as_nchw(SOBEL), padding=1, algorithm=algorithm)
    assert_seed(corr[0, 0], [[13, 20, 17], [18, 24, 18], [-13, -20, -17]], algorithm)


def test_sobel_printed_numbers_with_their_random_bias() -> None:
    """The document printed nn.Conv2d outputs, whose bias was random: 0.0554 and -0.1509."""
    x = as_nchw(ONE_TO_NINE)
    corr = trueconv.conv2d(x, as_nchw(SOBEL), np.array([0.0554], np.float32), padding=1)
    np.testing.assert_array_equal(np.round(corr[0, 0], 4), np.array(
        [[13.0554, 20.0554, 17.0554], [18.0554, 24.0554, 18.0554],
         [-12.9446, -19.9446, -16.9446]], dtype=np.float32))
    flipped = SOBEL[::-1, ::-1]
    out = trueconv.conv2d(x, as_nchw(flipped), np.array([-0.1509], np.float32), padding=1)
    np.testing.assert_array_equal(np.round(out[0, 0], 4), np.array(
        [[-13.1509, -20.1509, -17.1509], [-18.1509, -24.1509, -18.1509],
         [12.8491, 19.8491, 16.8491]], dtype=np.float32))
    # ... and the same printed numbers come from kind="convolution" without a manual flip
    out2 = trueconv.conv2d(x, as_nchw(SOBEL), np.array([-0.1509], np.float32), padding=1,
                           kind="convolution")
    np.testing.assert_array_equal(out, out2)


def test_x_kernel_printed_numbers_truncated_with_bias() -> None:
    """The same document printed .type(torch.int) of an output with a random bias in [-1, 0).

    Without bias the correlation is [[4 3 4] [2 4 3] [2 3 4]]; truncation toward zero
    of (value + bias) gives the printed [[3 2 3] [1 3 2] [1 2 3]].
    """
    image = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0],
                      [0, 1, 1, 0, 0]], dtype=np.float32)
    kernel = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
    plain = trueconv.conv2d(as_nchw(image), as_nchw(kernel))
    np.testing.assert_array_equal(plain[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])
    for bias in (-0.9, -0.3, -0.0001):
        out = trueconv.conv2d(as_nchw(image), as_nchw(kernel), np.array([bias], np.float32))
        np.testing.assert_array_equal(np.trunc(out[0, 0]).astype(np.int32),
                                      [[3, 2, 3], [1, 3, 2], [1, 2, 3]])


def test_flip_example_3x3() -> None:
    """'Why are PyTorch convolutions implemented as cross-correlations?', example 1."""
    image = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)
    kernel = np.array([[0, 1], [-1, 0]], dtype=np.float32)
    corr = trueconv.conv2d(as_nchw(image), as_nchw(kernel))
    conv = trueconv.conv2d(as_nchw(image), as_nchw(kernel), kind="convolution")
    np.testing.assert_array_equal(corr[0, 0], [[-2, -2], [-2, -2]])
    np.testing.assert_array_equal(conv[0, 0], [[2, 2], [2, 2]])
    np.testing.assert_array_equal(corr, torch_conv(as_nchw(image), as_nchw(kernel)))


def test_examples_module_agrees_with_the_literals() -> None:
    """The demo prints trueconv._examples; its expectations must be the documents' numbers."""
    literal = {
        "5x5 image": [[60, 56, 52], [39, 61, 66], [54, 78, 82]],
        "vertical edge": [[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, -1, 0], [0, 1, 0, 0, -1, 0],
                          [0, 1, 0, 0, -1, 0], [0, 0, 0, 0, 0, 0]],
        "3x3 Sobel": [[13, 20, 17], [18, 24, 18], [-13, -20, -17]],
        "5x5 binary": [[4, 3, 4], [2, 4, 3], [2, 3, 4]],
    }
    seen = set()
    for example in SEED_EXAMPLES:
        key = next(k for k in literal if example.title.startswith(k))
        seen.add(key)
        np.testing.assert_array_equal(example.expected_correlation, literal[key])
        x, w = as_nchw(example.image), as_nchw(example.kernel)
        np.testing.assert_array_equal(trueconv.conv2d(x, w, padding=example.padding)[0, 0],
                                      example.expected_correlation)
        np.testing.assert_array_equal(
            trueconv.conv2d(x, w, padding=example.padding, kind="convolution")[0, 0],
            example.expected_convolution)
    assert seen == set(literal)
