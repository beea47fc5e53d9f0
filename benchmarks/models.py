"""The benchmark models of /work/shared/BENCHMARKS.md built with bpcompile's public API.

Each entry: (loss, wrt, inputs, params, jax_loss) where jax_loss(params, **inputs) is the same
model in JAX (as in ../shared/bench_models_jax.py), so one script can time both side by side.
"""

from __future__ import annotations

import numpy as np

import bpcompile as bp


def build(names=("xor", "mlp_small", "mlp_mnist"), seed=0):
    import jax
    import jax.numpy as jnp

    r = np.random.default_rng(seed)

    def A(*s):
        return (r.standard_normal(s) * 0.1).astype(np.float32)

    out = {}
    if "xor" in names:
        x, y = bp.input("x", (4, 2)), bp.input("y", (4, 1))
        ps = [
            bp.param("W1", (2, 4)),
            bp.param("b1", (4,)),
            bp.param("W2", (4, 1)),
            bp.param("b2", (1,)),
        ]
        h = bp.sigmoid(x @ ps[0] + ps[1])
        loss = 0.5 * bp.sum((bp.sigmoid(h @ ps[2] + ps[3]) - y) ** 2)
        P = dict(W1=A(2, 4), b1=A(4), W2=A(4, 1), b2=A(1))
        inputs = dict(
            x=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
            y=np.array([[0], [1], [1], [0]], np.float32),
        )

        def jl(p, x, y):
            h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
            return 0.5 * jnp.sum((jax.nn.sigmoid(h @ p["W2"] + p["b2"]) - y) ** 2)

        out["xor"] = (loss, ps, inputs, P, jl)
    if "mlp_small" in names:
        x, y = bp.input("x", (1, 10)), bp.input("y", (1, 1))
        ps = [
            bp.param("W1", (10, 32)),
            bp.param("b1", (32,)),
            bp.param("W2", (32, 32)),
            bp.param("b2", (32,)),
            bp.param("W3", (32, 1)),
            bp.param("b3", (1,)),
        ]
        h = bp.tanh(bp.tanh(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
        loss = bp.mean((h @ ps[4] + ps[5] - y) ** 2)
        P = dict(W1=A(10, 32), b1=A(32), W2=A(32, 32), b2=A(32), W3=A(32, 1), b3=A(1))

        def jl(p, x, y):
            h = jnp.tanh(jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
            return jnp.mean((h @ p["W3"] + p["b3"] - y) ** 2)

        out["mlp_small"] = (loss, ps, dict(x=A(1, 10), y=A(1, 1)), P, jl)
    if "mlp_mnist" in names:
        x, lab = bp.input("x", (128, 784)), bp.input("labels", (128,), dtype="int32")
        ps = [
            bp.param("W1", (784, 256)),
            bp.param("b1", (256,)),
            bp.param("W2", (256, 256)),
            bp.param("b2", (256,)),
            bp.param("W3", (256, 10)),
            bp.param("b3", (10,)),
        ]
        h = bp.relu(bp.relu(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
        loss = bp.cross_entropy(h @ ps[4] + ps[5], lab)
        P = dict(W1=A(784, 256), b1=A(256), W2=A(256, 256), b2=A(256), W3=A(256, 10), b3=A(10))

        def jl(p, x, labels):
            h = jax.nn.relu(jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
            logp = jax.nn.log_softmax(h @ p["W3"] + p["b3"])
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

        inputs = dict(x=A(128, 784), labels=r.integers(0, 10, 128).astype(np.int32))
        out["mlp_mnist"] = (loss, ps, inputs, P, jl)
    return out


def median_us(f, budget=0.5, min_calls=5):
    """Median wall time of f() in microseconds after two warm-up calls."""
    import time

    f()
    f()
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < budget or len(times) < min_calls:
        s = time.perf_counter()
        f()
        times.append(time.perf_counter() - s)
    return float(np.median(times)) * 1e6
