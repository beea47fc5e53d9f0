"""Every statement of generated code names where it comes from: a forward statement the user's
line (never the bp.compile call), a backward one the forward node it differentiates; also
statements rewrites build inside replacements, BPTT bodies and forward values only the
backward pass reads."""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

import pytest

import bpcompile as bp
from bpcompile import spec

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).name
STATEMENT = re.compile(r"^\s+\S.* = .*# (\S+) .*-> ")  # `name = expr   # op -> type ...`


def _check(src: str, user_file: str) -> list[str]:
    bad = []
    for line in src.splitlines():
        # an index op's error text (site='...') names its node's line too: a backward one_hot's
        # is the take it differentiates (ops/sweep.py), never the bp.compile call
        if not STATEMENT.match(line):
            continue
        where = re.search(r"\(([^()]*\.(?:py|toml):\d+)\)\s*$", line)
        grad = re.search(r"\(grad of .*, ([^,()]*\.(?:py|toml):\d+)\)\s*$", line)
        ok = (grad and user_file in grad.group(1)) or (where and user_file in where.group(1))
        if not ok or HERE in line:
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("name", ["char_lstm", "lenet_digits", "transformer_block", "xor"])
def test_toml_examples(name):
    gc.collect()  # interned nodes keep their first creator's marks: drop earlier graphs
    m = spec.load(str(ROOT / "examples" / f"{name}.toml"))
    fn = bp.compile(m.loss, list(m.wrt))
    assert _check(fn.source("function"), f"{name}.toml") == []


@pytest.mark.parametrize("name", ["rnn_bptt", "attention"])
def test_python_models(name):
    gc.collect()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import models

    loss, wrt, *_ = models.build([name])[name]
    fn = bp.compile(loss, wrt)
    assert _check(fn.source("function"), "models.py") == []
