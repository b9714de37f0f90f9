"""Direct convolution: one small GEMM per kernel tap, accumulated in place.

For each tap the strided input view it touches is multiplied by that tap's
``(O, C)`` weight slice and added to the output (the "shift and accumulate"
formulation). It needs no workspace beyond one tap's view, keeps integer
arithmetic exact, and serves every dtype NumPy's ``matmul`` does.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._spec import ConvSpec
from ._base import grouped, grouped_weight, output_positions, tap_offsets, tap_view, zero_pad


class Direct:
    name: ClassVar[str] = "direct"
    exact: ClassVar[bool] = True

    def supports(self, spec: ConvSpec) -> str | None:
        return None

    def workspace_bytes(self, spec: ConvSpec) -> int:
        padded = spec.batch * spec.in_channels * int(np.prod(spec.padded_shape))
        one_tap = spec.batch * spec.in_channels * output_positions(spec)
        return (padded + one_tap) * spec.itemsize

    def run(self, x: np.ndarray, weight: np.ndarray, spec: ConvSpec) -> np.ndarray:
        n, g, c, o = spec.batch, spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
        p = output_positions(spec)
        x_padded = grouped(zero_pad(x, spec), spec)  # (N, G, C, *padded)
        w = grouped_weight(weight, spec)  # (G, O, C, K)
        out = np.zeros((n, g, o, p), dtype=np.result_type(x, weight))
        for k, tap in enumerate(tap_offsets(spec)):
            window = tap_view(x_padded, tap, spec).reshape(n, g, c, p)
            # (N, G, O, P) += (G, O, C) @ (N, G, C, P)
            out += np.matmul(w[..., k], window)
        return out.reshape(spec.full_output_shape)
