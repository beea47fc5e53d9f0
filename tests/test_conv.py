"""conv2d / conv1d / pooling composites against jax.lax (values and gradients) and FD."""

from __future__ import annotations

import numpy as np
import pytest
from layers_harness import BACKENDS, assert_matches_jax, fd_check, jax, jnp

import bpcompile as bp
from bpcompile.layers import (
    avg_pool2d,
    conv1d,
    conv2d,
    first_max,
    flatten,
    global_avg_pool,
    max_pool2d,
)

lax = jax.lax
rng = np.random.default_rng(0)


def _jpad(padding, nd=2):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if not isinstance(p, int) else (p, p) for p in padding]


CONV_CASES = [
    # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, "valid", 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 2), 2, "same", 1, 1),
    ((1, 2, 9, 8), (3, 2, 3, 3), (2, 1), ((1, 2), (0, 1)), 1, 1),
    ((2, 2, 9, 9), (2, 2, 3, 3), 1, "same", 2, 1),
    ((1, 4, 6, 7), (6, 2, 2, 3), (1, 2), "valid", (2, 1), 2),
    ((2, 4, 5, 5), (4, 1, 3, 3), 1, 1, 1, 4),  # depthwise
    ((1, 1, 5, 5), (1, 1, 5, 5), 3, "same", 1, 1),
    ((2, 3, 4, 5), (5, 3, 1, 1), 1, "valid", 1, 1),  # 1x1: one window, no concatenation
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d_matches_lax(case, backend):
    # every backend lowers im2col: the windows joined on the channel axis, the 5-d transpose
    # that makes the patches, and their gradients (slices, pads); float64 on NumPy
    xs, ws, stride, padding, dil, groups = CONV_CASES[case]
    values = {
        "x": rng.standard_normal(xs),
        "w": rng.standard_normal(ws),
        "b": rng.standard_normal(ws[0]),
    }
    s2 = (stride, stride) if isinstance(stride, int) else stride
    d2 = (dil, dil) if isinstance(dil, int) else dil

    def build(V):
        return conv2d(V["x"], V["w"], V["b"], stride, padding, dil, groups)

    def jbuild(V):
        y = lax.conv_general_dilated(
            V["x"], V["w"], s2, _jpad(padding), rhs_dilation=d2, feature_group_count=groups
        )
        return y + V["b"][None, :, None, None]

    assert_matches_jax(build, jbuild, values, ("x", "w", "b"), backend=backend,
                       dtype="float64" if backend == "numpy" else "float32")


def test_conv2d_finite_differences():
    values = {"x": rng.standard_normal((1, 2, 6, 5)), "w": rng.standard_normal((3, 2, 3, 2))}
    fd_check(lambda V: conv2d(V["x"], V["w"], stride=2, padding="same"), values, ("x", "w"))


@pytest.mark.parametrize("stride,padding,dil", [(1, "valid", 1), (2, "same", 1), (1, 2, 2)])
def test_conv1d_matches_lax(stride, padding, dil):
    values = {"x": rng.standard_normal((2, 3, 11)), "w": rng.standard_normal((5, 3, 3))}

    def jbuild(V):
        p = padding.upper() if isinstance(padding, str) else [(padding, padding)]
        return lax.conv_general_dilated(V["x"], V["w"], (stride,), p, rhs_dilation=(dil,))

    assert_matches_jax(
        lambda V: conv1d(V["x"], V["w"], None, stride, padding, dil), jbuild, values, ("x", "w")
    )


def _jmax_pool(x, window, stride, padding):
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, 1) + window,
        (1, 1) + stride,
        _jpool_pad(padding, x.shape, window, stride),
    )


def _jpool_pad(padding, shape, window, stride):
    if isinstance(padding, str):
        return padding.upper()
    return [(0, 0), (0, 0)] + _jpad(padding)


