"""The `bpcompile` command: compile, check, export and run a model spec from the shell.

    bpcompile compile SPEC [--backend B] [--emit WHAT] [--dump-passes] [-o FILE]
    bpcompile check   SPEC [--backend B] [--seed N] [--rtol R] [--atol A]
    bpcompile export  SPEC -o DIR [--name NAME]
    bpcompile run     SPEC [--backend B] [--seed N] [--steps K --lr LR]
    bpcompile train   SPEC [--data FILE.npz] --epochs N [--optimizer O] [--lr LR] ...

Exit codes: 0 success, 1 gradient check mismatch, 2 usage, spec or bpcompile error (one line
on stderr, no traceback), 3 internal error (a bug: traceback on stderr). See docs/spec.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import traceback
from pathlib import Path

import numpy as np

from .errors import BPError

BACKENDS = ("numpy", "llvm", "jax")
# --emit choice -> (how to get the text, the backend it needs or None)
EMITS = {
    "source": (lambda fn: fn.source(), None),
    "graph": (lambda fn: fn.graph("final"), None),
    "adjoint": (lambda fn: fn.graph("adjoint"), None),
    "stats": (lambda fn: fn.stats(), None),
    "llvm": (lambda fn: fn.source("llvm"), "llvm"),
    "asm": (lambda fn: fn.source("asm"), "llvm"),
    "jax": (lambda fn: fn.source("jax"), "jax"),
    "stablehlo": (lambda fn: fn.source("stablehlo"), "jax"),
}


class UsageError(BPError):
    """A command-line combination that cannot work (e.g. --emit llvm on the numpy backend)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpcompile",
        description="Compile a network's loss into readable forward+backward code.",
        epilog="SPEC is a .toml model spec or a .py model file; see docs/spec.md.")
    p.add_argument("--version", action="version", version=f"bpcompile {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("spec", metavar="SPEC", help="model spec (.toml) or model file (.py)")
        return sp

    def backend(sp):
        sp.add_argument("--backend", "-b", choices=BACKENDS, default="numpy", metavar="B",
                        help=f"code generator: {', '.join(BACKENDS)} (default: numpy)")

    c = add("compile", "print the generated derivative code or a graph of it")
    backend(c)
    c.add_argument("--emit", "-e", choices=list(EMITS), default="source", metavar="WHAT",
                   help=f"what to print: {', '.join(EMITS)} (default: source); llvm/asm need "
                        "--backend llvm, jax/stablehlo need --backend jax")
    c.add_argument("--dump-passes", action="store_true",
                   help="print the graph after every stage of the pipeline instead")
    c.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    k = add("check", "compare the compiled gradient with JAX and finite differences")
    backend(k)
    k.add_argument("--seed", type=int, default=None,
                   help="seed for random params/inputs (default: the spec's [init] seed)")
    k.add_argument("--rtol", type=float, default=None, help="relative tolerance vs JAX")
    k.add_argument("--atol", type=float, default=None, help="absolute tolerance vs JAX")

    e = add("export", "write a standalone artifact (object file, header) for the model")
    e.add_argument("-o", "--out-dir", required=True, metavar="DIR", help="output directory")
    e.add_argument("--name", default=None, help="symbol/file name (default: the model name)")

    r = add("run", "evaluate the loss and gradient norms on the example data")
    backend(r)
    r.add_argument("--seed", type=int, default=None, help="seed for random params/inputs")
    r.add_argument("--steps", type=int, default=0,
                   help="take this many plain gradient-descent steps, printing the loss")
    r.add_argument("--lr", type=float, default=0.1, help="learning rate for --steps")
    from .train.cli import add_parser as add_train_parser

    add_train_parser(sub)  # `bpcompile train` (bpcompile/train/cli.py)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def _load(path: str):
    from .spec import load

    return load(path)


def _compile(model, backend: str):
    return model.compile(backend)


# ---- subcommands ----------------------------------------------------------------------------
def cmd_compile(args) -> int:
    need = EMITS[args.emit][1]
    if need and args.backend != need and not args.dump_passes:
        raise UsageError(f"--emit {args.emit} needs --backend {need} "
                         f"(got --backend {args.backend})")
    fn = _compile(_load(args.spec), args.backend)
    if args.dump_passes:
        parts = []
        for name in [s.name for s in fn.stages]:
            parts.append(f"==== {name} ====\n{fn.graph(name)}")
        text = "\n\n".join(parts)
    else:
        text = EMITS[args.emit][0](fn)
    _write(text, args.output)
    return 0


def cmd_check(args) -> int:
    import bpcompile

    check = getattr(bpcompile, "check", None)
    if check is None:
        raise UsageError("bpcompile.check is not available in this version")
    model = _load(args.spec)
    options = {}
    if importlib.util.find_spec("jax") is None:  # finite differences still check the derivation
        print("note: jax is not installed; checking against finite differences only "
              "(pip install 'bpcompile[jax]')", file=sys.stderr)
        options["use_jax"] = False
    report = check(model.loss, model.wrt, inputs=model.example_inputs(args.seed),
                   params=model.init_params(args.seed), backend=args.backend,
                   seed=model.seed if args.seed is None else args.seed,
                   rtol=args.rtol, atol=args.atol, **options)
    print(f"{model.describe()}")
    print(report)
    return 0 if report.ok else 1


def cmd_export(args) -> int:
    import bpcompile

    export = getattr(bpcompile, "export", None)
    if export is None:
        raise UsageError("`bpcompile export` needs bpcompile.export, which this version lacks")
    model = _load(args.spec)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    written = export(model.loss, model.wrt, args.out_dir, name=args.name or model.name)
    if isinstance(written, dict):
        written = list(written.values())
    elif isinstance(written, (str, Path)):
        written = [written]
    for path in written or []:
        print(path)
    return 0


def cmd_run(args) -> int:
    model = _load(args.spec)
    fn = _compile(model, args.backend)
    inputs, params = model.example_inputs(args.seed), model.init_params(args.seed)
    print(model.describe())
    value, grads = fn(**inputs, **params)
    if args.steps > 0:
        every = max(1, args.steps // 10)
        for step in range(args.steps):
            for k, g in grads.items():
                params[k] = (params[k] - args.lr * g).astype(params[k].dtype)
            value, grads = fn(**inputs, **params)
            if (step + 1) % every == 0 or step + 1 == args.steps:
                print(f"step {step + 1:6d}  loss {float(value):.6g}")
    print(f"loss {float(value):.8g}")
    width = max(len(k) for k in grads) + 1 if grads else 2
    for k, g in grads.items():
        print(f"  d{k:<{width}s} shape {str(list(np.shape(g))):14s} "
              f"|grad| {float(np.linalg.norm(np.asarray(g, np.float64))):.6g}")
    return 0


def cmd_train(args) -> int:
    from .train.cli import run

    return run(args)


COMMANDS = {"compile": cmd_compile, "check": cmd_check, "export": cmd_export, "run": cmd_run,
            "train": cmd_train}


def _write(text: str, output: str | None):
    if not text.endswith("\n"):
        text += "\n"
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _enable_jax_x64():
    """A CLI run owns its process, so float64 specs may use JAX's 64-bit mode (float32 graphs
    stay float32: every dtype in generated code is explicit)."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
    except ImportError:
        pass  # the jax backend reports itself unavailable with an install hint


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also callable in-process from tests)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, bad usage exits 2
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if getattr(args, "backend", None) == "jax":
        _enable_jax_x64()
    try:
        return COMMANDS[args.command](args)
    except BPError as e:
        print(f"bpcompile {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bpcompile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bpcompile compile ... | head`
        return 0
    except Exception:
        traceback.print_exc()
        print("bpcompile: internal error (the traceback above is a bug; please report it)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
