"""Layers built as composites of primitives: convolution, pooling, attention, normalisation,
dropout, embedding, recurrent cells. Only primitives carry VJPs and lowerings, so every
backend runs these (docs/layers.md)."""

from .attention import (  # noqa: F401
    causal_mask, merge_heads, multi_head_attention, scaled_dot_product_attention, split_heads,
)
from .basic import dropout, dropout_mask, dropout_masks, embedding, residual  # noqa: F401
from .conv import (  # noqa: F401
    avg_pool2d, conv1d, conv2d, first_max, flatten, global_avg_pool, max_pool2d,
)
from .norm import batch_norm, layer_norm  # noqa: F401
