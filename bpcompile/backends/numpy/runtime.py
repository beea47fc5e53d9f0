"""Helpers the generated NumPy code calls by name (numerically stable activations, pads)."""

import numpy as np


def sigmoid(x):
    # exp(-logaddexp(0, -x)) never overflows: exact 0/1 at the extremes, no warnings.
    return np.exp(-np.logaddexp(0, -x))


def softplus(x):
    return np.logaddexp(0, x)


def relu(x):
    return np.maximum(x, 0)


def step(x):
    return np.where(x > 0, 1, 0).astype(np.result_type(x, np.float32))


def one_hot(idx, n, dtype):
    return (idx[..., None] == np.arange(n, dtype=idx.dtype)).astype(dtype)


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
    "iota": iota,
    "pad": pad,
}
