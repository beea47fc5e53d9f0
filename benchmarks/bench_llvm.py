"""LLVM backend vs jax.jit(jax.value_and_grad(...)) on the benchmark models, one process.

    python benchmarks/bench_llvm.py [models...] [--budget S] [--gemm-threshold]

Prints per model: median µs per call (ours, JAX), ratio JAX/ours, compile seconds with a cold
and a warm on-disk cache (ours; warm = a fresh compile of the same graph), JAX's compile time,
and whether the gradients agree. --gemm-threshold times single 2-d float32 matmuls through
inline loops and through BLAS to place blas.GEMM_THRESHOLD.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def median_us(f, budget: float) -> float:
    f()
    f()
    ts, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < budget or len(ts) < 5:
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return float(np.median(ts)) * 1e6


def models(bp, jax, jnp):
    """name -> (loss, wrt, inputs, params, jax loss(p, **inputs))."""
    r = np.random.default_rng(0)
    A = lambda *s: (r.standard_normal(s) * 0.1).astype(np.float32)
    out = {}
    x, y = bp.input("x", (4, 2)), bp.input("y", (4, 1))
    ps = [bp.param("W1", (2, 4)), bp.param("b1", (4,)), bp.param("W2", (4, 1)),
          bp.param("b2", (1,))]
    loss = 0.5 * bp.sum((bp.sigmoid(bp.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3]) - y) ** 2)
    P = dict(W1=A(2, 4), b1=A(4), W2=A(4, 1), b2=A(1))
    Ins = dict(x=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
               y=np.array([[0], [1], [1], [0]], np.float32))

    def jxor(p, x, y):
        h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
        return 0.5 * jnp.sum((jax.nn.sigmoid(h @ p["W2"] + p["b2"]) - y) ** 2)

    out["xor"] = (loss, ps, Ins, P, jxor)

    x, y = bp.input("x", (1, 10)), bp.input("y", (1, 1))
    ps = [bp.param("W1", (10, 32)), bp.param("b1", (32,)), bp.param("W2", (32, 32)),
          bp.param("b2", (32,)), bp.param("W3", (32, 1)), bp.param("b3", (1,))]
    h = bp.tanh(bp.tanh(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
    loss = bp.mean((h @ ps[4] + ps[5] - y) ** 2)
    P = dict(W1=A(10, 32), b1=A(32), W2=A(32, 32), b2=A(32), W3=A(32, 1), b3=A(1))

    def jsmall(p, x, y):
        h = jnp.tanh(jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
        return jnp.mean((h @ p["W3"] + p["b3"] - y) ** 2)

    out["mlp_small"] = (loss, ps, dict(x=A(1, 10), y=A(1, 1)), P, jsmall)

    x, lab = bp.input("x", (128, 784)), bp.input("labels", (128,), dtype="int32")
    ps = [bp.param("W1", (784, 256)), bp.param("b1", (256,)), bp.param("W2", (256, 256)),
          bp.param("b2", (256,)), bp.param("W3", (256, 10)), bp.param("b3", (10,))]
    h = bp.relu(bp.relu(x @ ps[0] + ps[1]) @ ps[2] + ps[3])
    loss = bp.cross_entropy(h @ ps[4] + ps[5], lab)
    P = dict(W1=A(784, 256), b1=A(256), W2=A(256, 256), b2=A(256), W3=A(256, 10), b3=A(10))

    def jmnist(p, x, labels):
        h = jax.nn.relu(jax.nn.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
        lp = jax.nn.log_softmax(h @ p["W3"] + p["b3"])
        return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=1))

    out["mlp_mnist"] = (loss, ps, dict(x=A(128, 784),
                                       labels=r.integers(0, 10, 128).astype(np.int32)), P, jmnist)

    # cnn_digits: conv 3x3 1->8, relu, 2x2 max-pool, dense 72->10, CE on one-hot, batch 64
    x, y = bp.input("x", (64, 1, 8, 8)), bp.input("y", (64, 10))
    ps = [bp.param("K", (8, 1, 3, 3)), bp.param("bk", (8,)), bp.param("W", (72, 10)),
          bp.param("b", (10,))]
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
    out["cnn_digits"] = (loss, ps, dict(x=A(64, 1, 8, 8), y=Y), P, jcnn)

    # rnn_bptt: tanh RNN over 50 steps with bp scan (the body is compiled once, like lax.scan)
    from bpcompile.layers import scan

    xs, y = bp.input("xs", (50, 32, 16)), bp.input("y", (32, 1))
    ps = [bp.param("Wx", (16, 64)), bp.param("Wh", (64, 64)), bp.param("b", (64,)),
          bp.param("Wo", (64, 1))]

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

    out["rnn_bptt"] = (loss, ps, dict(xs=A(50, 32, 16), y=A(32, 1)), P, jrnn)

    # attention: single head (d=64, seq 64) + residual + tanh MLP 64-128-64, MSE
    x, y = bp.input("x", (8, 64, 64)), bp.input("y", (8, 64, 64))
    names = ("Wq", "Wk", "Wv", "Wo")
    ps = [bp.param(n, (64, 64)) for n in names] + [bp.param("W1", (64, 128)),
                                                     bp.param("W2", (128, 64))]
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

    out["attention"] = (loss, ps, dict(x=A(8, 64, 64), y=A(8, 64, 64)), P, jattn)
    return out


def bench_models(which, budget):
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    print(f"{'model':10s} {'ours us':>9s} {'JAX us':>9s} {'JAX/ours':>8s}  "
          f"{'compile cold/warm s':>19s}  {'JAX compile s':>13s}  grads")
    cache = tempfile.mkdtemp(prefix="bpcompile-bench-")
    os.environ["BPCOMPILE_CACHE_DIR"] = cache
    for name, (loss, wrt, I, P, jl) in models(bp, jax, jnp).items():
        if which and name not in which:
            continue
        t0 = time.perf_counter()
        fn = bp.compile(loss, wrt, backend="llvm")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn = bp.compile(loss, wrt, backend="llvm")
        warm = time.perf_counter() - t0
        jf = jax.jit(jax.value_and_grad(jl))
        jP = {k: jnp.asarray(v) for k, v in P.items()}
        jI = {k: jnp.asarray(v) for k, v in I.items()}
        t0 = time.perf_counter()
        rv, rg = jax.block_until_ready(jf(jP, **jI))
        jc = time.perf_counter() - t0
        v, g = fn(**I, **P)
        agree = all(np.allclose(g[k], np.asarray(rg[k]), rtol=2e-3, atol=2e-5) for k in P)
        # interleave the two timings so machine load hits both alike
        ours, theirs = [], []
        for _ in range(3):
            ours.append(median_us(lambda: fn(**I, **P), budget / 3))
            theirs.append(median_us(lambda: jax.block_until_ready(jf(jP, **jI)), budget / 3))
        to, tj = float(np.median(ours)), float(np.median(theirs))
        print(f"{name:10s} {to:9.1f} {tj:9.1f} {tj / to:8.2f}  {cold:9.3f}/{warm:<9.3f}  "
              f"{jc:13.3f}  {'agree' if agree else 'DISAGREE'}", flush=True)


def bench_gemm(budget):
    """Inline loops vs BLAS for single float32 products: where does BLAS start to win?"""
    import bpcompile as bp
    from bpcompile.backends.llvm.backend import LLVMBackend

    print(f"{'M=N=K':>6s} {'inline us':>10s} {'BLAS us':>9s}")
    r = np.random.default_rng(0)
    for n in (4, 8, 16, 24, 32, 48, 64, 96, 128):
        a, b = bp.input("a", (n, n)), bp.input("b", (n, n))
        c = a @ b
        va, vb = (r.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        row = []
        for thr in (2**62, 0):
            be = LLVMBackend([c], [a, b], gemm_threshold=thr, cache=False)
            row.append(median_us(lambda: be.run([va, vb]), budget))
        print(f"{n:6d} {row[0]:10.2f} {row[1]:9.2f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--budget", type=float, default=1.5)
    ap.add_argument("--gemm-threshold", action="store_true")
    a = ap.parse_args(argv)
    if a.gemm_threshold:
        bench_gemm(a.budget / 4)
    else:
        bench_models(a.models, a.budget)


if __name__ == "__main__":
    sys.exit(main())
