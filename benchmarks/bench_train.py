"""Training steps per second: bpcompile's compiled train step vs a jax.jit-compiled optax step.

Both sides run forward + backward + Adam update for the same model, batch and init in the same
process; JAX's step is `jax.jit`ted with donated params/state and synchronised every step
(`block_until_ready` on the loss, as a training loop that logs the loss must). Models:

  xor    2-2-1 sigmoid, sum-of-squares, batch 4 (float64 and float32)
  small  10-32-32-1 tanh MLP, MSE, batch 1 (examples/mlp_small.toml)
  mnist  784-256-256-10 ReLU MLP, softmax cross-entropy, batch 128 (examples/mnist_mlp.toml)

Targets: >= 10x JAX for xor and small, >= 1.5x for mnist, on the LLVM backend.

    python benchmarks/bench_train.py [--backend llvm] [--models xor,small,mnist] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent


def _model(name: str, dtype: str = "float32"):
    """(spec Model, batch dict, jax loss function(params, batch))."""
    import jax
    import jax.numpy as jnp

    from bpcompile import spec
    from bpcompile.toml_read import toml_module

    if name == "xor":
        m = spec.load(ROOT / "examples" / "xor.toml")
        if dtype == "float32":
            doc = toml_module().loads((ROOT / "examples" / "xor.toml").read_text())
            doc["model"]["dtype"] = "float32"
            m = spec.from_dict(doc, "xor32", "xor")
        batch = m.example_inputs()

        def f(p, b):
            h = jax.nn.sigmoid(b["x"] @ p["W1"] + p["b1"])
            o = jax.nn.sigmoid(h @ p["W2"] + p["b2"])
            return 0.5 * jnp.sum((o - b["y"]) ** 2)
    elif name == "small":
        m = spec.load(ROOT / "examples" / "mlp_small.toml")
        batch = m.example_inputs()

        def f(p, b):
            h = jnp.tanh(b["x"] @ p["W1"] + p["b1"])
            h = jnp.tanh(h @ p["W2"] + p["b2"])
            return jnp.mean((h @ p["W3"] + p["b3"] - b["y"]) ** 2)
    elif name == "mnist":
        m = spec.load(ROOT / "examples" / "mnist_mlp.toml")
        batch = m.example_inputs()

        def f(p, b):
            h = jax.nn.relu(b["x"] @ p["W1"] + p["b1"])
            h = jax.nn.relu(h @ p["W2"] + p["b2"])
            logits = h @ p["W3"] + p["b3"]
            lp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(lp, b["labels"][:, None], 1))
    else:
        raise SystemExit(f"unknown model {name!r}")
    return m, batch, f


def _rate(fn, seconds: float) -> float:
    """Steps per second: best of 3 timed windows after a warm-up."""
    for _ in range(20):
        fn()
    n = 10
    while True:  # calibrate to ~seconds/3 per window
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt > seconds / 10 or n > 10**7:
            break
        n *= 4
    n = max(1, int(n * (seconds / 3) / max(dt, 1e-9)))
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def bench(name: str, backend: str, seconds: float, dtype: str = "float32") -> dict:
    import jax
    import optax

    from bpcompile import optim
    from bpcompile.train import compile_train_step

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    m, batch, f = _model(name, dtype)
    init = m.init_params(0)
    step = compile_train_step(m, None, optim.adam(1e-3), backend=backend, init=init,
                              check_finite=False)
    ours = _rate(lambda: step(**batch), seconds)

    tx = optax.adam(1e-3)

    def jstep(p, s, b):
        loss, g = jax.value_and_grad(f)(p, b)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    jstep = jax.jit(jstep, donate_argnums=(0, 1))
    state = {"p": {k: jax.numpy.asarray(v) for k, v in init.items()}}
    state["s"] = tx.init(state["p"])
    jb = {k: jax.numpy.asarray(v) for k, v in batch.items()}

    def run_jax():
        state["p"], state["s"], loss = jstep(state["p"], state["s"], jb)
        loss.block_until_ready()

    theirs = _rate(run_jax, seconds)
    # sanity: both took the same steps from the same init; losses should agree closely
    return {"model": name, "dtype": dtype, "backend": backend, "bpcompile_steps_per_s": ours,
            "jax_steps_per_s": theirs, "speedup": ours / theirs,
            "bpcompile_us_per_step": 1e6 / ours, "jax_us_per_step": 1e6 / theirs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--models", default="xor,small,mnist")
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        r = bench(name, a.backend, a.seconds)
        rows.append(r)
        print(f"{name:6s} {r['dtype']:8s} bpcompile[{a.backend}] {r['bpcompile_us_per_step']:9.2f} "
              f"us/step ({r['bpcompile_steps_per_s']:10,.0f}/s)   jax.jit+optax "
              f"{r['jax_us_per_step']:9.2f} us/step ({r['jax_steps_per_s']:10,.0f}/s)   "
              f"speedup {r['speedup']:6.1f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
