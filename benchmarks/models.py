"""The six benchmark models of benchmarks/BENCHMARKS.md, built with bpcompile's public API.

`build(names)` returns name -> (loss, wrt, inputs, params, jax_loss) where
jax_loss(params, **inputs) is the same model in JAX (as in benchmarks/bench_models_jax.py), so
every benchmark script times both sides on identical inputs. Shared by all benchmarks/ scripts.
"""

from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ALL = ("xor", "mlp_small", "mlp_mnist", "cnn_digits", "rnn_bptt", "attention")


def median_us(f, budget: float = 0.5, min_calls: int = 5) -> float:
    """Median wall time of f() in microseconds after two warm-up calls."""
    f()
    f()
    ts, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < budget or len(ts) < min_calls:
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return float(np.median(ts)) * 1e6


def build(names=ALL, seed: int = 0) -> dict:
    """The requested models (all six by default), with seeded inputs and params."""
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    r = np.random.default_rng(seed)

    def A(*s):
        return (r.standard_normal(s) * 0.1).astype(np.float32)

    builders = dict(
        xor=_xor,
        mlp_small=_mlp_small,
        mlp_mnist=_mlp_mnist,
        cnn_digits=_cnn_digits,
        rnn_bptt=_rnn_bptt,
        attention=_attention,
    )
    return {n: builders[n](bp, jax, jnp, A, r) for n in ALL if n in names}


def _xor(bp, jax, jnp, A, r):
    x, y = bp.input("x", (4, 2)), bp.input("y", (4, 1))
    ps = [
        bp.param("W1", (2, 4)),
        bp.param("b1", (4,)),
        bp.param("W2", (4, 1)),
        bp.param("b2", (1,)),
    ]
    loss = 0.5 * bp.sum((bp.sigmoid(bp.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3]) - y) ** 2)
    P = dict(W1=A(2, 4), b1=A(4), W2=A(4, 1), b2=A(1))
    Ins = dict(
        x=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
        y=np.array([[0], [1], [1], [0]], np.float32),
    )

    def jxor(p, x, y):
        h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
        return 0.5 * jnp.sum((jax.nn.sigmoid(h @ p["W2"] + p["b2"]) - y) ** 2)

    return (loss, ps, Ins, P, jxor)


def _mlp_small(bp, jax, jnp, A, r):
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

    def jsmall(p, x, y):
        h = jnp.tanh(jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
        return jnp.mean((h @ p["W3"] + p["b3"] - y) ** 2)

    return (loss, ps, dict(x=A(1, 10), y=A(1, 1)), P, jsmall)


def _mlp_mnist(bp, jax, jnp, A, r):
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

    def jmnist(p, x, labels):
        h = jax.nn.relu(jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
        lp = jax.nn.log_softmax(h @ p["W3"] + p["b3"])
        return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=1))

    return (
        loss,
        ps,
        dict(x=A(128, 784), labels=r.integers(0, 10, 128).astype(np.int32)),
        P,
        jmnist,
    )


def _cnn_digits(bp, jax, jnp, A, r):
    # cnn_digits: conv 3x3 1->8, relu, 2x2 max-pool, dense 72->10, CE on one-hot, batch 64
    x, y = bp.input("x", (64, 1, 8, 8)), bp.input("y", (64, 10))
    ps = [
        bp.param("K", (8, 1, 3, 3)),
        bp.param("bk", (8,)),
        bp.param("W", (72, 10)),
        bp.param("b", (10,)),
    ]
    z = bp.max_pool2d(bp.relu(bp.conv2d(x, ps[0], ps[1])), 2)
    loss = bp.cross_entropy(bp.reshape(z, (64, 72)) @ ps[2] + ps[3], y)

    def jcnn(p, x, y):
        z = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "VALID")
        z = jax.nn.relu(z + p["bk"][None, :, None, None])
        z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        lp = jax.nn.log_softmax(z.reshape(z.shape[0], -1) @ p["W"] + p["b"])
        return -jnp.mean(jnp.sum(lp * y, axis=-1))

    P = dict(K=A(8, 1, 3, 3), bk=A(8), W=A(72, 10), b=A(10))
    Y = np.eye(10, dtype=np.float32)[r.integers(0, 10, 64)]
    return (loss, ps, dict(x=A(64, 1, 8, 8), y=Y), P, jcnn)


def _rnn_bptt(bp, jax, jnp, A, r):
    # rnn_bptt: tanh RNN over 50 steps with bp scan (the body is compiled once, like lax.scan)
    from bpcompile.layers import scan

    xs, y = bp.input("xs", (50, 32, 16)), bp.input("y", (32, 1))
    ps = [
        bp.param("Wx", (16, 64)),
        bp.param("Wh", (64, 64)),
        bp.param("b", (64,)),
        bp.param("Wo", (64, 1)),
    ]

    def step(h, x):
        return bp.tanh(x @ ps[0] + h @ ps[1] + ps[2]), None

    hs, _ = scan(step, bp.tanh(xs[0] @ ps[0] + ps[2]), xs[1:])
    loss = bp.mean((hs @ ps[3] - y) ** 2)
    P = dict(Wx=A(16, 64), Wh=A(64, 64), b=A(64), Wo=A(64, 1))

    def jrnn(p, xs, y):
        def step(h, x):
            return jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"]), None

        h = jnp.tanh(xs[0] @ p["Wx"] + p["b"])
        h, _ = jax.lax.scan(step, h, xs[1:])
        return jnp.mean((h @ p["Wo"] - y) ** 2)

    return (loss, ps, dict(xs=A(50, 32, 16), y=A(32, 1)), P, jrnn)


def _attention(bp, jax, jnp, A, r):
    # attention: single head (d=64, seq 64) + residual + tanh MLP 64-128-64, MSE
    x, y = bp.input("x", (8, 64, 64)), bp.input("y", (8, 64, 64))
    names = ("Wq", "Wk", "Wv", "Wo")
    ps = [bp.param(n, (64, 64)) for n in names] + [
        bp.param("W1", (64, 128)),
        bp.param("W2", (128, 64)),
    ]
    q, k, v = x @ ps[0], x @ ps[1], x @ ps[2]
    a = bp.softmax(q @ bp.transpose(k, (0, 2, 1)) / 8.0, axis=-1)
    h = x + a @ v @ ps[3]
    h = h + bp.tanh(h @ ps[4]) @ ps[5]
    loss = bp.mean((h - y) ** 2)
    P = {n: A(64, 64) for n in names}
    P.update(W1=A(64, 128), W2=A(128, 64))

    def jattn(p, x, y):
        q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
        a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 8.0, axis=-1)
        h = x + a @ v @ p["Wo"]
        h = h + jnp.tanh(h @ p["W1"]) @ p["W2"]
        return jnp.mean((h - y) ** 2)

    return (loss, ps, dict(x=A(8, 64, 64), y=A(8, 64, 64)), P, jattn)
