"""Model specs: the examples load and their compiled gradients match an independent JAX model;
malformed specs raise SpecError naming the file, the table/key and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import spec
from bpcompile.errors import SpecError
from bpcompile.toml_read import toml_module

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOML_EXAMPLES = ["xor.toml", "mnist_mlp.toml", "mlp_small.toml"]

tomllib = toml_module()
jax = pytest.importorskip("jax")
jnp = jax.numpy


# ---- an independent JAX reading of a TOML spec (dense stacks only) ------------------------
def _jax_loss_from_toml(doc: dict):
    acts = {"identity": lambda z: z, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
            "relu": jax.nn.relu, "softplus": jax.nn.softplus, "softmax": jax.nn.softmax}
    inputs = doc["inputs"]
    first = inputs[0]["name"] if isinstance(inputs, list) else next(iter(inputs))
    layers, loss = doc["layers"], doc["loss"]

    def f(params, data):
        x = data[first]
        for i, layer in enumerate(layers, 1):
            name = str(layer.get("name", i))
            z = x @ params[f"W{name}"]
            if layer.get("bias", True):
                z = z + params[f"b{name}"]
            x = acts[layer.get("activation", "identity")](z)
        t = data[loss.get("target", "y")]
        kind = loss["type"]
        if kind == "mse":
            return jnp.mean((x - t) ** 2)
        if kind == "sum_squares":
            return 0.5 * jnp.sum((x - t) ** 2)
        if kind == "cross_entropy":
            logp = jax.nn.log_softmax(x, axis=-1)
            if t.dtype.kind == "i":
                return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=-1))
            return -jnp.mean(jnp.sum(logp * t, axis=-1))
        if kind == "binary_cross_entropy_with_logits":
            return jnp.mean(jax.nn.softplus(x) - x * t)
        raise AssertionError(kind)

    return f


def _f64(d):
    return {k: (np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
            for k, v in d.items()}


def _assert_close(ours: dict, ref: dict, rtol: float):
    assert set(ours) == set(ref)
    for k in ref:
        r, o = np.asarray(ref[k], np.float64), np.asarray(ours[k], np.float64)
        assert o.shape == r.shape, k
        scale = max(np.abs(r).max(), 1e-12)
        assert np.abs(o - r).max() <= rtol * scale, (k, np.abs(o - r).max(), scale)
        assert np.abs(r).max() > 0, f"reference gradient {k} is identically zero"


@pytest.mark.parametrize("fname", TOML_EXAMPLES)
def test_toml_example_gradients_match_jax(fname):
    path = EXAMPLES / fname
    model = spec.load(path)
    params, inputs = model.init_params(), model.example_inputs()
    value, grads = model.compile("numpy")(**inputs, **params)
    f = _jax_loss_from_toml(tomllib.loads(path.read_text()))
    ref_value, ref_grads = jax.value_and_grad(f)(_f64(params), _f64(inputs))
    f32 = model.loss.dtype == "float32"
    assert np.isclose(float(value), float(ref_value), rtol=1e-5 if f32 else 1e-12)
    _assert_close(grads, ref_grads, rtol=1e-4 if f32 else 1e-10)


def test_mish_python_model_matches_jax():
    model = spec.load(EXAMPLES / "mish_model.py")
    assert model.name == "mish_mlp"
    assert [w.attr("name") for w in model.wrt] == ["W1", "b1", "W2", "b2"]
    params, inputs = model.init_params(), model.example_inputs()
    value, grads = model.compile()(**inputs, **params)

    def f(p, d):
        z = d["x"] @ p["W1"] + p["b1"]
        a = z * jnp.tanh(jax.nn.softplus(z))
        return jnp.mean((a @ p["W2"] + p["b2"] - d["y"]) ** 2)

    ref_value, ref_grads = jax.value_and_grad(f)(params, inputs)
    assert np.isclose(float(value), float(ref_value), rtol=1e-12)
    _assert_close(grads, ref_grads, rtol=1e-10)
    assert np.all(params["b2"] == 0) and np.any(params["b1"] != 0)  # per-param Init honoured


def test_xor_spec_contents():
    model = spec.load(EXAMPLES / "xor.toml")
    assert model.name == "xor"
    assert [w.attr("name") for w in model.wrt] == ["W1", "b1", "W2", "b2"]
    assert [w.shape for w in model.wrt] == [(2, 2), (2,), (2, 1), (1,)]
    assert [x.attr("name") for x in model.inputs] == ["x", "y"]
    data = model.example_inputs(seed=123)  # literal data ignores the seed
    np.testing.assert_array_equal(data["x"], [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(data["y"][:, 0], [0, 1, 1, 0])
    assert data["x"].dtype == np.float64
    p = model.init_params()
    assert np.all(np.abs(p["W1"]) <= 1.0) and np.any(p["b1"] != 0)  # uniform, bias = "same"
    src = model.compile().source()
    assert "xor.toml:" in src  # generated code cites the spec's lines


def test_mnist_example_inputs_and_init():
    model = spec.load(EXAMPLES / "mnist_mlp.toml")
    data = model.example_inputs(seed=3)
    assert data["x"].shape == (128, 784) and data["x"].dtype == np.float32
    assert data["labels"].dtype == np.int32 and data["labels"].shape == (128,)
    assert data["labels"].min() >= 0 and data["labels"].max() < 10
    assert len(np.unique(data["labels"])) > 5
    p0, p1, p0b = model.init_params(0), model.init_params(1), model.init_params(0)
    assert not np.array_equal(p0["W1"], p1["W1"])
    np.testing.assert_array_equal(p0["W1"], p0b["W1"])
    limit = np.sqrt(6 / (784 + 256))
    assert np.abs(p0["W1"]).max() <= limit and np.abs(p0["W1"]).max() > 0.9 * limit  # glorot
    assert np.all(p0["b1"] == 0)
    assert p0["W1"].dtype == np.float32


def test_mlp_small_inputs_table_form():
    model = spec.load(EXAMPLES / "mlp_small.toml")
    assert [(x.attr("name"), x.shape) for x in model.inputs] == [("x", (1, 10)), ("y", (1, 1))]
    assert [w.shape for w in model.wrt][::2] == [(10, 32), (32, 32), (32, 1)]


def test_bp_check_passes_on_xor():
    model = spec.load(EXAMPLES / "xor.toml")
    report = bp.check(model.loss, model.wrt, inputs=model.example_inputs(),
                      params=model.init_params())
    assert report.ok, str(report)


# ---- from_dict: losses, layers and the layer table ----------------------------------------
def _doc(loss_type="mse", target_dtype=None, target_shape=(8, 3), last_act="identity", **extra):
    y = {"name": "y", "shape": list(target_shape)}
    if target_dtype:
        y["dtype"] = target_dtype
    doc = {"model": {"dtype": "float64"},
           "inputs": [{"name": "x", "shape": [8, 5]}, y],
           "layers": [{"type": "dense", "units": 4, "activation": "tanh", "name": "h"},
                      {"type": "dense", "units": 3, "activation": last_act}],
           "loss": {"type": loss_type, "target": "y"}}
    doc.update(extra)
    return doc


@pytest.mark.parametrize("loss_type,dtype,shape", [
    ("mse", None, (8, 3)),
    ("sum_squares", None, (8, 3)),
    ("cross_entropy", "int32", (8,)),
    ("cross_entropy", None, (8, 3)),
    ("binary_cross_entropy_with_logits", None, (8, 3)),
])
def test_every_loss_matches_jax(loss_type, dtype, shape):
    doc = _doc(loss_type, dtype, shape)
    model = spec.from_dict(doc, "test.toml")
    assert [w.attr("name") for w in model.wrt] == ["Wh", "bh", "W2", "b2"]
    inputs, params = model.example_inputs(), model.init_params()
    if loss_type == "cross_entropy" and dtype is None:  # float targets are sampled one-hot
        np.testing.assert_array_equal(inputs["y"].sum(-1), 1.0)
    if loss_type == "binary_cross_entropy_with_logits":
        assert inputs["y"].min() >= 0 and inputs["y"].max() <= 1
    value, grads = model.compile()(**inputs, **params)
    ref_value, ref_grads = jax.value_and_grad(_jax_loss_from_toml(doc))(params, inputs)
    assert np.isclose(float(value), float(ref_value), rtol=1e-12)
    _assert_close(grads, ref_grads, rtol=1e-10)


def test_new_layer_type_is_one_table_entry():
    """A layer added to LAYERS is usable from a spec without touching the parser."""

    @spec.layer("scale_test")
    def _scale(ctx):
        s = ctx.param("s", (ctx.x.shape[-1],), spec.Init("normal", 1.0))
        return (ctx.x * s).named(f"s{ctx.name}")

    try:
        doc = _doc()
        doc["layers"].insert(1, {"type": "scale_test", "name": "k"})
        model = spec.from_dict(doc, "ext.toml")
        assert [w.attr("name") for w in model.wrt] == ["Wh", "bh", "sk", "W3", "b3"]
        _, grads = model.compile()(**model.example_inputs(), **model.init_params())
        assert grads["sk"].shape == (4,) and np.any(grads["sk"] != 0)
    finally:
        del spec.LAYERS["scale_test"]


def test_explicit_input_and_prediction_keys():
    doc = _doc()
    doc["layers"].append({"type": "activation", "function": "relu", "input": "h", "name": "r"})
    doc["loss"]["prediction"] = "2"  # the loss reads layer 2, not the last layer
    doc["inputs"].append({"name": "unused", "shape": [1]})
    with pytest.raises(SpecError, match="'unused' is declared but not used"):
        spec.from_dict(doc, "p.toml")
    doc["inputs"].pop()
    doc["layers"][-1]["input"] = "x"
    model = spec.from_dict(doc, "p.toml")
    assert model.loss.dtype == "float64"


def test_flatten_layer():
    doc = _doc()
    doc["inputs"][0]["shape"] = [8, 5, 2]
    doc["layers"].insert(0, {"type": "flatten"})
    model = spec.from_dict(doc, "f.toml")
    assert [w.shape for w in model.wrt][0] == (10, 4)
    assert [w.attr("name") for w in model.wrt][0] == "Wh"
    _, grads = model.compile()(**model.example_inputs(), **model.init_params())
    assert np.all(np.isfinite(grads["Wh"])) and np.any(grads["Wh"] != 0)


def test_python_model_returning_dict(tmp_path):
    f = tmp_path / "dict_model.py"
    f.write_text(
        "import numpy as np\nimport bpcompile as bp\n"
        "def build():\n"
        "    x = bp.input('x', (3, 2), 'float64')\n"
        "    k = bp.input('k', (3,), 'int32')\n"
        "    W = bp.param('W', (2, 4), 'float64')\n"
        "    return {'loss': bp.cross_entropy(x @ W, k), 'wrt': [W],\n"
        "            'params': {'W': np.ones((2, 4))}}\n")
    model = spec.load(f)
    assert model.name == "dict_model"
    np.testing.assert_array_equal(model.init_params()["W"], np.ones((2, 4)))
    k = model.example_inputs()["k"]
    assert k.dtype == np.int32 and k.max() < 4  # class range found from the one_hot in the graph


# ---- malformed specs ----------------------------------------------------------------------
XOR = (EXAMPLES / "xor.toml").read_text()
MNIST = (EXAMPLES / "mnist_mlp.toml").read_text()

BAD_TOML = [
    ("unknown_layer", XOR.replace('type = "dense"\nunits = 2', 'type = "dens"\nunits = 2'),
     ["[[layers]] #1", "unknown layer type 'dens'", "did you mean 'dense'"]),
    ("missing_units", XOR.replace("units = 2\n", ""),
     ["[[layers]] #1 (dense)", "missing key 'units'", "integer"]),
    ("bad_units", XOR.replace("units = 2\n", "units = 0\n"), ["key 'units'", ">= 1", "got 0"]),
    ("typo_key", XOR.replace("units = 2\n", "units = 2\nactivaton = 'tanh'\n"),
     ["unknown key 'activaton'", "did you mean 'activation'"]),
    ("unknown_activation", XOR.replace('"sigmoid"', '"sigmod"', 1),
     ["key 'activation'", "unknown value 'sigmod'", "'relu'"]),
    ("output_target_mismatch", XOR.replace("units = 1", "units = 3"),
     ["[loss] (sum_squares)", "shape mismatch", "[4, 3]", "'y'", "[4, 1]"]),
    ("unknown_target", XOR.replace('target = "y"', 'target = "t"'),
     ["key 'target'", "'t' is not a declared input"]),
    ("invalid_toml", XOR + "\n[[layers\n", ["invalid TOML", "line"]),
    ("data_shape", XOR.replace("y = [[0], [1], [1], [0]]", "y = [[0], [1], [1]]"),
     ["[data]", "key 'y'", "[3, 1]", "[4, 1]"]),
    ("data_unknown", XOR + "\nz = [1]\n", ["[data]", "'z' is not an input or parameter"]),
    ("init_method", XOR.replace('method = "uniform"', 'method = "he"'),
     ["[init]", "unknown value 'he'", "glorot"]),
    ("no_loss", XOR.split("[loss]")[0] + XOR.split('target = "y"')[1],
     ["missing key 'loss'", "[loss] table"]),
    ("no_layers", XOR.replace("[[layers]]", "[[layerz]]"), ["unknown key 'layerz'"]),
    ("top_level_typo", XOR + '\n[lossy]\nx = 1\n', ["unknown key 'lossy'", "did you mean 'loss'"]),
    ("loss_type", XOR.replace('"sum_squares"', '"hinge"'), ["[loss]", "unknown value 'hinge'"]),
    ("model_dtype", XOR.replace('dtype = "float64"', 'dtype = "int32"'), ["[model]", "int32"]),
    ("input_shape", XOR.replace("shape = [4, 2]", "shape = [4, -2]"),
     ["[[inputs]] #1", "key 'shape'", "non-negative"]),
    ("duplicate_input", XOR.replace('name = "y"', 'name = "x"'),
     ["[[inputs]] #2", "'x' is declared twice"]),
    ("softmax_then_ce", MNIST.replace("units = 10", 'units = 10\nactivation = "softmax"'),
     ["cross_entropy takes logits", "\"identity\""]),
    ("labels_shape", MNIST.replace("shape = [128]", "shape = [64]"),
     ["int labels 'labels'", "[64]", "[128, 10]", "expected labels of shape [128]"]),
    ("label_range", MNIST.replace("[init]", "[data]\nlabels = " + str([12] * 128) + "\n[init]"),
     ["[data]", "[0, 10)"]),
    ("dup_layer_name", XOR.replace('units = 1\n', 'units = 1\nname = "1"\n'),
     ["[[layers]] #2", "'1' is already used"]),
]


@pytest.mark.parametrize("name,text,fragments", BAD_TOML, ids=[c[0] for c in BAD_TOML])
def test_malformed_toml_raises_spec_error(tmp_path, name, text, fragments):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as ei:
        spec.load(path)
    msg = str(ei.value)
    assert msg.startswith(str(path) + ":"), msg  # names the file first
    for frag in fragments:
        assert frag in msg, (frag, msg)


BAD_PY = [
    ("syntax", "def build(:\n", ["syntax_model.py:1", "SyntaxError"]),
    ("nobuild", "x = 1\n", ["must define build()"]),
    ("raises", "import bpcompile as bp\ndef build():\n    x = bp.input('x', (2, 3))\n"
               "    return {'loss': bp.sum(x @ bp.param('W', (4, 1))), 'wrt': []}\n",
     ["raises_model.py:4", "ShapeError", "(2, 3) @ (4, 1)"]),
    ("badreturn", "def build():\n    return 3\n", ["must return a Model", "int"]),
    ("badkey", "import bpcompile as bp\ndef build():\n    W = bp.param('W', (2,))\n"
               "    return {'loss': bp.sum(W), 'wrt': [W], 'param': {}}\n",
     ["unknown key 'param'", "did you mean 'params'"]),
    ("badvalue", "import bpcompile as bp\ndef build():\n    W = bp.param('W', (2,))\n"
                 "    return {'loss': bp.sum(W), 'wrt': [W], 'params': {'W': [1, 2, 3]}}\n",
     ["['params']['W']", "[3]", "[2]"]),
]


@pytest.mark.parametrize("name,text,fragments", BAD_PY, ids=[c[0] for c in BAD_PY])
def test_malformed_python_model_raises_spec_error(tmp_path, name, text, fragments):
    path = tmp_path / f"{name}_model.py"
    path.write_text(text)
    with pytest.raises(SpecError) as ei:
        spec.load(path)
    for frag in fragments:
        assert frag in str(ei.value), (frag, str(ei.value))


def test_unreadable_paths(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        spec.load(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="unknown model file type '.json'"):
        spec.load(tmp_path / "model.json")
