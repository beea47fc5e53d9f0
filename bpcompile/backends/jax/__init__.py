"""JAX backend: the compiler's own graphs emitted as jax.numpy source and run through XLA."""
