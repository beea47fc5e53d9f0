"""The six benchmark models in JAX, with reference timings of jax.jit(jax.value_and_grad).
Prints one line per model: name, compile s, median µs per fwd+bwd call."""

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "")
import jax
import jax.numpy as jnp
import numpy as np


def timeit(f, *args, n=None, budget=1.5):
    out = f(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    k = 0
    times = []
    while time.perf_counter() - t0 < budget and k < 100000:
        s = time.perf_counter()
        out = f(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - s)
        k += 1
    return float(np.median(times)) * 1e6


rng = np.random.default_rng(0)


def P(*s):
    return jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.1)


models = {}


# 1. XOR 2-4-1 sigmoid MSE batch 4
def xor_loss(p, x, y):
    h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
    o = jax.nn.sigmoid(h @ p["W2"] + p["b2"])
    return 0.5 * jnp.sum((o - y) ** 2)


models["xor"] = (
    xor_loss,
    dict(W1=P(2, 4), b1=P(4), W2=P(4, 1), b2=P(1)),
    (
        jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32),
        jnp.array([[0], [1], [1], [0]], jnp.float32),
    ),
)


# 2. small tanh MLP 10-32-32-1, batch 1
def small_loss(p, x, y):
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    h = jnp.tanh(h @ p["W2"] + p["b2"])
    o = h @ p["W3"] + p["b3"]
    return jnp.mean((o - y) ** 2)


models["mlp_small"] = (
    small_loss,
    dict(W1=P(10, 32), b1=P(32), W2=P(32, 32), b2=P(32), W3=P(32, 1), b3=P(1)),
    (P(1, 10), P(1, 1)),
)


# 3. MNIST-shaped MLP 784-256-256-10 relu CE batch 128
def ce(logits, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))


def mnist_loss(p, x, y):
    h = jax.nn.relu(x @ p["W1"] + p["b1"])
    h = jax.nn.relu(h @ p["W2"] + p["b2"])
    return ce(h @ p["W3"] + p["b3"], y)


yoh = jax.nn.one_hot(rng.integers(0, 10, 128), 10)
models["mlp_mnist"] = (
    mnist_loss,
    dict(W1=P(784, 256), b1=P(256), W2=P(256, 256), b2=P(256), W3=P(256, 10), b3=P(10)),
    (P(128, 784), yoh),
)


# 4. small CNN on 8x8 digits: conv3x3 (1->8), relu, 2x2 maxpool, dense 10, CE, batch 64 (NCHW)
def cnn_loss(p, x, y):
    z = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "VALID") + p["bk"][None, :, None, None]
    z = jax.nn.relu(z)  # 64x8x6x6
    z = jax.lax.reduce_window(
        z, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
    )  # 64x8x3x3
    z = z.reshape(z.shape[0], -1)
    return ce(z @ p["W"] + p["b"], y)


models["cnn_digits"] = (
    cnn_loss,
    dict(K=P(8, 1, 3, 3), bk=P(8), W=P(72, 10), b=P(10)),
    (P(64, 1, 8, 8), jax.nn.one_hot(rng.integers(0, 10, 64), 10)),
)


# 5. vanilla RNN BPTT: T=50, batch 32, in 16, hidden 64, MSE on final state projection
def rnn_loss(p, xs, y):
    def step(h, x):
        h = jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])
        return h, None

    h, _ = jax.lax.scan(step, jnp.zeros((xs.shape[1], 64), jnp.float32), xs)
    return jnp.mean((h @ p["Wo"] - y) ** 2)


models["rnn_bptt"] = (
    rnn_loss,
    dict(Wx=P(16, 64), Wh=P(64, 64), b=P(64), Wo=P(64, 1)),
    (P(50, 32, 16), P(32, 1)),
)


# 6. attention block: batch 8, seq 64, d 64, single head + residual + tanh MLP, MSE
def attn_loss(p, x, y):
    q = x @ p["Wq"]
    k = x @ p["Wk"]
    v = x @ p["Wv"]
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 8.0, axis=-1)
    h = x + a @ v @ p["Wo"]
    h = h + jnp.tanh(h @ p["W1"]) @ p["W2"]
    return jnp.mean((h - y) ** 2)


models["attention"] = (
    attn_loss,
    dict(Wq=P(64, 64), Wk=P(64, 64), Wv=P(64, 64), Wo=P(64, 64), W1=P(64, 128), W2=P(128, 64)),
    (P(8, 64, 64), P(8, 64, 64)),
)

if __name__ == "__main__":
    which = sys.argv[1:] or list(models)
    print(f"jax {jax.__version__} devices {jax.devices()}")
    for name in which:
        loss, p, data = models[name]
        f = jax.jit(jax.value_and_grad(loss))
        t0 = time.perf_counter()
        jax.block_until_ready(f(p, *data))
        comp = time.perf_counter() - t0
        us = timeit(f, p, *data)
        nparams = sum(int(np.prod(v.shape)) for v in p.values())
        print(f"{name:12s} params={nparams:8d} compile={comp:6.3f}s  jax_jit_vg={us:10.1f}us")
