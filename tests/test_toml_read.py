"""Every TOML read goes through `toml_read.toml_module`, which works on Python 3.10 (tomli)."""

from __future__ import annotations

import ast
import builtins
import sys
from pathlib import Path

import pytest

from bpcompile import toml_read
from bpcompile.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent


def test_no_module_imports_tomllib_itself():
    offenders = []
    for path in sorted((ROOT / "bpcompile").rglob("*.py")):
        if path.name == "toml_read.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) else [])
            if {"tomllib", "tomli"} & set(names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_python_310_uses_tomli_or_names_the_fix(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 10, 0))
    fake = type(sys)("tomli")
    monkeypatch.setitem(sys.modules, "tomli", fake)
    assert toml_read.toml_module() is fake
    monkeypatch.delitem(sys.modules, "tomli")
    real_import = builtins.__import__

    def no_tomli(name, *a, **k):
        if name == "tomli":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tomli)
    with pytest.raises(SpecError, match=r"spec.toml: reading TOML needs Python 3.11\+ or `pip"):
        toml_read.toml_module("spec.toml: reading TOML")


def test_current_python_reads_toml():
    assert toml_read.toml_module().loads('a = 1\n[b]\nc = "x"\n') == {"a": 1, "b": {"c": "x"}}
