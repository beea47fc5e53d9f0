"""Memory and time of rematerialisation (issue #17): a deep residual MLP, plain vs
`bp.checkpoint` on every block (recompute everything / `dots_saveable`), against JAX's
`jax.grad` with `jax.checkpoint` on every block; `memory_budget=` at 100/50/25 % of the plain
plan, at 25 % of the activations (gradients + a quarter of the rest), at the smallest feasible
budget and at the plan of per-block checkpointing, on the MLP and on bench_compile_scale's
8-block transformer.

    block(h) = h + relu(h @ W1 + b1) @ W2,  loss = mean((block^L(x))^2)

Reported per variant: planned peak bytes and bytes saved for the backward pass (LLVM memory
plan), measured peak (NumPy: tracemalloc during one call; LLVM: output bytes + the workspace
bytes a call really writes, found by filling the arena with a pattern first; JAX: XLA's
temp + output bytes from `compiled.memory_analysis()`), the NumPy plan (estimate) vs
tracemalloc for the budget rows, and the median time of one forward+backward call (budget
rows: interleaved with the plain step, and their ratio to it).

    python benchmarks/bench_memory.py [--blocks 32] [--width 128] [--batch 512] [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import bpcompile as bp  # noqa: E402

VARIANTS = {"plain": None, "checkpoint": "nothing_saveable", "dots_saveable": "dots_saveable"}


def build(blocks: int, width: int, batch: int, policy: str | None, plain: bool):
    x = bp.input("x", (batch, width), "float32")
    params = []
    h = x

    def block(h, W1, b1, W2):
        return h + bp.relu(h @ W1 + b1) @ W2

    for i in range(blocks):
        W1 = bp.param(f"W1_{i}", (width, width), "float32")
        b1 = bp.param(f"b1_{i}", (width,), "float32")
        W2 = bp.param(f"W2_{i}", (width, width), "float32")
        params += [W1, b1, W2]
        f = block if plain else bp.checkpoint(block, policy=policy)
        h = f(h, W1, b1, W2)
    return bp.mean(h * h), params


def values(blocks, width, batch):
    r = np.random.default_rng(0)
    v = {"x": r.standard_normal((batch, width)).astype(np.float32)}
    s = 0.5 / np.sqrt(width)
    for i in range(blocks):
        v[f"W1_{i}"] = (s * r.standard_normal((width, width))).astype(np.float32)
        v[f"b1_{i}"] = np.zeros(width, np.float32)
        v[f"W2_{i}"] = (s * r.standard_normal((width, width))).astype(np.float32)
    return v


def timed(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def alternating(fns: dict, reps: int) -> dict:
    """Median seconds per call of each function, calls interleaved (a shared, loaded machine
    slows all of them alike, so the ratios hold)."""
    ts: dict = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def arena_measured(fn, vals) -> int:
    """LLVM: output bytes + the workspace bytes one call writes (up to the highest)."""
    arena = fn.impl.thread_arena()
    ws = arena.block[arena.ws_addr - arena.lo:]
    ws[:] = 0xA5
    fn(**vals)
    changed = np.flatnonzero(ws != 0xA5)
    top = int(changed[-1]) + 1 if changed.size else 0
    return fn.memory()["output_bytes"] + top


def traced_peak(f) -> int:
    """Bytes tracemalloc sees allocated at once during one call (NumPy reports its buffers)."""
    tracemalloc.start()
    f()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def ours(backend, args, vals):
    rows = []
    for name, policy in VARIANTS.items():
        loss, wrt = build(args.blocks, args.width, args.batch, policy, name == "plain")
        fn = bp.compile(loss, wrt, backend=backend)
        row = {"variant": f"bp {backend} {name}"}
        if backend == "llvm":
            m = fn.memory()
            row.update(planned=m["peak_bytes"], saved=m["saved_for_backward_bytes"],
                       measured=arena_measured(fn, vals))
        else:
            m = fn.memory(timeline=True)
            row["planned"] = m["peak_bytes"]
            tracemalloc.start()
            fn(**vals)
            row["measured"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if backend == "jax":
                ma = fn.lowered().compile().memory_analysis()
                row["measured"] = ma.temp_size_in_bytes + ma.output_size_in_bytes
        row["ms"] = 1e3 * timed(lambda fn=fn: fn(**vals), args.reps)
        rows.append(row)
    return rows


def budget_rows(label, loss, wrt, vals, reps, extra=()):
    """memory_budget at 100/50/25 % of the unconstrained planned peak and at the smallest
    feasible budget (from the infeasible-budget error), plus `extra` (name, bytes) budgets:
    LLVM planned peak, NumPy planned (estimate) vs tracemalloc peak, LLVM time per step and
    its ratio to the plain step (interleaved medians)."""
    import re

    peak = bp.compile(loss, wrt, backend="llvm").memory()["peak_bytes"]
    try:
        bp.compile(loss, wrt, backend="llvm", memory_budget=1)
        least = 1
    except bp.BPError as e:
        least = int(re.search(r">= (\d+)", str(e)).group(1))
    floor = sum(w.size * np.dtype(w.dtype).itemsize for w in wrt)
    rows, fns = [], {}
    act = ("25%act", floor + (peak - floor) // 4)  # a quarter of what is not gradients
    for name, b in (("100%", peak), ("50%", peak // 2), ("25%", peak // 4), act,
                    ("min", least), *extra):
        row = {"variant": f"bp {label} budget {name}", "planned": b, "saved": None,
               "measured": None, "ms": float("nan"), "key": name}
        rows.append(row)
        if b < least:
            row["note"] = "infeasible"
            continue
        fn = bp.compile(loss, wrt, backend="llvm", memory_budget=b)
        m = fn.memory()
        nfn = bp.compile(loss, wrt, backend="numpy", memory_budget=max(b, least))
        r = m["remat"]
        row.update(planned=m["peak_bytes"], saved=m["saved_for_backward_bytes"],
                   measured=arena_measured(fn, vals),
                   np_planned=nfn.memory(timeline=True)["peak_bytes"],
                   np_traced=traced_peak(lambda nfn=nfn: nfn(**vals)),
                   note=f"{r['recomputed_segments']}/{r['segments']} segs recomputed in "
                        f"{r['recompute_groups']} groups (+{r['nested_groups']} nested)"
                        + (", matmuls saved" if r.get("policy") == "dots_saveable" else ""))
        fns[name] = lambda fn=fn: fn(**vals)
    plain = bp.compile(loss, wrt, backend="llvm")
    fns["plain"] = lambda: plain(**vals)
    t = alternating(fns, reps)
    for row in rows:
        key = row.pop("key")
        if key in t:
            row["ms"] = 1e3 * t[key]
            row["note"] += f"; {t[key] / t['plain']:.2f}x plain"
    rows.append({"variant": f"bp {label} gradient floor", "planned": floor, "saved": None,
                 "measured": None, "ms": float("nan"),
                 "note": "the parameter gradients alone (outputs)"})
    return rows


def transformer_model():
    """bench_compile_scale's 8-block transformer (B=4, T=16, D=64, 4 heads), float32."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_compile_scale import transformer

    loss, ps, data, _ = transformer(8, bp, None, None)
    inputs, P = data()
    return loss, ps, {**inputs, **P}


