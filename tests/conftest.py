"""Test configuration: JAX runs with 64-bit enabled so float64 graphs compare at rtol 1e-10.

float32 graphs still produce float32 arrays (dtypes are explicit everywhere).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # the jax extra is part of `pip install .[test]`; without it JAX tests skip
    pass
