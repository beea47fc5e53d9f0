"""Compile time at model scale: deep residual MLPs, transformer stacks, residual CNNs.

    python benchmarks/bench_compile_scale.py                       # everything (minutes)
    python benchmarks/bench_compile_scale.py --families mlp --depths 4,16 --backends llvm
    python benchmarks/bench_compile_scale.py --stages              # + time per stage

Per model and backend: graph build + compile + first call with a cold on-disk cache (a fresh
temporary BPCOMPILE_CACHE_DIR), again with the warm cache (a fresh graph build and compile of
the same model, same process; `--warm-repeats 5`: the median of five, and of its parts), and
`jax.jit(jax.value_and_grad(f))` compile + first call of the same model written in JAX (a
fresh Python function, so jit's cache cannot serve it). `--clock cpu`: our timings in process
CPU time (useful on a loaded machine). `--stages` splits the cold compile: graph build,
forward passes + autodiff, each rewrite pass (summed over the simplify rounds), codegen, and for
LLVM its parts (schedule, IR build, optimisation, object emission, loading;
`LLVMBackend.timings`) and the distinct native kernels / call sites.
Last, the growth exponent per family and backend: the slope of log(cold time) over log(depth).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

FAMILIES = {"mlp": (4, 16, 64, 256), "transformer": (2, 8, 24), "cnn": (8, 32)}


def _rand(seed):
    r = np.random.default_rng(seed)

    def A(*s, scale=0.1):
        return (r.standard_normal(s) * scale).astype(np.float32)

    return A


def mlp(depth, bp, jax, jnp, width=64, batch=32, odd=None):
    """Residual tanh MLP: h <- h + tanh(h W_i + b_i), loss = mean((h - y)^2); layer `odd`
    (if given) has sigmoid instead (--change-one-layer)."""
    A = _rand(depth)
    x, y = bp.input("x", (batch, width)), bp.input("y", (batch, width))
    ps = []
    h = x
    for i in range(depth):
        W, b = bp.param(f"W{i}", (width, width)), bp.param(f"b{i}", (width,))
        ps += [W, b]
        h = h + (bp.sigmoid if i == odd else bp.tanh)(h @ W + b)
    loss = bp.mean((h - y) ** 2)

    def data():
        return (dict(x=A(batch, width, scale=1.0), y=A(batch, width, scale=1.0)),
                {p.attr("name"): A(*p.shape) for p in ps})

    def jl(p, x, y):
        h = x
        for i in range(depth):
            h = h + jnp.tanh(h @ p[f"W{i}"] + p[f"b{i}"])
        return jnp.mean((h - y) ** 2)

    return loss, ps, data, jl


def transformer(depth, bp, jax, jnp, B=4, T=16, D=64, H=4):
    """Pre-norm transformer stack: x <- x + MHA(LN(x)) (causal); x <- x + W2 tanh(W1 LN(x))."""
    A = _rand(depth)
    x, y = bp.input("x", (B, T, D)), bp.input("y", (B, T, D))
    shapes = dict(g1=(D,), c1=(D,), Wq=(D, D), Wk=(D, D), Wv=(D, D), Wo=(D, D), g2=(D,),
                  c2=(D,), W1=(D, 4 * D), W2=(4 * D, D))
    ps, h = [], x
    for i in range(depth):
        p = {k: bp.param(f"{k}_{i}", s) for k, s in shapes.items()}
        ps += list(p.values())
        a = bp.layer_norm(h, p["g1"], p["c1"])
        h = h + bp.multi_head_attention(a, p["Wq"], p["Wk"], p["Wv"], p["Wo"], heads=H,
                                        causal=True)
        m = bp.layer_norm(h, p["g2"], p["c2"])
        h = h + bp.tanh(m @ p["W1"]) @ p["W2"]
    loss = bp.mean((h - y) ** 2)

    def data():
        return (dict(x=A(B, T, D, scale=1.0), y=A(B, T, D, scale=1.0)),
                {p.attr("name"): (1.0 + A(*p.shape) if p.attr("name")[0] == "g"
                                  else A(*p.shape)) for p in ps})

    mask = np.tril(np.ones((T, T), bool))

    def ln(v, g, c):
        mu = jnp.mean(v, -1, keepdims=True)
        d = v - mu
        return d / jnp.sqrt(jnp.mean(d * d, -1, keepdims=True) + 1e-5) * g + c

    def heads(v):
        return v.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)

    def jl(p, x, y):
        h = x
        for i in range(depth):
            a = ln(h, p[f"g1_{i}"], p[f"c1_{i}"])
            q, k, v = (heads(a @ p[f"{w}_{i}"]) for w in ("Wq", "Wk", "Wv"))
            s = jnp.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // H), -1e9)
            o = (jax.nn.softmax(s, -1) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
            h = h + o @ p[f"Wo_{i}"]
            m = ln(h, p[f"g2_{i}"], p[f"c2_{i}"])
            h = h + jnp.tanh(m @ p[f"W1_{i}"]) @ p[f"W2_{i}"]
        return jnp.mean((h - y) ** 2)

    return loss, ps, data, jl


def cnn(depth, bp, jax, jnp, N=4, C=8, S=8):
    """Residual CNN on small images: x <- x + conv(relu(conv(x))) (3x3, same padding)."""
    A = _rand(depth)
    x, y = bp.input("x", (N, C, S, S)), bp.input("y", (N, C, S, S))
    ps, h = [], x
    for i in range(depth):
        w1, w2 = bp.param(f"k1_{i}", (C, C, 3, 3)), bp.param(f"k2_{i}", (C, C, 3, 3))
        b1, b2 = bp.param(f"b1_{i}", (C,)), bp.param(f"b2_{i}", (C,))
        ps += [w1, b1, w2, b2]
        t = bp.relu(bp.conv2d(h, w1, b1, padding="same"))
        h = h + bp.conv2d(t, w2, b2, padding="same")
    loss = bp.mean((h - y) ** 2)

    def data():
        return (dict(x=A(N, C, S, S, scale=1.0), y=A(N, C, S, S, scale=1.0)),
                {p.attr("name"): A(*p.shape) for p in ps})

    def conv(v, w, b):
        out = jax.lax.conv_general_dilated(v, w, (1, 1), "SAME")
        return out + b.reshape(1, -1, 1, 1)

    def jl(p, x, y):
        h = x
        for i in range(depth):
            t = jax.nn.relu(conv(h, p[f"k1_{i}"], p[f"b1_{i}"]))
            h = h + conv(t, p[f"k2_{i}"], p[f"b2_{i}"])
        return jnp.mean((h - y) ** 2)

    return loss, ps, data, jl


BUILDERS = {"mlp": mlp, "transformer": transformer, "cnn": cnn}
# compile_once's clock: wall time, or with --clock cpu this process's CPU time (on a machine
# shared with other work, compile phases are single-threaded and CPU time is what they cost)
CLOCK = [time.perf_counter]


class PassTimer:
    """The pipeline's passes wrapped to add their wall time (all simplify rounds) to `seconds`."""

    def __init__(self):
        from bpcompile.rewrite import pipeline

        self.seconds: dict[str, float] = {}
        self.passes = [(name, self._timed(name, fn)) for name, fn in pipeline.PASSES]

    def _timed(self, name, fn):
        def run(outputs):
            t0 = time.perf_counter()
            try:
                return fn(outputs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        return run


def compile_once(family, depth, backend, stages=False):
    """(seconds for graph build + compile + first call, stage breakdown or None, whether the
    compile-cache served the program, (graph build, compile, first call) seconds); making the
    random inputs and params is not timed."""
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    t0 = CLOCK[0]()
    loss, wrt, data, _ = BUILDERS[family](depth, bp, jax, jnp)
    t_build = CLOCK[0]() - t0
    timer = PassTimer() if stages else None
    kw = {"passes": timer.passes} if timer else {}
    fn = bp.compile(loss, wrt, backend=backend, **kw)
    t1 = CLOCK[0]()
    inputs, params = data()
    t2 = CLOCK[0]()
    out = fn(**inputs, **params)
    if backend == "jax":
        jax.block_until_ready(out)
    total = CLOCK[0]() - t0 - (t2 - t1)
    hit = bool(getattr(fn.impl, "warm_hit", False))
    parts = (t_build, t1 - t0 - t_build, total - (t1 - t0))  # graph build, compile, first call
    if not stages:
        return total, None, hit, parts
    row = {"build": t_build}
    row["fwd+autodiff"] = fn.timings["graph"] - sum(timer.seconds.values())
    row.update(timer.seconds)
    row["codegen"] = fn.timings["codegen"]
    row.update({f"  {k}": v for k, v in getattr(fn.impl, "timings", {}).items()})
    row["first call"] = total - (t1 - t0)
    for k, v in getattr(fn.impl, "kernel_stats", {}).items():
        row[k] = v
    return total, row, hit, parts


def one_layer_changed(depth, backend):
    """Compile the MLP with one layer changed (a new program: both cache levels miss)."""
    import jax

    import bpcompile as bp

    t0 = CLOCK[0]()
    fn = bp.compile(*mlp(depth, bp, jax, jax.numpy, odd=depth // 2)[:2], backend=backend)
    t = CLOCK[0]() - t0
    parts = {"graph+passes": fn.timings["graph"], **getattr(fn.impl, "timings", {})}
    parts.pop("llvm", None)  # the sum of the LLVM parts
    return t, parts


def second_process(family, depth, backend) -> dict:
    """Warm compile in a fresh Python process (the on-disk case): its parts, in seconds, with
    the one-time costs of a process (imports, LLVM initialisation) apart from the compile."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--child", family, str(depth), backend],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ))
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(family, depth, backend):
    """--child: one warm compile in this fresh process; prints its parts as JSON (wall seconds,
    and the compile's CPU seconds). JAX is never imported here (the builders use it only in
    the JAX reference), so `jax imported` says whether the compile or the call imported it."""
    import json
    import sys

    t0 = time.perf_counter()
    import bpcompile as bp
    from bpcompile.compiled import get_backend

    get_backend(backend)
    t1 = time.perf_counter()
    if backend == "llvm":
        from bpcompile.backends.llvm import jit

        jit.init()  # LLVM's target initialisation: once per process
    t2 = time.perf_counter()
    loss, wrt, data, _ = BUILDERS[family](depth, bp, None, None)
    t3 = time.perf_counter()
    c3 = time.process_time()
    fn = bp.compile(loss, wrt, backend=backend)
    c4 = time.process_time()
    t4 = time.perf_counter()
    inputs, params = data()
    t5 = time.perf_counter()
    fn(**inputs, **params)
    t6 = time.perf_counter()
    print(json.dumps({"imports": t1 - t0, "llvm init": t2 - t1, "build": t3 - t2,
                      "compile": t4 - t3, "compile cpu": c4 - c3, "first call": t6 - t5,
                      "status": fn.cache_status, "jax imported": "jax" in sys.modules}))


def fingerprint_ms(family, depth, repeats=7) -> float:
    """Median CPU ms of the compile-cache's structural hash of the model's graph."""
    import jax

    import bpcompile as bp
    from bpcompile.ir.fingerprint import fingerprint

    loss, wrt, _, _ = BUILDERS[family](depth, bp, jax, jax.numpy)
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        fingerprint([loss], wrt)
        ts.append(time.process_time() - t0)
    return float(np.median(ts)) * 1e3


def jax_once(family, depth):
    """jax.jit(jax.value_and_grad(f)) compile + first call, fresh function."""
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    _, _, data, jl = BUILDERS[family](depth, bp, jax, jnp)
    inputs, params = data()
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    ji = {k: jnp.asarray(v) for k, v in inputs.items()}
    t0 = time.perf_counter()
    f = jax.jit(jax.value_and_grad(lambda p, x, y: jl(p, x, y)))
    jax.block_until_ready(f(jp, **ji))
    return time.perf_counter() - t0


def slope(depths, times):
    if len(depths) < 2:
        return float("nan")
    return float(np.polyfit(np.log(depths), np.log(times), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--depths", default="", help="comma list, overrides each family's depths")
    ap.add_argument("--backends", default="numpy,llvm,jax")
    ap.add_argument("--no-jax-ref", action="store_true", help="skip the jax.jit reference")
    ap.add_argument("--no-warm", action="store_true")
    ap.add_argument("--stages", action="store_true", help="print time per stage (cold)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: our timings in process CPU time (jax.jit's stay wall time)")
    ap.add_argument("--change-one-layer", action="store_true",
                    help="(mlp) also compile the model with one layer's activation changed "
                         "after the warm compile: what a per-kernel cache could save")
    ap.add_argument("--second-process", action="store_true",
                    help="also compile each model warm in a fresh process (wall time)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--fingerprint", action="store_true",
                    help="also print the structural hash's CPU time per model")
    ap.add_argument("--warm-repeats", type=int, default=1,
                    help="warm figure: median of this many warm compiles; > 1 also prints "
                         "the medians of its parts (graph build, compile, first call)")
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child[0], int(a.child[1]), a.child[2])
    CLOCK[0] = time.process_time if a.clock == "cpu" else time.perf_counter
    import jax  # noqa: F401  (imports outside the timings)

    import bpcompile as bp  # noqa: F401

    backends = a.backends.split(",")
    mlp(2, bp, jax, jax.numpy)  # warm sympy and the op tables
    bp.compile(*mlp(2, bp, jax, jax.numpy)[:2], backend="numpy")
    print(f"{'model':16s} {'backend':8s} {'cold s':>8s} {'warm s':>8s} {'jax.jit s':>9s} "
          f"{'jax/cold':>8s}")
    cold: dict = {}
    for fam in a.families.split(","):
        depths = [int(d) for d in a.depths.split(",")] if a.depths else FAMILIES[fam]
        for depth in depths:
            ref = float("nan") if a.no_jax_ref else jax_once(fam, depth)
            if a.fingerprint:
                ms = fingerprint_ms(fam, depth)
                print(f"{fam + '-' + str(depth):16s} structural hash {ms:.2f} ms CPU (median of 7)",
                      flush=True)
            cold.setdefault((fam, "jax.jit"), []).append((depth, ref))
            for be in backends:
                os.environ["BPCOMPILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bp-scale-")
                t, row, _, _ = compile_once(fam, depth, be, stages=a.stages)
                warm = [] if a.no_warm else [compile_once(fam, depth, be)
                                             for _ in range(max(a.warm_repeats, 1))]
                w = float(np.median([r[0] for r in warm])) if warm else float("nan")
                hit = bool(warm) and all(r[2] for r in warm)
                cold.setdefault((fam, be), []).append((depth, t))
                print(f"{fam + '-' + str(depth):16s} {be:8s} {t:8.3f} {w:8.3f}"
                      f"{' ' if hit else '*'}{ref:8.3f} {ref / t:8.2f}", flush=True)
                if a.second_process:
                    r = second_process(fam, depth, be)
                    head = f"{r.pop('status')}, jax imported: {r.pop('jax imported')}"
                    print(f"    fresh process ({head}): " + ", ".join(
                        f"{k} {v * 1e3:.1f} ms" for k, v in r.items()), flush=True)
                if a.change_one_layer and fam == "mlp":
                    t1, parts = one_layer_changed(depth, be)
                    total = sum(parts.values())  # wall-clock parts: shown as shares
                    print(f"    one layer changed: {t1:.3f} s; shares: " + ", ".join(
                        f"{k} {100 * v / total:.0f}%" for k, v in parts.items()), flush=True)
                if len(warm) > 1:
                    med = np.median([r[3] for r in warm], axis=0) * 1e3
                    print(f"    warm, median of {len(warm)}: graph build {med[0]:.1f} ms, "
                          f"compile {med[1]:.1f} ms, first call {med[2]:.1f} ms", flush=True)
                if row:
                    print("    " + ", ".join(
                        f"{k.strip()}={v:.3f}" if isinstance(v, float) else f"{k.strip()}={v}"
                        for k, v in row.items()), flush=True)
    print("* warm compile not served by the graph-level compile-cache (warm_cache.py)")
    print("growth exponent (log-log slope of cold time over depth):")
    for (fam, be), pts in cold.items():
        d, t = zip(*pts)
        print(f"  {fam:12s} {be:8s} {slope(d, t):6.2f}")


if __name__ == "__main__":
    main()