def jax_rows(args, vals):
    import jax
    import jax.numpy as jnp

    def block(h, p):
        return h + jax.nn.relu(h @ p[0] + p[1]) @ p[2]

    def make(wrap):
        def loss(params, x):
            h = x
            for p in params:
                h = wrap(block)(h, p)
            return jnp.mean(h * h)
        return jax.jit(jax.value_and_grad(loss))

    params = [tuple(jnp.asarray(vals[f"{k}_{i}"]) for k in ("W1", "b1", "W2"))
              for i in range(args.blocks)]
    x = jnp.asarray(vals["x"])
    rows = []
    for name, wrap in (("plain", lambda f: f), ("checkpoint", jax.checkpoint),
                       ("dots_saveable", lambda f: jax.checkpoint(
                           f, policy=jax.checkpoint_policies.dots_saveable))):
        f = make(wrap)
        ma = f.lower(params, x).compile().memory_analysis()

        def call(f=f):
            v, g = f(params, x)
            v.block_until_ready()
        rows.append({"variant": f"jax.grad {name}", "planned": None, "saved": None,
                     "measured": ma.temp_size_in_bytes + ma.output_size_in_bytes,
                     "ms": 1e3 * timed(call, args.reps)})
    return rows


def hlo_stats(f, *args) -> str:
    """Dots before (StableHLO) and after XLA's optimisation, barriers left, XLA's buffers: a
    recomputed block shows as extra dots that survive optimisation."""
    import re

    low = f.lower(*args)
    comp = low.compile()
    opt = comp.as_text()
    ma = comp.memory_analysis()
    return (f"dots {low.as_text().count('stablehlo.dot_general')} -> "
            f"{len(re.findall(r' dot[(]', opt))} optimized, opt-barriers "
            f"{low.as_text().count('optimization_barrier')} -> {opt.count('opt-barrier')}, "
            f"temp+out {(ma.temp_size_in_bytes + ma.output_size_in_bytes) / 2**20:.2f} MiB")


