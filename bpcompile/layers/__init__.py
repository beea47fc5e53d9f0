"""Layers built as composites of primitives: convolution, pooling, attention, normalisation,
dropout, embedding, recurrent cells. Only primitives carry VJPs and lowerings, so every
backend runs these (docs/layers.md)."""

from ..ops.scan import scan, scan_stats  # noqa: F401
from .attention import (  # noqa: F401
    causal_mask,
    merge_heads,
    multi_head_attention,
    scaled_dot_product_attention,
    split_heads,
)
from .basic import dropout, dropout_mask, dropout_masks, embedding, residual  # noqa: F401
from .conv import (  # noqa: F401
    avg_pool2d,
    conv1d,
    conv2d,
    first_max,
    flatten,
    global_avg_pool,
    max_pool2d,
)
from .norm import batch_norm, layer_norm  # noqa: F401
from .recurrent import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell  # noqa: F401

__all__ = [
    "avg_pool2d", "batch_norm", "causal_mask", "conv1d", "conv2d", "dropout", "dropout_mask",
    "dropout_masks", "embedding", "first_max", "flatten", "global_avg_pool", "layer_norm",
    "max_pool2d", "merge_heads", "multi_head_attention", "residual",
    "scaled_dot_product_attention", "split_heads", "gru", "gru_cell", "lstm", "lstm_cell",
    "rnn", "rnn_cell", "scan", "scan_stats",
]
