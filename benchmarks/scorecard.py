"""Scorecard: bpcompile's gradient functions against jax.jit(jax.value_and_grad) on the public
benchmark models (BENCHMARKS.md), same process, median per call. Uses only the public API
(bp.input/param, ops, bp.compile(loss, wrt, backend)). Run from the project root:
    python benchmarks/scorecard.py [--backends llvm,jax,numpy] [--budget 0.3]
Prints one row per model and backend: JAX µs, ours µs, ratio JAX/ours, target, gradient
agreement."""

import argparse
import sys
import time

import numpy as np

TARGETS = {
    "llvm": {"xor": 10, "mlp_small": 10, "mlp_mnist": 1.5},
    "jax": {"xor": 0.95, "mlp_small": 0.95, "mlp_mnist": 0.95},
}


def med(f, budget):
    f()
    f()
    ts = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget:
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return float(np.median(ts)) * 1e6


def build(bp, jnp, jax):
    r = np.random.default_rng(0)
    A = lambda *s: (r.standard_normal(s) * 0.1).astype(np.float32)
    out = {}
    x = bp.input("x", (4, 2))
    y = bp.input("y", (4, 1))
    ps = [
        bp.param("W1", (2, 4)),
        bp.param("b1", (4,)),
        bp.param("W2", (4, 1)),
        bp.param("b2", (1,)),
    ]
    loss = 0.5 * bp.sum((bp.sigmoid(bp.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3]) - y) ** 2)
    P = dict(W1=A(2, 4), b1=A(4), W2=A(4, 1), b2=A(1))
    I = dict(
        x=np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32),
        y=np.array([[0], [1], [1], [0]], np.float32),
    )
    jl = lambda p, x, y: (
        0.5
        * jnp.sum(
            (jax.nn.sigmoid(jax.nn.sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]) - y) ** 2
        )
    )
    out["xor"] = (loss, ps, I, P, jl)
    x = bp.input("x", (1, 10))
    y = bp.input("y", (1, 1))
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
    x = bp.input("x", (128, 784))
    lab = bp.input("labels", (128,), dtype="int32")
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
        return -jnp.mean(
            jnp.take_along_axis(jax.nn.log_softmax(h @ p["W3"] + p["b3"]), labels[:, None], axis=1)
        )

    out["mlp_mnist"] = (
        loss,
        ps,
        dict(x=A(128, 784), labels=r.integers(0, 10, 128).astype(np.int32)),
        P,
        jl,
    )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="llvm,jax,numpy")
    ap.add_argument("--budget", type=float, default=0.3)
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    models = build(bp, jnp, jax)
    print(
        f"{'model':10s} {'backend':7s} {'JAX us':>9s} {'ours us':>9s} {'JAX/ours':>8s} "
        f"{'target':>7s}  compile ours/JAX  grads"
    )
    for name, (loss, wrt, I, P, jl) in models.items():
        jf = jax.jit(jax.value_and_grad(jl))
        jP = {k: jnp.asarray(v) for k, v in P.items()}
        jI = {k: jnp.asarray(v) for k, v in I.items()}
        t0 = time.perf_counter()
        rv, rg = jax.block_until_ready(jf(jP, **jI))
        jc = time.perf_counter() - t0
        tj = med(lambda: jax.block_until_ready(jf(jP, **jI)), a.budget)
        for b in a.backends.split(","):
            try:
                t0 = time.perf_counter()
                fn = bp.compile(loss, wrt=wrt, backend=b)
                v, g = fn(**I, **P)
                oc = time.perf_counter() - t0
            except Exception as e:
                print(f"{name:10s} {b:7s} unavailable: {type(e).__name__}: {str(e)[:80]}")
                continue
            agree = all(
                np.allclose(np.asarray(g[k]), np.asarray(rg[k]), rtol=2e-3, atol=2e-5) for k in P
            )
            if b == "jax":  # same inputs as the JAX reference gets: arrays already on the device
                to = med(lambda: jax.block_until_ready(fn(**jI, **jP)), a.budget)
            else:
                to = med(lambda: fn(**I, **P), a.budget)
            tgt = TARGETS.get(b, {}).get(name)
            flag = "" if tgt is None else ("ok" if tj / to >= tgt else "SHORT")
            print(
                f"{name:10s} {b:7s} {tj:9.1f} {to:9.1f} {tj / to:8.2f} "
                f"{('>=' + str(tgt)) if tgt else '':>7s}  "
                f"{oc:.3f}s/{jc:.3f}s  {'agree' if agree else 'DISAGREE'} {flag}"
            )


if __name__ == "__main__":
    sys.exit(main())
