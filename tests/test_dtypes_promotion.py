"""Type promotion (ir/dtypes.promote_types) against JAX's with 64-bit types enabled.

JAX's table is computed under `jax.enable_x64(True)`, which restores the setting.
Documented differences (docs/dtypes.md) are applied to JAX's answer explicitly:
a weakly typed result materialises as bpcompile's default float32 / int32 (JAX-x64: float64 /
int64); pow and matmul compute in float (JAX keeps integer pow and matmul); arithmetic on two
bools is an error (JAX: logical or / and); div and pow of bools run in float32.
"""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import DTypeError
from bpcompile.ir.dtypes import DTYPES, promote_types, strict_promotion

SCALARS = {"py_int": 2, "py_float": 2.5, "py_bool": True}
OPS = {
    "add": bp.add, "sub": bp.sub, "mul": bp.mul, "div": bp.div, "pow": bp.power,
    "maximum": bp.maximum, "minimum": bp.minimum, "lt": bp.less, "eq": bp.equal,
    "where": lambda a, b: bp.where(bp.const(np.ones((2, 2), bool)), a, b),
    "matmul": bp.matmul, "concatenate": lambda a, b: bp.concatenate([a, b]),
}

@pytest.fixture(scope="module")
def jax_table():
    """{"op a b": [dtype, weak] or the exception's name} from jax.numpy with x64 on (enabled
    only inside the block, so the rest of the suite keeps its setting)."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    ops = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.true_divide,
           "pow": jnp.power, "maximum": jnp.maximum, "minimum": jnp.minimum, "lt": jnp.less,
           "eq": jnp.equal, "where": lambda a, b: jnp.where(jnp.ones((2, 2), bool), a, b),
           "matmul": jnp.matmul, "concatenate": lambda a, b: jnp.concatenate([a, b])}
    names = list(DTYPES) + list(SCALARS)
    out = {}
    with jax.enable_x64(True):
        def val(t):
            return SCALARS[t] if t in SCALARS else jnp.zeros((2, 2), t)

        for name, f in ops.items():
            for a in names:
                for b in names:
                    if a in SCALARS and b in SCALARS:
                        continue
                    try:
                        r = jax.eval_shape(lambda f=f, a=a, b=b: f(val(a), val(b)))  # no XLA
                        out[f"{name} {a} {b}"] = [str(r.dtype), bool(r.weak_type)]
                    except Exception as e:  # noqa: BLE001 - JAX's refusal is data here
                        out[f"{name} {a} {b}"] = type(e).__name__
        assert jax.config.jax_enable_x64
    return out


def _ours(op, a, b):
    def operand(t, k):
        return SCALARS[t] if t in SCALARS else bp.input(f"x{k}_{t}", (2, 2), t)

    try:
        return OPS[op](operand(a, 0), operand(b, 1)).dtype
    except DTypeError:
        return "DTypeError"


def _expected(op, a, b, jax_result):
    if isinstance(jax_result, str):  # JAX refuses (e.g. matmul or concatenate of a scalar)
        return None
    dt, weak = jax_result
    if weak:
        dt = {"float64": "float32", "int64": "int32"}.get(dt, dt)
    if op in ("add", "sub", "mul", "maximum", "minimum") and \
            {a, b} <= {"bool", "py_bool"}:
        return "DTypeError"  # bool arithmetic: cast first
    if op in ("pow", "matmul") and dt in ("int32", "int64", "int8", "bool"):
        return "float32"
    if op == "pow" and "py_float" in (a, b) and {"int32", "int8"} & {a, b}:
        return "float32"  # JAX-x64 gives float64 here (not weak); we keep the default float
    return dt


def test_every_binary_op_and_dtype_pair_matches_jax(jax_table):
    checked, wrong = 0, []
    for key, jr in jax_table.items():
        op, a, b = key.split()
        want = _expected(op, a, b, jr)
        if want is None:
            continue
        got = _ours(op, a, b)
        checked += 1
        if got != want:
            wrong.append(f"{op}({a}, {b}): ours {got}, expected {want} (JAX-x64 {jr})")
    assert checked > 500
    assert not wrong, "\n".join(wrong)


def test_lattice_facts():
    assert promote_types("float16", "bfloat16") == "float32"
    assert promote_types("int32", "float16") == "float16"
    assert promote_types("bool", "float64") == "float64"
    assert promote_types("float32", "float64") == "float64"
    assert promote_types("float16", "weak_float") == "float16"  # scalars never widen
    assert promote_types("int32", "weak_float") == "float32"  # the default float, documented


def test_issue_examples_float64_model():
    W = bp.param("W", (3, 3), dtype="float64")
    c = bp.const(np.zeros((3, 3)))
    assert c.dtype == "float64" and (W + c).dtype == "float64"
    assert bp.const(np.zeros(2, np.float16)).dtype == "float16"
    assert bp.const([1.0, 2.0]).dtype == "float32"  # Python data: the default float

    h0 = bp.const(np.zeros((2, 3)))
    xs = bp.input("xs", (4, 2, 3), "float64")
    Wh = bp.param("Wh", (3, 3), "float64")

    def step(h, x):
        h = bp.tanh(bp.matmul(h, Wh) + x)
        return h, h

    h, _ = bp.scan(step, h0, xs)
    loss = bp.sum(h)
    assert loss.dtype == "float64"
    rng = np.random.default_rng(0)
    args = {"xs": rng.normal(size=(4, 2, 3)), "Wh": rng.normal(size=(3, 3)) * 0.3}
    ref = None
    for backend in ("numpy", "llvm"):
        v, g = bp.compile(loss, [Wh], backend=backend)(**args)
        assert np.asarray(v).dtype == np.float64 and g["Wh"].dtype == np.float64
        if ref is None:
            ref = (v, g["Wh"])
        np.testing.assert_allclose(v, ref[0], rtol=1e-12)
        np.testing.assert_allclose(g["Wh"], ref[1], rtol=1e-12)


def test_strict_promotion_keeps_the_old_error():
    a, b = bp.input("sa", (2,), "float32"), bp.input("sb", (2,), "float64")
    assert (a + b).dtype == "float64"
    with strict_promotion():
        with pytest.raises(DTypeError, match="strict"):
            bp.add(a, b)
        assert (a * 2.0).dtype == "float32"  # weak scalars are still fine
        assert (a + bp.input("si", (2,), "int32")).dtype == "float32"


def test_scalars_out_of_range():
    i = bp.input("oi", (2,), "int32")
    with pytest.raises(DTypeError, match="int32"):
        i + 2**40  # never wrapped
    h = bp.input("oh", (2,), "float16")
    big = h * 1e6  # weak: float16, so the constant is inf (as in JAX)
    assert big.dtype == "float16" and np.isinf(big.inputs[1].attr("value").array).all()
