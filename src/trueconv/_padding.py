"""Non-zero padding as one pre-pass, so algorithms only ever see zero padding.

PyTorch applies ``padding_mode`` with ``F.pad`` before a zero-padded conv
(``_ConvNd._conv_forward``); SciPy's ``convolve2d`` extends the input by its
``boundary`` rule. Both become one ``np.pad`` call here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# torch nn.ConvNd padding_mode -> np.pad mode
_TORCH_TO_NUMPY = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
# scipy.signal.convolve2d boundary -> np.pad mode
_BOUNDARY_TO_NUMPY = {"wrap": "wrap", "symm": "symmetric"}


def pad_spatial(
    x: np.ndarray,
    pad_widths: Sequence[tuple[int, int]],
    mode: str,
    fill_value: object = 0,
) -> np.ndarray:
    """Pad the trailing ``len(pad_widths)`` axes of ``x``.

    ``mode`` is a torch ``padding_mode`` ('zeros', 'reflect', 'replicate',
    'circular') or a SciPy boundary ('fill', 'wrap', 'symm'). Returns ``x``
    itself when nothing is padded. np.pad extends wrap/symmetric pads wider than
    the axis fold by fold, which is SciPy's ``convolve2d`` behaviour (gh-8684).
    """
    leading = x.ndim - len(pad_widths)
    widths = [(0, 0)] * leading + [tuple(p) for p in pad_widths]
    if not any(lo or hi for lo, hi in widths):
        return x
    if mode in ("zeros", "fill"):
        # np.pad costs some 30 us of Python per call; a filled array and one slice copy
        # do the same work, which matters for the many small calls of a training loop.
        shape = tuple(size + lo + hi for size, (lo, hi) in zip(x.shape, widths))
        out = np.full(shape, fill_value, dtype=x.dtype)
        out[tuple(slice(lo, lo + size) for size, (lo, _) in zip(x.shape, widths))] = x
        return out
    np_mode = _TORCH_TO_NUMPY.get(mode) or _BOUNDARY_TO_NUMPY[mode]
    return np.pad(x, widths, mode=np_mode)
