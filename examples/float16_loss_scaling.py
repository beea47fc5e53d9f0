"""Why float16 training needs loss scaling: gradients below 6e-8 flush to zero.

A linear model on inputs of size ~2e-4 has gradients ~1e-9: float32 represents them, float16
(smallest subnormal 6e-8) rounds every one to zero, so float16 mixed precision without scaling
never moves the weights. Scaling the loss by S (2**14 here, or a dynamic scale that halves on
overflow) lifts the backward values into float16's range; the float32 gradients are divided by
S before the update, which then matches float32's (docs/dtypes.md; tests/test_loss_scale.py).

    python examples/float16_loss_scaling.py [--backend numpy|llvm|jax]
"""

from __future__ import annotations

import argparse

import numpy as np

import bpcompile as bp

A = 2e-4  # the inputs' magnitude
LR = 1e-2 / A ** 2  # SGD step: the update is ~1e-2


def updates(backend: str = "numpy") -> dict:
    """{setting: the first SGD update of W} for float32, float16 unscaled, static, dynamic."""
    r = np.random.default_rng(0)
    xv = (r.normal(size=(8, 4)) * A).astype(np.float32)
    W0 = (r.normal(size=(4, 2)) * 0.5).astype(np.float32)
    x, W = bp.input("x", (8, 4)), bp.param("W", (4, 2))
    loss = bp.mean((x @ W) ** 2)
    out = {}
    for name, precision, scale in [("float32", None, None), ("float16", "float16", None),
                                   ("float16, static 2**14", "float16", 2.0 ** 14),
                                   ("float16, dynamic", "float16", "dynamic")]:
        st = bp.compile_train_step(loss, [W], bp.optim.sgd(LR), backend, init={"W": W0},
                                   precision=precision, loss_scale=scale)
        while st.count == 0:  # a dynamic scale starts at 2**15 and may skip a step first
            st(x=xv)
        out[name] = st.params["W"] - W0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="numpy")
    res = updates(ap.parse_args().backend)
    ref = res["float32"]
    for name, d in res.items():
        rel = np.abs(d - ref).max() / np.abs(ref).max()
        print(f"{name:24s} |update| max {np.abs(d).max():.3e}  vs float32: {rel:.2e}")


if __name__ == "__main__":
    main()