POOL_CASES = [
    ((2, 3, 6, 6), (2, 2), (2, 2), "valid"),
    ((2, 2, 7, 5), (2, 2), (2, 2), "valid"),  # odd sizes: last row/col dropped
    ((1, 2, 7, 7), (3, 3), (2, 2), "valid"),  # overlapping
    ((1, 2, 7, 6), (3, 2), (2, 1), "same"),
    ((2, 1, 5, 5), (2, 2), (1, 1), ((1, 0), (0, 1))),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_max_pool2d_matches_reduce_window(case, backend):
    # overlapping windows are stacked as conv2d's patches: every backend lowers them
    shape, window, stride, padding = POOL_CASES[case]
    values = {"x": rng.standard_normal(shape)}
    assert_matches_jax(
        lambda V: max_pool2d(V["x"], window, stride, padding),
        lambda V: _jmax_pool(V["x"], window, stride, padding),
        values,
        ("x",),
        backend=backend,
        dtype="float64" if backend == "numpy" else "float32",
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [(2, 2), (1, 1)])
def test_max_pool_ties_first_max_gets_gradient(backend, stride):
    # integer-valued input: many ties inside windows, incl. whole windows of equal values
    x = np.array([[[[1, 3, 3, 0, 2], [3, 2, 1, 1, 2], [0, 0, 5, 5, 2], [1, 1, 5, 5, 2]]]], float)
    x = np.concatenate([x, np.ones_like(x)], axis=1)  # channel 2: all tied
    values = {"x": x}
    dtype = "float64" if backend == "numpy" else "float32"
    _, _, g = assert_matches_jax(
        lambda V: max_pool2d(V["x"], 2, stride),
        lambda V: _jmax_pool(V["x"], (2, 2), stride, "valid"),
        values,
        ("x",),
        backend=backend,
        dtype=dtype,
    )
    if stride == (2, 2):  # each window's gradient lands on exactly one element
        assert np.count_nonzero(g["x"][0, 1]) == 4 and g["x"][0, 1, 0, 0] != 0


def test_first_max_differs_from_even_split():
    x = bp.param("x", (4,), "float64")
    fn = bp.compile(first_max(x) + 0.0 * bp.max(x), [x])
    _, g = fn(x=np.array([2.0, 5.0, 5.0, 1.0]))
    np.testing.assert_array_equal(g["x"], [0.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("case", [1, 2, 3])
def test_avg_pool2d_matches_reduce_window(case):
    shape, window, stride, padding = POOL_CASES[case]
    values = {"x": rng.standard_normal(shape)}
    k = window[0] * window[1]

    def jbuild(V):
        return (
            lax.reduce_window(
                V["x"],
                0.0,
                lax.add,
                (1, 1) + window,
                (1, 1) + stride,
                _jpool_pad(padding, shape, window, stride),
            )
            / k
        )

    assert_matches_jax(
        lambda V: avg_pool2d(V["x"], window, stride, padding), jbuild, values, ("x",)
    )


def test_global_avg_pool_and_flatten():
    values = {"x": rng.standard_normal((2, 3, 4, 5))}
    assert_matches_jax(
        lambda V: flatten(global_avg_pool(V["x"]) * 2.0),
        lambda V: jnp.mean(V["x"], axis=(2, 3)) * 2.0,
        values,
        ("x",),
    )


def test_pool_finite_differences():
    values = {"x": rng.standard_normal((1, 2, 5, 6))}
    fd_check(
        lambda V: (
            max_pool2d(V["x"], 3, 2, "same") + avg_pool2d(V["x"], 2, 1, "valid")[:, :, :3, :3]
        ),
        values,
        ("x",),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_cnn_digits_model(backend):
    """The cnn_digits benchmark model end to end (conv, relu, max-pool, dense, CE)."""
    values = {
        "x": rng.standard_normal((8, 1, 8, 8)) * 0.5,
        "K": rng.standard_normal((8, 1, 3, 3)),
        "bk": rng.standard_normal(8),
        "W": rng.standard_normal((72, 10)) * 0.3,
        "b": rng.standard_normal(10),
        "y": np.eye(10)[rng.integers(0, 10, 8)],
    }

    def build(V):
        z = bp.relu(conv2d(V["x"], V["K"], V["bk"]))
        z = flatten(max_pool2d(z, 2))
        return bp.cross_entropy(z @ V["W"] + V["b"], V["y"])

    def jbuild(V):
        z = lax.conv_general_dilated(V["x"], V["K"], (1, 1), "VALID") + V["bk"][None, :, None, None]
        z = _jmax_pool(jax.nn.relu(z), (2, 2), (2, 2), "valid").reshape(8, -1)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(z @ V["W"] + V["b"]) * V["y"], -1))

    dtype = "float64" if backend == "numpy" else "float32"
    assert_matches_jax(
        build, jbuild, values, ("K", "bk", "W", "b"), backend=backend, dtype=dtype, cotangent=False
    )


def test_conv_errors_name_the_problem():
    x = bp.input("x", (1, 3, 5, 5))
    with pytest.raises(bp.ShapeError, match="groups"):
        conv2d(x, bp.param("w", (4, 2, 3, 3)), groups=2)
    with pytest.raises(bp.ShapeError, match="padding"):
        conv2d(x, bp.param("w", (4, 3, 3, 3)), padding="full")
    with pytest.raises(bp.ShapeError, match="window"):
        conv2d(x, bp.param("w", (4, 3, 7, 7)))
