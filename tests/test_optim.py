"""Optimizers, schedules and clipping compiled as graph code, checked step for step against optax.

The loss `sum(W * G)` has gradient exactly G, so feeding a sequence of random G_t gives both
implementations the same gradients; params then must agree at every step to float tolerance.
"""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim
from bpcompile.train import compile_train_step

optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")

SHAPES = {"W": (3, 4), "b": (4,)}
STEPS = 12


def _run_ours(opt, dtype, grads_seq, init):
    gs = {k: bp.input(f"G{k}", s, dtype) for k, s in SHAPES.items()}
    ps = {k: bp.param(k, s, dtype) for k, s in SHAPES.items()}
    loss = bp.sum(ps["W"] * gs["W"]) + bp.sum(ps["b"] * gs["b"])
    step = compile_train_step(loss, list(ps.values()), opt, init=init)
    out = []
    for g in grads_seq:
        step(**{f"G{k}": v for k, v in g.items()})
        out.append({k: v.copy() for k, v in step.params.items()})
    return out


def _run_optax(tx, grads_seq, init):
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)
    out = []
    for g in grads_seq:
        upd, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, upd)
        out.append({k: np.asarray(v) for k, v in params.items()})
    return out


def _data(dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    seq = [{k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
           for _ in range(STEPS)]
    return init, seq


CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda: optax.sgd(0.1)),
    "momentum": (lambda: optim.momentum(0.05, 0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "nesterov": (lambda: optim.nesterov(0.05, 0.9),
                 lambda: optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "rmsprop": (lambda: optim.rmsprop(0.01), lambda: optax.rmsprop(0.01)),
    "rmsprop_momentum": (lambda: optim.rmsprop(0.01, decay=0.8, momentum=0.5),
                         lambda: optax.rmsprop(0.01, decay=0.8, momentum=0.5)),
    "adam": (lambda: optim.adam(0.01), lambda: optax.adam(0.01)),
    "adam_b": (lambda: optim.adam(0.02, b1=0.5, b2=0.9, eps=1e-6),
               lambda: optax.adam(0.02, b1=0.5, b2=0.9, eps=1e-6)),
    "adamw": (lambda: optim.adamw(0.01, weight_decay=0.1),
              lambda: optax.adamw(0.01, weight_decay=0.1)),
    "adam_clip_norm": (lambda: optim.adam(0.01, clip_norm=1.0),
                       lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01))),
    "sgd_clip_value": (lambda: optim.sgd(0.1, clip_value=0.5),
                       lambda: optax.chain(optax.clip(0.5), optax.sgd(0.1))),
    "adam_cosine": (lambda: optim.adam(optim.cosine_decay(0.05, 8, alpha=0.1)),
                    lambda: optax.adam(optax.cosine_decay_schedule(0.05, 8, alpha=0.1))),
    "sgd_exp": (lambda: optim.sgd(optim.exponential_decay(0.1, 3, 0.5)),
                lambda: optax.sgd(optax.exponential_decay(0.1, 3, 0.5))),
    "sgd_exp_stair": (lambda: optim.sgd(optim.exponential_decay(0.1, 3, 0.5, staircase=True)),
                      lambda: optax.sgd(optax.exponential_decay(0.1, 3, 0.5, staircase=True))),
    "sgd_step": (lambda: optim.sgd(optim.piecewise_constant(0.1, {3: 0.5, 7: 0.1})),
                 lambda: optax.sgd(optax.piecewise_constant_schedule(0.1, {3: 0.5, 7: 0.1}))),
    "chain": (lambda: optim.chain(optim.clip_by_value(0.5), optim.ScaleByAdam(b1=0.8),
                                  optim.Trace(0.5), optim.ScaleByLearningRate(0.01)),
              lambda: optax.chain(optax.clip(0.5), optax.scale_by_adam(b1=0.8), optax.trace(0.5),
                                  optax.scale_by_learning_rate(0.01))),
    "adam_warmup_cosine": (
        lambda: optim.adam(optim.warmup_cosine_decay(0.0, 0.05, 4, 10, 0.001)),
        lambda: optax.adam(optax.warmup_cosine_decay_schedule(0.0, 0.05, 4, 10, 0.001))),
}


SCHEDULED = {"adam_cosine", "sgd_exp", "sgd_exp_stair", "sgd_step", "adam_warmup_cosine"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax_float64(case):
    ours, theirs = CASES[case]
    init, seq = _data("float64", scale=2.0 if "clip" in case else 1.0)
    a = _run_ours(ours(), "float64", seq, init)
    b = _run_optax(theirs(), seq, init)
    # optax evaluates schedules on its int32 step count in float32, even with x64 enabled
    rtol = 1e-6 if case in SCHEDULED else 1e-9
    for t, (pa, pb) in enumerate(zip(a, b)):
        for k in SHAPES:
            np.testing.assert_allclose(pa[k], pb[k], rtol=rtol, atol=rtol * 1e-2,
                                       err_msg=f"{case}: param {k} after step {t + 1}")


@pytest.mark.parametrize("case", ["adam", "rmsprop", "nesterov", "adamw"])
def test_matches_optax_float32(case):
    ours, theirs = CASES[case]
    init, seq = _data("float32", seed=1)
    a = _run_ours(ours(), "float32", seq, init)
    b = _run_optax(theirs(), seq, init)
    assert a[-1]["W"].dtype == np.float32
    for k in SHAPES:
        np.testing.assert_allclose(a[-1][k], b[-1][k], rtol=2e-5, atol=2e-6)


def test_clip_by_global_norm_actually_clips():
    # big gradients: with clipping the first SGD step moves params by exactly lr * max_norm
    init, seq = _data("float64", scale=100.0)
    a = _run_ours(optim.sgd(1.0, clip_norm=0.5), "float64", seq[:1], init)
    moved = np.sqrt(sum(((a[0][k] - init[k]) ** 2).sum() for k in SHAPES))
    assert moved == pytest.approx(0.5, rel=1e-12)


SCHEDULES = [
    (optim.cosine_decay(1.0, 10, 0.2), lambda: optax.cosine_decay_schedule(1.0, 10, 0.2)),
    (optim.exponential_decay(0.5, 4, 0.3, transition_begin=2),
     lambda: optax.exponential_decay(0.5, 4, 0.3, transition_begin=2)),
    (optim.exponential_decay(0.5, 4, 0.3, staircase=True, end_value=0.05),
     lambda: optax.exponential_decay(0.5, 4, 0.3, staircase=True, end_value=0.05)),
    (optim.linear(0.1, 0.9, 7, 2), lambda: optax.linear_schedule(0.1, 0.9, 7, 2)),
    (optim.piecewise_constant(1.0, {2: 0.5, 5: 0.5}),
     lambda: optax.piecewise_constant_schedule(1.0, {2: 0.5, 5: 0.5})),
    (optim.warmup_cosine_decay(0.0, 1.0, 5, 20, 0.1),
     lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20, 0.1)),
]


@pytest.mark.parametrize("i", range(len(SCHEDULES)))
def test_schedule_host_and_graph_match_optax(i):
    ours, theirs = SCHEDULES[i]
    ref = theirs()
    counts = np.arange(25)
    host = np.array([ours(c) for c in counts])
    want = np.array([float(ref(int(c))) for c in counts])
    np.testing.assert_allclose(host, want, rtol=1e-6, atol=1e-7)
    # the same formula as graph nodes over a scalar input, compiled
    c = bp.input("count", (), "float64")
    fn = bp.function({"lr": ours.node(c) * 1.0})
    graph = np.array([float(fn(count=float(k))["lr"]) for k in counts])
    np.testing.assert_allclose(graph, want, rtol=1e-6, atol=1e-7)


def test_linear_warmup_ramps_to_wrapped_schedule():
    s = optim.linear_warmup(optim.cosine_decay(1.0, 10), 4)
    assert s(0) == 0.0 and s(2) == pytest.approx(0.5) and s(4) == pytest.approx(1.0)
    assert s(9) == pytest.approx(optim.cosine_decay(1.0, 10)(5))


def test_step_decay_matches_formula():
    s = optim.step_decay(1.0, 3, 0.5)
    assert [s(k) for k in (0, 2, 3, 5, 6, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_reduce_on_plateau_is_host_side_and_scales_lr():
    p = optim.ReduceLROnPlateau(factor=0.5, patience=1)
    scales = [p.update(v) for v in (1.0, 0.5, 0.6, 0.7, 0.8, 0.4)]
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    # the train step multiplies its scheduled rate by lr_scale, fed as a graph input
    w = bp.param("w", (2,), "float64")
    g = bp.input("g", (2,), "float64")
    step = compile_train_step(bp.sum(w * g), [w], optim.sgd(0.1), init={"w": np.zeros(2)})
    step.lr_scale = 0.5
    step(g=np.ones(2))
    np.testing.assert_allclose(step.params["w"], -0.05)
    assert step.learning_rate == pytest.approx(0.05)


def test_one_compiled_function_serves_every_step():
    init, seq = _data("float64")
    gs = {k: bp.input(f"G{k}", s, "float64") for k, s in SHAPES.items()}
    ps = {k: bp.param(k, s, "float64") for k, s in SHAPES.items()}
    loss = bp.sum(ps["W"] * gs["W"]) + bp.sum(ps["b"] * gs["b"])
    step = compile_train_step(loss, list(ps.values()), optim.adam(optim.cosine_decay(0.1, 5)),
                              init=init)
    fn = step.fn
    for g in seq:
        step(**{f"G{k}": v for k, v in g.items()})
    assert step.fn is fn and step.count == STEPS
    src = fn.source()
    assert "step" in src and "cos" in src  # the schedule is computed inside the compiled code


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown optimizer 'adum'"):
        optim.get("adum", 1e-3)
    with pytest.raises(TypeError, match="learning rate"):
        optim.sgd("fast")
    with pytest.raises(ValueError, match="max_norm"):
        optim.adam(1e-3, clip_norm=0.0)
