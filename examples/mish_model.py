"""A Python model file: a 2-layer MLP with a user-defined activation, mish(z) = z·tanh(softplus(z)).

The activation is one SymPy expression; `bp.elementwise` turns it into a tensor op whose
derivative SymPy works out. Run it like a TOML spec:

    bpcompile compile examples/mish_model.py --emit source
    bpcompile check examples/mish_model.py
"""

import numpy as np
import sympy as sp

import bpcompile as bp
from bpcompile.spec import Init, Model

z = sp.Symbol("z")
mish = bp.elementwise(z * sp.tanh(sp.log(1 + sp.exp(z))), z, name="mish")


def build() -> Model:
    """16 samples, 8 features -> 16 mish units -> 1 output, mean squared error."""
    x = bp.input("x", (16, 8), "float64")
    y = bp.input("y", (16, 1), "float64")
    W1 = bp.param("W1", (8, 16), "float64")
    b1 = bp.param("b1", (16,), "float64")
    W2 = bp.param("W2", (16, 1), "float64")
    b2 = bp.param("b2", (1,), "float64")
    z1 = (x @ W1 + b1).named("z1")
    a1 = mish(z1).named("a1")
    out = (a1 @ W2 + b2).named("z2")
    loss = bp.mse(out, y)
    rng = np.random.default_rng(0)
    return Model(
        loss,
        [W1, b1, W2, b2],
        name="mish_mlp",
        init={"b1": Init("normal", 0.1), "b2": Init("zeros")},
        data={"x": rng.standard_normal((16, 8)), "y": np.sin(rng.standard_normal((16, 1)))},
    )
