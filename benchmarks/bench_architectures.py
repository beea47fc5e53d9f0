"""Architecture benchmarks: cnn_digits, rnn_bptt and attention (BENCHMARKS.md) built from
bpcompile's layer composites and bp.scan, against jax.jit(jax.value_and_grad) of the reference
JAX models (benchmarks/bench_models_jax.py), same process, median per call; plus the
checkpointed scan at T=1000 (saved state and extra compute vs plain BPTT).

    python benchmarks/bench_architectures.py [--backends numpy,jax,llvm] [--budget 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# OpenBLAS keeps its default thread count, as JAX keeps its thread pool: the llvm backend's
# blas_threads="auto" times one and many BLAS threads per call and keeps the faster (set
# OPENBLAS_NUM_THREADS=1 to compare single-threaded).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bpcompile as bp  # noqa: E402
from bpcompile.ops.scan import scan_stats  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import median_us as med  # noqa: E402  (shared timing helper)


def _ce(logits, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))


def models():
    r = np.random.default_rng(0)

    def A(*s):
        return (r.standard_normal(s) * 0.1).astype(np.float32)

    out = {}
    # cnn_digits: conv 3x3 1->8, relu, 2x2 max-pool, dense 72->10, CE, batch 64, 8x8 NCHW
    x, y = bp.input("x", (64, 1, 8, 8)), bp.input("y", (64, 10))
    P = {"K": bp.param("K", (8, 1, 3, 3)), "bk": bp.param("bk", (8,)),
         "W": bp.param("W", (72, 10)), "b": bp.param("b", (10,))}
    z = bp.flatten(bp.max_pool2d(bp.relu(bp.conv2d(x, P["K"], P["bk"])), 2))
    loss = bp.cross_entropy(z @ P["W"] + P["b"], y)

    def jcnn(p, x, y):
        z = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "VALID") + p["bk"][None, :, None, None]
        z = jax.lax.reduce_window(jax.nn.relu(z), -jnp.inf, jax.lax.max, (1, 1, 2, 2),
                                  (1, 1, 2, 2), "VALID")
        return _ce(z.reshape(z.shape[0], -1) @ p["W"] + p["b"], y)

    vals = dict(K=A(8, 1, 3, 3), bk=A(8), W=A(72, 10), b=A(10))
    data = dict(x=A(64, 1, 8, 8), y=np.eye(10, dtype=np.float32)[r.integers(0, 10, 64)])
    out["cnn_digits"] = (loss, P, vals, data, jcnn)

    # rnn_bptt: tanh RNN, input 16, hidden 64, 50 steps, batch 32, MSE of a projection
    xs, y = bp.input("xs", (50, 32, 16)), bp.input("y", (32, 1))
    P = {"Wx": bp.param("Wx", (16, 64)), "Wh": bp.param("Wh", (64, 64)),
         "b": bp.param("b", (64,)), "Wo": bp.param("Wo", (64, 1))}
    h0 = bp.broadcast_to(bp.const(0.0), (32, 64))
    hT, _ = bp.rnn(xs, h0, P["Wx"], P["Wh"], P["b"])
    loss = bp.mean((hT @ P["Wo"] - y) ** 2)

    def jrnn(p, xs, y):
        def step(h, x):
            return jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"]), None
        h, _ = jax.lax.scan(step, jnp.zeros((xs.shape[1], 64), jnp.float32), xs)
        return jnp.mean((h @ p["Wo"] - y) ** 2)

    vals = dict(Wx=A(16, 64), Wh=A(64, 64), b=A(64), Wo=A(64, 1))
    out["rnn_bptt"] = (loss, P, vals, dict(xs=A(50, 32, 16), y=A(32, 1)), jrnn)

    # attention: batch 8, seq 64, d 64, one head + residual + tanh MLP 64-128-64, MSE
    x, y = bp.input("x", (8, 64, 64)), bp.input("y", (8, 64, 64))
    names = {"Wq": (64, 64), "Wk": (64, 64), "Wv": (64, 64), "Wo": (64, 64), "W1": (64, 128),
             "W2": (128, 64)}
    P = {k: bp.param(k, s) for k, s in names.items()}
    h = bp.residual(x, lambda t: bp.multi_head_attention(t, P["Wq"], P["Wk"], P["Wv"], P["Wo"]))
    h = bp.residual(h, lambda t: bp.tanh(t @ P["W1"]) @ P["W2"])
    loss = bp.mse(h, y)

    def jattn(p, x, y):
        q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
        a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 8.0, axis=-1)
        h = x + a @ v @ p["Wo"]
        h = h + jnp.tanh(h @ p["W1"]) @ p["W2"]
        return jnp.mean((h - y) ** 2)

    vals = {k: A(*s) for k, s in names.items()}
    out["attention"] = (loss, P, vals, dict(x=A(8, 64, 64), y=A(8, 64, 64)), jattn)
    return out


def bench_models(backends, budget):
    rows = []
    for name, (loss, P, vals, data, jl) in models().items():
        jf = jax.jit(jax.value_and_grad(jl))
        jp = {k: jnp.asarray(v) for k, v in vals.items()}
        jd = {k: jnp.asarray(v) for k, v in data.items()}
        t0 = time.perf_counter()
        _, rg = jax.block_until_ready(jf(jp, **jd))
        jc = time.perf_counter() - t0
        tj = med(lambda: jax.block_until_ready(jf(jp, **jd)), budget)  # noqa: B023
        for b in backends:
            try:
                t0 = time.perf_counter()
                fn = bp.compile(loss, list(P.values()), backend=b)
                _, g = fn(**vals, **data)
                oc = time.perf_counter() - t0
            except Exception as e:  # a backend without some op: report, go on
                print(f"{name:11s} {b:6s} unavailable: {type(e).__name__}: {str(e)[:90]}")
                continue
            agree = all(np.allclose(np.asarray(g[k]), np.asarray(rg[k]), rtol=2e-3, atol=2e-5)
                        for k in vals)
            if b == "jax":
                def call(fn=fn):
                    jax.block_until_ready(fn(**vals, **data))
            else:
                def call(fn=fn):
                    fn(**vals, **data)
            to = med(call, budget)
            rows.append((name, b, tj, to, oc, jc, agree))
            print(f"{name:11s} {b:6s} jax {tj:9.1f} us  ours {to:9.1f} us  ours/jax {to / tj:6.2f}"
                  f"  compile ours {oc:6.3f}s jax {jc:6.3f}s  {'agree' if agree else 'DISAGREE'}",
                  flush=True)
    return rows


def bench_checkpoint(T=1000, B=32, I=16, H=64, budget=2.0, backend="numpy"):
    """Plain vs checkpointed BPTT of a tanh RNN: stored carries, peak traced (NumPy-allocated)
    memory of one call (numpy backend only; the llvm backend plans its arena at compile
    time: its workspace size is shown instead), time per call."""
    r = np.random.default_rng(1)
    data = dict(xs=(r.standard_normal((T, B, I)) * 0.5).astype(np.float32),
                y=r.standard_normal((B, 1)).astype(np.float32))
    vals = dict(Wx=(r.standard_normal((I, H)) * 0.1).astype(np.float32),
                Wh=(r.standard_normal((H, H)) * 0.1).astype(np.float32),
                b=np.zeros(H, np.float32), Wo=(r.standard_normal((H, 1)) * 0.1).astype(np.float32))
    res = {}
    for label, ck in (("plain", None), ("checkpoint sqrt(T)", True)):
        xs, y = bp.input("xs", (T, B, I)), bp.input("y", (B, 1))
        P = {k: bp.param(k, v.shape) for k, v in vals.items()}
        def rnn_step(h, x, P=P):  # the projection inside the step, as in bench_models_jax.py
            return bp.tanh(x @ P["Wx"] + h @ P["Wh"] + P["b"]), None

        hT, _ = bp.scan(rnn_step, bp.broadcast_to(bp.const(0.0), (B, H)), xs, checkpoint=ck)
        loss = bp.mean((hT @ P["Wo"] - y) ** 2)
        t0 = time.perf_counter()
        fn = bp.compile(loss, list(P.values()), backend=backend)
        comp = time.perf_counter() - t0
        stats = scan_stats(fn.outputs)
        fwd = stats[0]
        nested = [s["saved_carries"] for s in stats if s["depth"] > 0]
        alive = fwd["saved_carries"] + max(nested, default=0)  # nested scans run one at a time
        fn(**vals, **data)
        tracemalloc.start()
        _, g = fn(**vals, **data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if backend == "llvm":
            peak = fn.impl.program.memory.workspace_bytes
        t = med(lambda fn=fn: fn(**vals, **data), budget)
        res[label] = dict(k=fwd["save"], stored=fwd["saved_carries"], alive=alive,
                          carry_kib=alive * B * H * 4 / 1024, peak_mib=peak / 2**20, us=t,
                          compile=comp, grads=g, src=len(fn.source()))
    base = res["plain"]
    for label, v in res.items():
        same = all(np.allclose(v["grads"][k], base["grads"][k], rtol=1e-5, atol=1e-7)
                   for k in vals)
        print(f"{backend:5s} T={T} {label:18s} k={v['k']:3d} stored carries {v['stored']:5d} "
              f"peak alive {v['alive']:5d} ({v['carry_kib']:8.1f} KiB)  "
              f"{'traced peak' if backend == 'numpy' else 'workspace'} "
              f"{v['peak_mib']:6.2f} MiB  {v['us'] / 1e3:8.2f} ms/call "
              f"(x{v['us'] / base['us']:.2f})  compile {v['compile']:.2f}s  "
              f"source {v['src']} chars  grads {'equal' if same else 'DIFFER'}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="numpy,jax,llvm")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--skip-checkpoint", action="store_true")
    a = ap.parse_args()
    print(f"jax {jax.__version__}; bpcompile {bp.__version__}")
    bench_models(a.backends.split(","), a.budget)
    if not a.skip_checkpoint:
        for b in ("numpy", "llvm"):
            try:
                bench_checkpoint(backend=b)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"checkpoint benchmark on {b} failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
