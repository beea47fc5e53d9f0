"""JAX backend benchmark: bpcompile's jitted forward+backward vs jax.jit(jax.value_and_grad).

Same process, same inputs, median time per call after a warm-up, every call blocked until its
results are ready on both sides. Calls alternate JAX, ours, JAX, ours, ... in several rounds
(the median of the round medians is reported), so load on a shared machine hits both alike.
Two input conditions:
  device: both functions get JAX arrays already on the device (the program-vs-program figure);
  numpy:  both functions get host NumPy arrays (each call pays the host->device transfer).
The scorecard (../shared/scorecard.py) mixes the two: JAX gets device arrays, ours NumPy ones.

Models: the six of /work/shared/BENCHMARKS.md (float32). xor, mlp_small and mlp_mnist come from
benchmarks/models.py (defined as scorecard.py does); cnn_digits, rnn_bptt and attention are
defined below with the public API, each beside its JAX twin (as in bench_models_jax.py).

    python benchmarks/bench_jax.py [--budget 0.3] [--rounds 5] [--models xor,mlp_small,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALL = ("xor", "mlp_small", "mlp_mnist", "cnn_digits", "rnn_bptt", "attention")


def extra_models(names, seed=1):
    """cnn_digits, rnn_bptt and attention: (loss, wrt, inputs, params, jax_loss)."""
    import jax
    import jax.numpy as jnp

    import bpcompile as bp
    from bpcompile.ops.scan import scan

    r = np.random.default_rng(seed)

    def A(*s):
        return (r.standard_normal(s) * 0.1).astype(np.float32)

    def jce(logits, y):
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))

    out = {}
    if "cnn_digits" in names:
        x, y = bp.input("x", (64, 1, 8, 8)), bp.input("y", (64, 10))
        ps = [
            bp.param("K", (8, 1, 3, 3)),
            bp.param("bk", (8,)),
            bp.param("W", (72, 10)),
            bp.param("b", (10,)),
        ]
        z = bp.max_pool2d(bp.relu(bp.conv2d(x, ps[0], ps[1])), 2)
        loss = bp.cross_entropy(bp.reshape(z, (64, 72)) @ ps[2] + ps[3], y)

        def jl(p, x, y):
            z = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "VALID")
            z = jax.nn.relu(z + p["bk"][None, :, None, None])
            z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            return jce(z.reshape(z.shape[0], -1) @ p["W"] + p["b"], y)

        P = dict(K=A(8, 1, 3, 3), bk=A(8), W=A(72, 10), b=A(10))
        Y = np.eye(10, dtype=np.float32)[r.integers(0, 10, 64)]
        out["cnn_digits"] = (loss, ps, dict(x=A(64, 1, 8, 8), y=Y), P, jl)
    if "rnn_bptt" in names:
        xs, y = bp.input("xs", (50, 32, 16)), bp.input("y", (32, 1))
        ps = [
            bp.param("Wx", (16, 64)),
            bp.param("Wh", (64, 64)),
            bp.param("b", (64,)),
            bp.param("Wo", (64, 1)),
        ]

        def step(h, x):
            h = bp.tanh(x @ ps[0] + h @ ps[1] + ps[2])
            return h, h

        hT, _ = scan(step, bp.broadcast_to(bp.const(0.0, "float32"), (32, 64)), xs)
        loss = bp.mean((hT @ ps[3] - y) ** 2)

        def jl(p, xs, y):
            def jstep(h, x):
                return jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"]), None

            h, _ = jax.lax.scan(jstep, jnp.zeros((xs.shape[1], 64), jnp.float32), xs)
            return jnp.mean((h @ p["Wo"] - y) ** 2)

        P = dict(Wx=A(16, 64), Wh=A(64, 64), b=A(64), Wo=A(64, 1))
        out["rnn_bptt"] = (loss, ps, dict(xs=A(50, 32, 16), y=A(32, 1)), P, jl)
    if "attention" in names:
        x, y = bp.input("x", (8, 64, 64)), bp.input("y", (8, 64, 64))
        shapes = dict(
            Wq=(64, 64), Wk=(64, 64), Wv=(64, 64), Wo=(64, 64), W1=(64, 128), W2=(128, 64)
        )
        p = {k: bp.param(k, s) for k, s in shapes.items()}
        q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
        a = bp.softmax(q @ bp.transpose(k, (0, 2, 1)) / 8.0, axis=-1)
        h = x + a @ v @ p["Wo"]
        h = h + bp.tanh(h @ p["W1"]) @ p["W2"]
        loss = bp.mean((h - y) ** 2)

        def jl(p, x, y):
            q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
            a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 8.0, axis=-1)
            h = x + a @ v @ p["Wo"]
            h = h + jnp.tanh(h @ p["W1"]) @ p["W2"]
            return jnp.mean((h - y) ** 2)

        P = {k: A(*s) for k, s in shapes.items()}
        out["attention"] = (loss, list(p.values()), dict(x=A(8, 64, 64), y=A(8, 64, 64)), P, jl)
    return out


def timed_rounds(fa, fb, budget, rounds):
    """Time fa and fb call by call in alternation (so load on a shared machine hits both
    alike) for `rounds` rounds of `budget` seconds; the median of the per-round medians (µs)."""
    for f in (fa, fb, fa, fb):
        f()
    ma, mb = [], []
    clock = time.perf_counter
    for _ in range(rounds):
        ta, tb, t0 = [], [], clock()
        while clock() - t0 < budget or len(ta) < 3:
            s = clock()
            fa()
            m = clock()
            fb()
            e = clock()
            ta.append(m - s)
            tb.append(e - m)
        ma.append(np.median(ta))
        mb.append(np.median(tb))
    return float(np.median(ma)) * 1e6, float(np.median(mb)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default=",".join(ALL))
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    from models import build

    import bpcompile as bp

    names = a.models.split(",")
    models = build(tuple(n for n in names if n in ("xor", "mlp_small", "mlp_mnist")))
    models.update(extra_models(names))
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print(
        f"{'model':10s} {'inputs':6s} {'JAX us':>9s} {'ours us':>9s} {'JAX/ours':>8s}  "
        f"{'compile ours/JAX s':>18s}  max rel grad diff"
    )
    for name in names:
        try:
            loss, wrt, inputs, params, jloss = models[name]
        except KeyError:
            print(f"{name:10s} (not built)")
            continue
        jf = jax.jit(jax.value_and_grad(jloss))
        t0 = time.perf_counter()
        fn = bp.compile(loss, wrt=wrt, backend="jax")
        v, g = jax.block_until_ready(fn(**inputs, **params))
        ours_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        rv, rg = jax.block_until_ready(jf(params, **inputs))
        jax_compile = time.perf_counter() - t0
        diff = max(
            float(
                np.max(np.abs(np.asarray(g[k]) - np.asarray(rg[k])))
                / max(float(np.max(np.abs(np.asarray(rg[k])))), 1e-30)
            )
            for k in rg
        )
        dev_p = {k: jnp.asarray(x) for k, x in params.items()}
        dev_i = {k: jnp.asarray(x) for k, x in inputs.items()}
        for cond, (P, I) in (("device", (dev_p, dev_i)), ("numpy", (params, inputs))):
            tj, to = timed_rounds(
                lambda: jax.block_until_ready(jf(P, **I)),
                lambda: jax.block_until_ready(fn(**I, **P)),
                a.budget,
                a.rounds,
            )
            print(
                f"{name:10s} {cond:6s} {tj:9.1f} {to:9.1f} {tj / to:8.2f}  "
                f"{ours_compile:8.3f} / {jax_compile:.3f}  {diff:.1e}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
