"""Image filtering (1024x1024) and 1-D signals: trueconv vs SciPy, NumPy and OpenCV."""

from __future__ import annotations

import os
import sys

import numpy as np
import scipy.ndimage
import scipy.signal

import trueconv
from trueconv.cli.bench import FILTER_KERNELS, SIGNAL_TAPS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._runner import main, skip_unless  # noqa: E402


class ImageFilter:
    """'same'-mode 2-D convolution of a 1024x1024 image."""

    params = [list(FILTER_KERNELS), ["float32", "float64"]]
    param_names = ["kernel", "dtype"]
    timeout = 300

    def setup(self, kernel: int, dtype: str) -> None:
        rng = np.random.default_rng(0)
        self.image = rng.standard_normal((1024, 1024)).astype(dtype)
        self.kernel = rng.standard_normal((kernel, kernel)).astype(dtype)

    def time_trueconv(self, kernel: int, dtype: str) -> None:
        trueconv.convolve(self.image, self.kernel, mode="same")

    def time_scipy_fftconvolve(self, kernel: int, dtype: str) -> None:
        scipy.signal.fftconvolve(self.image, self.kernel, mode="same")

    def time_scipy_oaconvolve(self, kernel: int, dtype: str) -> None:
        scipy.signal.oaconvolve(self.image, self.kernel, mode="same")

    def time_scipy_convolve2d(self, kernel: int, dtype: str) -> None:
        skip_unless(kernel <= 15, "scipy.signal.convolve2d takes seconds per call here")
        scipy.signal.convolve2d(self.image, self.kernel, mode="same")

    def time_ndimage_convolve(self, kernel: int, dtype: str) -> None:
        skip_unless(kernel <= 15, "scipy.ndimage.convolve takes seconds per call here")
        scipy.ndimage.convolve(self.image, self.kernel, mode="constant")

    def time_cv2_filter2d(self, kernel: int, dtype: str) -> None:
        try:
            import cv2
        except ImportError:
            skip_unless(False, "opencv is not installed")
        cv2.filter2D(self.image, -1, self.kernel[::-1, ::-1].copy(), borderType=cv2.BORDER_CONSTANT)

    def peakmem_trueconv(self, kernel: int, dtype: str) -> None:
        trueconv.convolve(self.image, self.kernel, mode="same")


class Signal1D:
    """'full' convolution of 1e6 float64 samples with an FIR filter."""

    params = [list(SIGNAL_TAPS)]
    param_names = ["taps"]
    timeout = 120

    def setup(self, taps: int) -> None:
        rng = np.random.default_rng(0)
        self.signal = rng.standard_normal(1_000_000)
        self.taps = rng.standard_normal(taps)

    def time_trueconv(self, taps: int) -> None:
        trueconv.convolve(self.signal, self.taps)

    def time_numpy_convolve(self, taps: int) -> None:
        np.convolve(self.signal, self.taps)

    def time_scipy_oaconvolve(self, taps: int) -> None:
        scipy.signal.oaconvolve(self.signal, self.taps)


if __name__ == "__main__":
    main([ImageFilter, Signal1D])
