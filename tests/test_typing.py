"""The public API is typed: mypy passes on the modules in pyproject's [tool.mypy] `files`, every
public function there is fully annotated, the package ships `py.typed`, and each backend
declares its capabilities through the protocols of `backends/protocol.py`."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import bpcompile as bp
from bpcompile.backends import protocol
from bpcompile.toml_read import toml_module

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = toml_module().loads((ROOT / "pyproject.toml").read_text())
PUBLIC_MODULES = PYPROJECT["tool"]["mypy"]["files"]


def _unannotated(path: Path) -> list[str]:
    """Public functions and methods (and __init__/__call__) missing an annotation."""
    out = []

    def visit(body: list, prefix: str, in_class: bool) -> None:
        for n in body:
            if isinstance(n, ast.ClassDef) and not n.name.startswith("_"):
                visit(n.body, f"{prefix}{n.name}.", True)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if n.name.startswith("_") and n.name not in ("__init__", "__call__"):
                    continue
                a = n.args
                args = a.posonlyargs + a.args + a.kwonlyargs
                if in_class and args and args[0].arg in ("self", "cls"):
                    args = args[1:]
                missing = [x.arg for x in args if x.annotation is None]
                missing += [f"*{v.arg}" for v in (a.vararg, a.kwarg) if v and not v.annotation]
                if n.returns is None and n.name != "__init__":
                    missing.append("return")
                if missing:
                    out.append(f"{path.relative_to(ROOT)}:{n.lineno} {prefix}{n.name} {missing}")

    visit(ast.parse(path.read_text()).body, "", False)
    return out


def test_public_functions_are_fully_annotated():
    assert len(PUBLIC_MODULES) >= 20
    missing = [m for p in PUBLIC_MODULES for m in _unannotated(ROOT / p)]
    assert missing == []


def test_the_check_itself_finds_a_missing_annotation(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    f = tmp_path / "m.py"
    f.write_text("def f(x: int, y) -> int: ...\ndef _g(x): ...\n"
                 "class C:\n    def m(self, z: int): ...\n")
    assert _unannotated(f) == ["m.py:1 f ['y']", "m.py:4 C.m ['return']"]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is in the `test` extra; CI installs it")
def test_mypy_passes_on_the_public_api():
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"no issues found in {len(PUBLIC_MODULES)} source files" in r.stdout


def test_package_ships_py_typed():
    assert (ROOT / "bpcompile" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["bpcompile"]
    assert any(d.startswith("mypy") for d in PYPROJECT["project"]["optional-dependencies"]["test"])


def _capabilities(impl: object) -> set[str]:
    kinds = ("Backend", "FastCall", "InPlace", "MemoryPlan", "JaxProgram")
    return {k for k in kinds if isinstance(impl, getattr(protocol, k))}


@pytest.mark.parametrize("backend, caps", [
    ("numpy", {"Backend"}),
    ("llvm", {"Backend", "FastCall", "InPlace", "MemoryPlan"}),
    ("jax", {"Backend", "FastCall", "JaxProgram"}),
])
def test_backends_declare_their_capabilities(backend, caps):
    if backend == "jax":
        pytest.importorskip("jax")
    W = bp.param("W", (3, 2))
    x = bp.input("x", (4, 3))
    fn = bp.compile(bp.sum((x @ W) ** 2), [W], backend=backend)
    assert _capabilities(fn.impl) == caps
    # a capability a backend lacks is an error naming the backend, not an AttributeError
    if "MemoryPlan" not in caps:
        with pytest.raises(NotImplementedError, match=f"the {backend} backend has no memory"):
            fn.memory()
    if "JaxProgram" not in caps:
        with pytest.raises(bp.BackendError, match=f"lowered\\(\\) needs backend='jax'.*{backend}"):
            fn.lowered()


def test_front_end_uses_protocols_not_probes():
    for path in ("bpcompile/compiled.py", "bpcompile/train/step.py"):
        text = (ROOT / path).read_text()
        assert "hasattr(" not in text and "getattr(self.impl" not in text, path
