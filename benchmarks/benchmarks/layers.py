"""Forward (and backward) deep-learning layers: trueconv per algorithm vs torch."""

from __future__ import annotations

import os
import sys

import numpy as np

import trueconv
from trueconv.cli.bench import LAYERS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._runner import main, skip_unless  # noqa: E402

_BY_LABEL = {row[0]: row[1:] for row in LAYERS}


def _data(label: str, batch: int) -> tuple[np.ndarray, np.ndarray, dict]:
    c, o, size, k, stride, padding, dilation, groups = _BY_LABEL[label]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, *size), dtype=np.float32)
    w = rng.standard_normal((o, c // groups, *(k,) * len(size)), dtype=np.float32)
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


class Layer:
    """trueconv.conv on the issue-3 layer suite, for every algorithm that serves the layer."""

    params = [list(_BY_LABEL), [1, 8], ["auto", *sorted(trueconv.ALGORITHMS)]]
    param_names = ["layer", "batch", "algorithm"]
    timeout = 120

    def setup(self, layer: str, batch: int, algorithm: str) -> None:
        self.x, self.w, self.kw = _data(layer, batch)
        plan = None
        try:
            plan = trueconv.plan(self.x.shape, self.w.shape, self.x.dtype, algorithm=algorithm, **self.kw)
        except (ValueError, MemoryError) as exc:
            skip_unless(False, str(exc))
        self.algorithm = plan.algorithm

    def time_conv(self, layer: str, batch: int, algorithm: str) -> None:
        trueconv.conv(self.x, self.w, algorithm=algorithm, **self.kw)

    def peakmem_conv(self, layer: str, batch: int, algorithm: str) -> None:
        trueconv.conv(self.x, self.w, algorithm=algorithm, **self.kw)


class TorchLayer:
    """torch.nn.functional.conv*d on the same layers, same thread count."""

    params = [list(_BY_LABEL), [1, 8]]
    param_names = ["layer", "batch"]

    def setup(self, layer: str, batch: int) -> None:
        try:
            import torch
        except ImportError:
            skip_unless(False, "torch is not installed")
        torch.set_num_threads(trueconv.get_num_threads())
        x, w, self.kw = _data(layer, batch)
        self.x, self.w = torch.from_numpy(x), torch.from_numpy(w)
        self.conv = getattr(torch.nn.functional, f"conv{x.ndim - 2}d")
        self.torch = torch

    def time_conv(self, layer: str, batch: int) -> None:
        with self.torch.no_grad():
            self.conv(self.x, self.w, **self.kw)


class Backward:
    """Input and weight gradients of 3x3 64->64 @56, batch 8."""

    def setup(self) -> None:
        skip_unless(hasattr(trueconv, "conv_grad"), "trueconv.conv_grad is not available")
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((8, 64, 56, 56), dtype=np.float32)
        self.w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
        self.g = rng.standard_normal((8, 64, 56, 56), dtype=np.float32)

    def time_conv_grad(self) -> None:
        trueconv.conv_grad(self.g, self.x, self.w, padding=1, needs=("input", "weight"))


if __name__ == "__main__":
    main([Layer, TorchLayer, Backward])
