"""Independent oracles: a float64 (or exact integer) direct sum, torch on CPU, and comparison helpers.

Nothing here calls trueconv: tests compare trueconv against these, never against
another trueconv path alone (ARCHITECTURE.md, anti-pattern 10).
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

# One tolerance table keyed by dtype kind/size: relative to the output's scale.
TOLERANCE = {
    "float16": 1e-3,
    "float32": 1e-4,
    "complex64": 1e-4,
    "float64": 1e-10,
    "complex128": 1e-10,
    "longdouble": 1e-10,
    "clongdouble": 1e-10,
}


def tolerance_for(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return 0.0
    if dtype == np.longdouble:
        return TOLERANCE["longdouble"]
    if dtype == np.clongdouble:
        return TOLERANCE["clongdouble"]
    return TOLERANCE[dtype.name]


def assert_close_scaled(actual: np.ndarray, expected: np.ndarray, dtype: object = None,
                        scale: float | None = None, rtol: float | None = None) -> None:
    """Shape, dtype and values: ``max|a - e| <= rtol * max(|e|)`` (exact for integers).

    ``dtype`` is the dtype ``actual`` must have (defaults to ``expected``'s);
    the tolerance comes from the table for that dtype.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    want = np.dtype(dtype) if dtype is not None else expected.dtype
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == want, f"dtype {actual.dtype} != expected {want}"
    tol = tolerance_for(want) if rtol is None else rtol
    if tol == 0.0:
        np.testing.assert_array_equal(actual, expected)
        return
    a = actual.astype(np.clongdouble if actual.dtype.kind == "c" else np.longdouble)
    e = expected.astype(a.dtype)
    finite = np.isfinite(e)
    # non-finite values must match exactly (NaN where NaN, +-inf where +-inf)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg="NaN positions differ")
    np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)], err_msg="Inf values differ")
    if not finite.any():
        return
    ref_scale = float(np.abs(e[finite]).max()) if scale is None else scale
    err = float(np.abs(a[finite] - e[finite]).max())
    assert err <= tol * max(ref_scale, np.finfo(np.float64).tiny), (
        f"max abs error {err:.3e} > {tol:.0e} * scale {ref_scale:.3e} (dtype {want})"
    )


def _pad(x: np.ndarray, pad_widths, mode: str = "zeros") -> np.ndarray:
    widths = [(0, 0)] * (x.ndim - len(pad_widths)) + [tuple(p) for p in pad_widths]
    np_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    return np.pad(x, widths, mode=np_mode)


def conv_reference(x, w, bias=None, stride=1, pad_widths=None, dilation=1, groups=1,
                   padding_mode="zeros", kind="correlation") -> np.ndarray:
    """Naive direct sum, batched channels-first, one output element at a time by window.

    Accumulates floats in longdouble and integers in Python ints (object), so it is
    exact for integers and more precise than float64 for floats. Returns float64 /
    complex128 (floats) or int64-valued object->int64 (integers). Slow: keep shapes small.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    nd = w.ndim - 2
    stride = (stride,) * nd if np.isscalar(stride) else tuple(stride)
    dilation = (dilation,) * nd if np.isscalar(dilation) else tuple(dilation)
    pad_widths = ((0, 0),) * nd if pad_widths is None else tuple(tuple(p) for p in pad_widths)
    integer = x.dtype.kind in "iu" and w.dtype.kind in "iu"
    is_complex = x.dtype.kind == "c" or w.dtype.kind == "c"
    acc = object if integer else (np.clongdouble if is_complex else np.longdouble)
    xp = _pad(x.astype(acc), pad_widths, padding_mode) if padding_mode == "zeros" or not integer \
        else _pad(x, pad_widths, padding_mode).astype(acc)
    if kind == "convolution":
        w = w[(Ellipsis, *([slice(None, None, -1)] * nd))]
    w = w.astype(acc)
    n, cin = xp.shape[:2]
    cout, cpg = w.shape[:2]
    kernel = w.shape[2:]
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    out_shape = [(p - e) // s + 1 for p, e, s in zip(xp.shape[2:], eff, stride)]
    out = np.zeros((n, cout, *out_shape), dtype=acc)
    opg = cout // groups
    for o in range(cout):
        g = o // opg
        xs = xp[:, g * cpg:(g + 1) * cpg]
        for tap in itertools.product(*(range(k) for k in kernel)):
            idx = tuple(slice(t * d, t * d + (m - 1) * s + 1, s)
                        for t, d, s, m in zip(tap, dilation, stride, out_shape))
            window = xs[(slice(None), slice(None), *idx)]  # (N, cpg, *out)
            coeff = w[o, :, *tap].reshape(1, cpg, *([1] * nd))
            out[:, o] += (window * coeff).sum(axis=1)
    if bias is not None:
        out += np.asarray(bias).astype(acc).reshape(-1, *([1] * nd))
    if integer:
        return out.astype(np.int64)
    return out.astype(np.complex128 if is_complex else np.float64)


def torch_conv(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1,
               padding_mode="zeros", kind="correlation") -> np.ndarray:
    """torch.nn.functional.conv{1,2,3}d on CPU, float64, with nn.ConvNd's padding_mode pre-pass.

    ``padding`` may be an int, a tuple of ints, a tuple of (before, after) pairs,
    'valid' or 'same' (passed to torch as-is; stride must then be 1).
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x)
    w = np.asarray(w)
    nd = w.ndim - 2
    batched = x.ndim == nd + 2
    is_complex = x.dtype.kind == "c" or w.dtype.kind == "c"
    dt = np.complex128 if is_complex else np.float64
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=dt))
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=dt))
    bt = None if bias is None else torch.from_numpy(np.ascontiguousarray(bias, dtype=dt))
    if not batched:
        xt = xt[None]
    if kind == "convolution":
        wt = torch.flip(wt, dims=list(range(2, 2 + nd)))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    if isinstance(padding, str):
        if padding_mode != "zeros":
            raise NotImplementedError("use explicit pads with padding_mode in this oracle")
        out = fn(xt, wt, bt, stride, padding, dilation, groups)
    else:
        if np.isscalar(padding):
            pairs = [(padding, padding)] * nd
        elif all(np.isscalar(p) for p in padding):
            pairs = [(p, p) for p in padding] if len(padding) == nd else [(padding[0],) * 2] * nd
        else:
            pairs = [tuple(p) for p in padding]
        flat = [v for pair in reversed(pairs) for v in pair]  # F.pad wants the last axis first
        mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}[padding_mode]
        xt = F.pad(xt, flat, mode=mode) if any(flat) else xt
        out = fn(xt, wt, bt, stride, 0, dilation, groups)
    out = out.numpy()
    return out if batched else out[0]


def fingerprint(*arrays: np.ndarray) -> list[tuple]:
    """Values, dtype, shape, strides and flags of each array: equal before and after a call."""
    prints = []
    for a in arrays:
        if a is None:
            prints.append(None)
            continue
        a = np.asarray(a)
        digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        prints.append((digest, a.dtype.str, a.shape, a.strides, a.flags.writeable,
                       a.flags.c_contiguous, a.flags.f_contiguous))
    return prints
