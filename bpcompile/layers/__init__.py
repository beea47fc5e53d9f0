"""Layers built as composites of primitives: convolution, pooling, attention, normalisation,
recurrent cells. Only primitives carry VJPs and lowerings, so every backend runs these."""

from .conv import (  # noqa: F401
    avg_pool2d, conv1d, conv2d, first_max, flatten, global_avg_pool, max_pool2d,
)
