"""The learned LSTM optimizer (bpcompile/train/learned.py): meta-training lowers the
meta-loss, and the result beats SGD on held-out random quadratics (Andrychowicz et al.)."""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import ArgumentError
from bpcompile.train.learned import (
    LearnedOptimizer,
    init_weights,
    meta_train,
    optimizee_losses,
    preprocess,
)

B, D = 8, 10
SHAPES = ({"theta": (B, D)}, {"W": ((B, D, D), "float32"), "y": ((B, D), "float32")})


def quadratic(th, data):
    """f(θ) = ‖Wθ − y‖² per problem, averaged over B problems solved at once."""
    r = bp.reshape(data["W"] @ bp.reshape(th["theta"], (B, D, 1)), (B, D)) - data["y"]
    return bp.sum(r * r) / B


def sample(rng):
    return ({"theta": rng.normal(size=(B, D)).astype(np.float32)},
            {"W": rng.normal(size=(B, D, D)).astype(np.float32),
             "y": rng.normal(size=(B, D)).astype(np.float32)})


def test_meta_training_lowers_meta_loss_and_beats_sgd():
    res = meta_train(quadratic, *SHAPES, sample, meta_steps=160, horizon=10, unrolls=4,
                     hidden=10, meta_lr=3e-3, seed=0)
    first, last = np.mean(res.meta_losses[:8]), np.mean(res.meta_losses[-8:])
    assert last < 0.5 * first, (first, last)
    rng = np.random.default_rng(99)  # held-out problems
    problems = [sample(rng) for _ in range(3)]

    def final(opt):
        return optimizee_losses(quadratic, *SHAPES, opt, problems, 40)[:, -1].mean()

    learned = final(res.optimizer)
    sgd = min(final(bp.optim.sgd(lr)) for lr in (0.01, 0.03))  # 0.03: near SGD's stability edge
    untrained = final(LearnedOptimizer(init_weights(10, 0)))
    # seeds 0-2: learned 0.36-0.41, best SGD 4.0, Adam(0.3) 0.96, untrained LSTM ~50
    assert learned < 0.25 * sgd and learned < 0.1 * untrained, (learned, sgd, untrained)


def test_preprocessing_matches_the_paper():
    g = np.array([3.0, -2e-3, 1e-6, -1e-6, 0.0], np.float32)
    x = bp.input("g", g.shape, "float32")
    out = bp.function({"f": preprocess(x)})(g=g)["f"]
    p = 10.0
    big = np.abs(g) >= np.exp(-p)
    want = np.stack([np.where(big, np.log(np.maximum(np.abs(g), 1e-30)) / p, -1.0),
                     np.where(big, np.sign(g), np.exp(p) * g)], -1)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["llvm", "jax"])
def test_learned_optimizer_in_a_train_step_matches_numpy(backend):
    opt = LearnedOptimizer(init_weights(6, 1))
    problems = [sample(np.random.default_rng(3))]
    ref = optimizee_losses(quadratic, *SHAPES, opt, problems, 5)
    got = optimizee_losses(quadratic, *SHAPES, opt, problems, 5, backend=backend)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(ArgumentError, match="missing"):
        LearnedOptimizer({"Wx1": np.zeros((2, 4))})
    with pytest.raises(ArgumentError, match="horizon"):
        meta_train(quadratic, *SHAPES, sample, horizon=0)
    with pytest.raises(ArgumentError, match="loop must be"):
        meta_train(quadratic, *SHAPES, sample, loop="while")


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_scan_segment_equals_unrolled(backend):
    """meta_train(loop="scan"): the segment's steps as one bp.scan (a body holding the
    optimizee's reverse sweep) give the unrolled segment's meta-loss, meta-gradient, final θ
    and LSTM states (float64)."""
    from bpcompile.compiled import Function
    from bpcompile.train.learned import SLOTS, _segment

    shapes = ({"theta": (B, D)}, {"W": ((B, D, D), "float64"), "y": ((B, D), "float64")})
    th, data = sample(np.random.default_rng(0))
    feed = {"theta_theta": th["theta"].astype(np.float64),
            **{k: v.astype(np.float64) for k, v in data.items()},
            **{f"lstm_{k}": v.astype(np.float64) for k, v in init_weights(6, 2).items()},
            **{f"{s}_theta": np.zeros((B, D, 6)) for s in SLOTS}}
    out = {}
    for loop, be in (("unroll", "numpy"), ("scan", backend)):
        fn = Function(_segment(quadratic, *shapes, 6, 5, 0.1, 10.0, "float64", loop), be)
        out[loop] = fn(**feed)
    assert set(out["scan"]) == set(out["unroll"])
    for k, v in out["unroll"].items():
        np.testing.assert_allclose(out["scan"][k], v, rtol=1e-9, atol=1e-12, err_msg=k)
