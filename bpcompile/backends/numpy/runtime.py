"""Helpers the generated NumPy code calls by name (numerically stable activations, pads)."""

import numpy as np

from ...ops.index import range_error


def sigmoid(x):
    # exp(-logaddexp(0, -x)) never overflows: exact 0/1 at the extremes, no warnings.
    return np.exp(-np.logaddexp(0, -x))


def softplus(x):
    return np.logaddexp(0, x)


def relu(x):
    return np.maximum(x, 0)


def step(x):
    return np.where(x > 0, 1, 0).astype(np.result_type(x, np.float32))


def _check(idx, lo, hi, site):
    """Refuse indices outside [lo, hi) (ops/index.py has the semantics) before any use."""
    if idx.size:
        mn, mx = int(idx.min()), int(idx.max())
        if mn < lo or mx >= hi:
            bad = np.asarray(idx).flat[int(np.argmax((idx < lo) | (idx >= hi)))]
            raise range_error(site, lo, hi, int(bad), (mn, mx))


def one_hot(idx, n, dtype, wrap=False, site="one_hot"):
    idx = np.asarray(idx)
    _check(idx, -n if wrap else 0, n, site)
    if wrap:
        idx = np.where(idx < 0, idx + n, idx)
    return (idx[..., None] == np.arange(n, dtype=idx.dtype)).astype(dtype)


def take_in_range(x, idx, axis, site="take"):
    """np.take with jnp.take's index range: [-n, n), negatives wrapping once; else an error."""
    n = np.shape(x)[axis]
    _check(np.asarray(idx), -n, n, site)
    return np.take(x, idx, axis=axis)


def iota(shape, axis, dtype):
    ix = np.arange(shape[axis], dtype=dtype).reshape(
        [-1 if i == axis else 1 for i in range(len(shape))]
    )
    return np.broadcast_to(ix, shape)


def pad(x, lo, hi, interior):
    """Zero padding with `interior` zeros between elements (lax.pad semantics, no negatives)."""
    shape = [a + b + n + max(n - 1, 0) * i for a, b, n, i in zip(lo, hi, x.shape, interior)]
    out = np.zeros(shape, x.dtype)
    out[
        tuple(
            slice(a, a + (n - 1) * (i + 1) + 1 if n else a, i + 1)
            for a, n, i in zip(lo, x.shape, interior)
        )
    ] = x
    return out


NAMESPACE = {
    "np": np,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "relu": relu,
    "step": step,
    "one_hot": one_hot,
    "take_in_range": take_in_range,
    "iota": iota,
    "pad": pad,
}
