"""LLVM backend vs jax.jit(jax.value_and_grad(...)) on the benchmark models, one process.

    python benchmarks/bench_llvm.py [models...] [--budget S] [--gemm-threshold] [--gemm-threads]
    python benchmarks/bench_llvm.py mlp_mnist --blas-floor

Prints per model: median µs per call (ours, JAX), ratio JAX/ours, compile seconds with a cold
and a warm on-disk cache (ours; warm = a fresh compile of the same graph), JAX's compile time,
and whether the gradients agree. --gemm-threshold times single 2-d float32 matmuls through
inline loops and through BLAS to place blas.GEMM_THRESHOLD; --gemm-threads times the products
of the benchmark models on one and on two BLAS threads to place blas.PARALLEL_THRESHOLD and
blas.PARALLEL_MIN_OUTPUT. --blas-floor times each model's gradient against its own matrix
products alone: every matmul of the compiled graph through NumPy's matmul (the OpenBLAS the
generated code calls, same threads) at its shapes and operand layouts, and their sum.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import ALL, build, median_us  # noqa: E402


def bench_models(which, budget):
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    print(f"{'model':10s} {'ours us':>9s} {'JAX us':>9s} {'JAX/ours':>8s}  "
          f"{'compile cold/warm s':>19s}  {'JAX compile s':>13s}  grads")
    cache = tempfile.mkdtemp(prefix="bpcompile-bench-")
    os.environ["BPCOMPILE_CACHE_DIR"] = cache
    for name, (loss, wrt, I, P, jl) in build(which or ALL).items():
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


def bench_gemm_threads(budget):
    """One vs two OpenBLAS threads for single float32 products (row-major A @ B or Aᵀ @ B)."""
    import bpcompile as bp
    from bpcompile.backends.llvm.backend import LLVMBackend

    print(f"{'M x K x N':>16s} {'form':>5s} {'1 thread us':>12s} {'2 threads us':>13s}")
    r = np.random.default_rng(0)
    for m, k, n, form in ((512, 64, 64, "A@B"), (512, 64, 128, "A@B"), (128, 256, 256, "A@B"),
                          (64, 512, 64, "AT@B"), (64, 512, 128, "AT@B"), (256, 128, 256, "AT@B")):
        if form == "A@B":
            a, b = bp.input("a", (m, k)), bp.input("b", (k, n))
            c, va = a @ b, r.standard_normal((m, k)).astype(np.float32)
        else:
            a, b = bp.input("a", (k, m)), bp.input("b", (k, n))
            c, va = bp.transpose(a, (1, 0)) @ b, r.standard_normal((k, m)).astype(np.float32)
        vb = r.standard_normal((k, n)).astype(np.float32)
        row = []
        for threads in (1, 2):
            be = LLVMBackend([c], [a, b], gemm_threshold=0, blas_threads=threads, cache=False)
            row.append(median_us(lambda: be.run([va, vb]), budget))
        print(f"{m:4d} x{k:4d} x{n:4d} {form:>5s} {row[0]:12.1f} {row[1]:13.1f}", flush=True)


def bench_blas_floor(which, budget):
    """Our gradient call against the sum of its graph's products alone, each timed through
    np.matmul (NumPy's OpenBLAS, which the LLVM code calls) at the graph's shapes, with an
    operand the graph reads through a 2-d transpose given as a transposed view (BLAS's T)."""
    import bpcompile as bp
    from bpcompile.ir.traverse import toposort

    r = np.random.default_rng(0)

    def operand(x):
        if x.op == "transpose" and x.ndim == 2 and x.attr("perm") == (1, 0):
            return r.standard_normal(x.inputs[0].shape).astype(x.dtype).T
        return r.standard_normal(x.shape).astype(x.dtype)

    for name, (loss, wrt, I, P, _) in build(which or ["mlp_mnist"]).items():
        fn = bp.compile(loss, wrt, backend="llvm")
        ours = median_us(lambda: fn(**I, **P), budget)
        print(f"{name}: gradient {ours:.1f} us; its products alone through np.matmul:")
        total = 0.0
        for n in toposort(fn.stages[-1].outputs):
            if n.op != "matmul":
                continue
            a, b = (operand(x) for x in n.inputs)
            out = np.empty(n.shape, n.dtype)
            t = median_us(lambda: np.matmul(a, b, out=out), budget / 4)
            total += t
            form = "".join("T" if not x.flags.c_contiguous else "N" for x in (a, b))
            flops = 2 * np.prod(n.shape) * n.inputs[0].shape[-1]
            print(f"  {a.shape} @ {b.shape} ({form}) {t:8.1f} us {flops / t / 1e3:6.1f} GFLOP/s")
        print(f"  sum of products {total:.1f} us; gradient / products = {ours / total:.2f}",
              flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--budget", type=float, default=1.5)
    ap.add_argument("--gemm-threshold", action="store_true")
    ap.add_argument("--gemm-threads", action="store_true")
    ap.add_argument("--blas-floor", action="store_true")
    a = ap.parse_args(argv)
    if a.blas_floor:
        bench_blas_floor(a.models, a.budget / 2)
    elif a.gemm_threshold:
        bench_gemm(a.budget / 4)
    elif a.gemm_threads:
        bench_gemm_threads(a.budget / 4)
    else:
        bench_models(a.models, a.budget)


if __name__ == "__main__":
    sys.exit(main())
