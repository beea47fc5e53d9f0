"""Recurrent layers on `scan`: vanilla RNN, LSTM and GRU cells and whole-sequence layers.

The layers take time-major inputs xs (T, B, I). The input projection x·Wx + b of every step is
one (T·B, I) @ (I, G) matmul hoisted out of the loop; the loop body only does h·Wh and the
gates. Gradients are BPTT through `scan`'s VJP (truncated / checkpointed on request: pass
truncate=k or checkpoint=... through **scan_options).

Gate layouts follow PyTorch: LSTM columns (i, f, g, o), GRU columns (r, z, n) with
n = tanh(x·W_in + b_in + r ⊙ (h·W_hn + b_hn)) and h' = (1 - z) ⊙ n + z ⊙ h.
"""

from __future__ import annotations

from typing import Any

from ..errors import ShapeError
from ..ir.hints import TensorLike
from ..ir.node import Node
from ..nn import activation as _activation
from ..ops.elementwise import add, as_node, mul, sub, unary
from ..ops.linalg import matmul
from ..ops.movement import reshape, slice_
from ..ops.scan import scan


def _cols(z: Node, k: int, n: int) -> list[Node]:
    """Split the last axis of z into k blocks of n columns."""
    lead = z.shape[:-1]
    return [slice_(z, (0,) * len(lead) + (i * n,), lead + ((i + 1) * n,), (1,) * z.ndim)
            for i in range(k)]


def rnn_cell(h: TensorLike, xw: TensorLike, Wh: TensorLike, activation: str = "tanh") -> Node:
    """h' = act(xw + h·Wh), where xw = x·Wx + b is the step's input projection."""
    return _activation(add(xw, matmul(h, Wh)), activation)


def lstm_cell(h: Node, c: Node, xw: Node, Wh: Node) -> tuple[Node, Node]:
    """One LSTM step from the input projection xw = x·Wx + b (B, 4H); returns (h', c')."""
    hsz = h.shape[-1]
    i, f, g, o = _cols(add(xw, matmul(h, Wh)), 4, hsz)
    c2 = add(mul(unary("sigmoid", f), c), mul(unary("sigmoid", i), unary("tanh", g)))
    h2 = mul(unary("sigmoid", o), unary("tanh", c2))
    return h2, c2


def gru_cell(h: Node, xw: Node, Wh: Node, bh: Node) -> Node:
    """One GRU step from xw = x·W_i + b_i (B, 3H); Wh (H, 3H), bh (3H,)."""
    hsz = h.shape[-1]
    xr, xz, xn = _cols(xw, 3, hsz)
    hr, hz, hn = _cols(add(matmul(h, Wh), bh), 3, hsz)
    r = unary("sigmoid", add(xr, hr))
    z = unary("sigmoid", add(xz, hz))
    n = unary("tanh", add(xn, mul(r, hn)))
    return add(mul(sub(1.0, z), n), mul(z, h))


def _project(xs, Wx, b, what):
    xs, Wx = as_node(xs), as_node(Wx)
    if xs.ndim != 3:
        raise ShapeError(f"{what}: xs must be time-major (T, B, I), got {xs.shape}")
    t, bsz, i = xs.shape
    if Wx.shape[0] != i:
        raise ShapeError(f"{what}: Wx {Wx.shape} does not take inputs of width {i}")
    xw = matmul(reshape(xs, (t * bsz, i)), Wx)
    if b is not None:
        xw = add(xw, b)
    return reshape(xw, (t, bsz, Wx.shape[1]))


def rnn(xs: TensorLike, h0: TensorLike, Wx: TensorLike, Wh: TensorLike, b: TensorLike | None = None,
        activation: str = "tanh", **scan_options: Any) -> tuple[Node, Node]:
    """Vanilla (Elman) RNN over xs (T, B, I): h_t = act(x_t·Wx + h_{t-1}·Wh + b).

    Returns (h_T, hs) with hs (T, B, H).
    """
    xw = _project(xs, Wx, b, "rnn")

    def rnn_step(h, xw_t):
        h = rnn_cell(h, xw_t, Wh, activation)
        return h, h

    return scan(rnn_step, as_node(h0), xw, **scan_options)


def lstm(xs: TensorLike, h0: TensorLike, c0: TensorLike, Wx: TensorLike, Wh: TensorLike,
         b: TensorLike | None = None, **scan_options: Any) -> tuple[tuple[Node, Node], Node]:
    """LSTM over xs (T, B, I); Wx (I, 4H), Wh (H, 4H), b (4H,). Returns ((h_T, c_T), hs)."""
    xw = _project(xs, Wx, b, "lstm")

    def lstm_step(hc, xw_t):
        h, c = lstm_cell(hc[0], hc[1], xw_t, Wh)
        return (h, c), h

    return scan(lstm_step, (as_node(h0), as_node(c0)), xw, **scan_options)


def gru(xs: TensorLike, h0: TensorLike, Wx: TensorLike, Wh: TensorLike,
        bx: TensorLike | None = None, bh: TensorLike | None = None,
        **scan_options: Any) -> tuple[Node, Node]:
    """GRU over xs (T, B, I); Wx (I, 3H), Wh (H, 3H), bx, bh (3H,). Returns (h_T, hs)."""
    xw = _project(xs, Wx, bx, "gru")
    if bh is None:
        from ..ops.leaves import const
        from ..ops.movement import broadcast_to

        bh = broadcast_to(const(0.0, xw.dtype), (as_node(Wh).shape[1],))

    def gru_step(h, xw_t):
        h = gru_cell(h, xw_t, Wh, bh)
        return h, h

    return scan(gru_step, as_node(h0), xw, **scan_options)
