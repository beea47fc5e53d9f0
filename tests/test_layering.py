"""The one-way stack (docs/architecture.md): every import in bpcompile, at module level or inside
a function, relative or absolute, goes to the importer's own layer or one below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bpcompile"

# data flows down this list; a module may import its own layer and those above it in the list
LAYERS = [
    ("errors", ["bpcompile.errors", "bpcompile.version"]),
    ("ir", ["bpcompile.ir"]),
    # ops and the composites that only build graphs with them
    ("ops", ["bpcompile.ops", "bpcompile.nn", "bpcompile.layers", "bpcompile.optim"]),
    ("autodiff", ["bpcompile.autodiff"]),
    ("rewrite", ["bpcompile.rewrite"]),
    ("backends", ["bpcompile.backends"]),
    ("front end", [
        "bpcompile", "bpcompile.__main__", "bpcompile.api", "bpcompile.compiled",
        "bpcompile.check", "bpcompile.cli", "bpcompile.spec", "bpcompile.train",
        "bpcompile.inspect",  # pictures, equations, reports, standalone modules
        "bpcompile.layers.spec_layers",  # the [[layers]] builders of spec files
    ]),
]


def layer_of(module: str) -> int:
    """The layer of the longest listed prefix of `module`."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return rank


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported bpcompile module) for every import statement anywhere in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                is_mod = _exists(sub)
                out.append((node.lineno, sub if is_mod else target))
    return [(line, m) for line, m in out if m == "bpcompile" or m.startswith("bpcompile.")]


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PKG.parent / rel.with_suffix(".py")).exists() or (PKG.parent / rel).is_dir()


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    mine = layer_of(module)
    return [
        f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]}), "
        f"above its layer ({LAYERS[mine][0]})"
        for line, target in imports(source, module, is_package)
        if layer_of(target) > mine
    ]


def test_every_import_follows_the_layer_order():
    found = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "imports against the data flow:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module, source, bad",
    [
        ("bpcompile.rewrite.fold", "def f():\n    from ..backends.numpy import codegen\n", 1),
        ("bpcompile.ir.node", "from bpcompile.ops.registry import get_op\n", 1),
        ("bpcompile.ops.scan", "import bpcompile.rewrite.pipeline\n", 1),
        ("bpcompile.backends.llvm.cache", "from ... import __version__\n", 1),
        ("bpcompile.rewrite.fold", "from ..ops.leaves import const\nfrom . import fuse\n", 0),
        ("bpcompile.compiled", "from .backends.llvm import export\n", 0),
    ],
)
def test_the_checker_sees_function_level_relative_and_absolute_imports(module, source, bad):
    assert len(violations(source, module)) == bad


def test_only_the_front_end_runs_the_pipeline():
    """The pipeline owns sub-graphs: ops trace scan bodies as written, backends lower the body
    they are given; neither runs the rewrite passes itself."""
    runners = []
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        if LAYERS[layer_of(mod)][0] in ("ops", "backends"):
            runners += [f"{mod}:{line}" for line, target in
                        imports(path.read_text(), mod, path.name == "__init__.py")
                        if target == "bpcompile.rewrite.pipeline"]
    assert not runners