def equal_memory(args, vals):
    """Recompute time at equal memory, all calls interleaved: our LLVM step at the budget of
    the per-block checkpoint plan vs JAX's per-block `jax.checkpoint` / dots_saveable, each
    against its own plain step."""
    import jax
    import jax.numpy as jnp

    loss, wrt = build(args.blocks, args.width, args.batch, None, True)
    ck, _ = build(args.blocks, args.width, args.batch, "nothing_saveable", False)
    ckpt_peak = bp.compile(ck, wrt, backend="llvm").memory()["peak_bytes"]
    plain = bp.compile(loss, wrt, backend="llvm")
    fit = bp.compile(loss, wrt, backend="llvm", memory_budget=ckpt_peak)

    def block(h, p):
        return h + jax.nn.relu(h @ p[0] + p[1]) @ p[2]

    def make(wrap):
        def f(params, x):
            h = x
            for p in params:
                h = wrap(block)(h, p)
            return jnp.mean(h * h)
        return jax.jit(jax.value_and_grad(f))

    params = [tuple(jnp.asarray(vals[f"{k}_{i}"]) for k in ("W1", "b1", "W2"))
              for i in range(args.blocks)]
    x = jnp.asarray(vals["x"])
    js = {"jax plain": make(lambda f: f), "jax checkpoint": make(jax.checkpoint),
          "jax dots_saveable": make(lambda f: jax.checkpoint(
              f, policy=jax.checkpoint_policies.dots_saveable))}
    print("XLA's optimized HLO (does it recompute?):")
    for k, f in js.items():
        print(f"  {k:24s} {hlo_stats(f, params, x)}")
    fns = {"bp plain": lambda: plain(**vals), "bp budget=ckpt plan": lambda: fit(**vals)}
    for k, f in js.items():
        fns[k] = lambda f=f: f(params, x)[0].block_until_ready()
    t = alternating(fns, args.reps)
    print(f"equal memory ({ckpt_peak / 2**20:.2f} MiB, the per-block checkpoint plan; "
          f"ours at it: {fit.memory()['peak_bytes'] / 2**20:.2f} MiB), interleaved medians:")
    for k, v in t.items():
        base = t["bp plain"] if k.startswith("bp") else t["jax plain"]
        print(f"  {k:24s} {1e3 * v:8.2f} ms  recompute {1e3 * (v - base):+7.2f} ms "
              f"({v / base:.2f}x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--backends", default="llvm,numpy,jax")
    ap.add_argument("--transformer", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--equal-memory", action="store_true",
                    help="only the interleaved equal-memory comparison with JAX")
    args = ap.parse_args()
    vals = values(args.blocks, args.width, args.batch)
    if args.equal_memory:
        return equal_memory(args, vals)
    rows = []
    for be in args.backends.split(","):
        rows += ours(be, args, vals)
    jrows = jax_rows(args, vals) if "jax" in args.backends else []
    if "llvm" in args.backends:
        loss, wrt = build(args.blocks, args.width, args.batch, None, True)
        # equal memory: the plan of checkpointing every block (JAX's per-block scheme; XLA's
        # memory_analysis on CPU does not see its remat, docs/performance.md)
        same = [("=ckpt", r["planned"]) for r in rows if r["variant"] == "bp llvm checkpoint"]
        rows += budget_rows("mlp", loss, wrt, vals, args.reps, same)
        if args.transformer:
            rows += budget_rows("transformer", *transformer_model(), args.reps)
    rows += jrows

    def mib(b):
        return "-" if b is None else f"{b / 2**20:.2f}"

    print(f"MLP: {args.blocks} blocks, width {args.width}, batch {args.batch}, float32")
    print(f"{'variant':32s} {'planned MiB':>11s} {'saved MiB':>9s} {'measured MiB':>12s} "
          f"{'np plan/traced MiB':>18s} {'ms/step':>8s}")
    for r in rows:
        npc = (f"{mib(r['np_planned'])}/{mib(r['np_traced'])}" if "np_planned" in r else "-")
        print(f"{r['variant']:32s} {mib(r.get('planned')):>11s} {mib(r.get('saved')):>9s} "
              f"{mib(r['measured']):>12s} {npc:>18s} {r['ms']:8.2f}  {r.get('note', '')}")


if __name__ == "__main__":
    main()
