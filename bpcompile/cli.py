"""The `bpcompile` command: compile, check, export and run a model spec from the shell.

    bpcompile compile SPEC [--backend B] [--emit WHAT] [--dump-passes] [-o FILE]
    bpcompile check   SPEC [--backend B] [--seed N] [--rtol R] [--atol A] [--precision P]
    bpcompile export  SPEC -o DIR [--name NAME]
    bpcompile run     SPEC [--backend B] [--seed N] [--steps K --lr LR] [--precision P]
    bpcompile train   SPEC [--data FILE.npz] [--epochs N] [--optimizer O] [--lr LR] ...
    bpcompile report  SPEC -o report.html [--seed N]

Exit codes: 0 success, 1 failed check (gradient mismatch), 2 user error (bad usage, spec,
model or file: one line on stderr naming the file and the fix), 3 internal error (a bug: one
line; `--debug` adds the traceback, for any error). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import re
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
    "latex": (lambda fn: fn.source("latex"), None),
    "markdown": (lambda fn: fn.source("markdown"), None),
    "dot": (lambda fn: fn.graph_image("final", "dot"), None),
    "svg": (lambda fn: fn.graph_image("final", "svg"), None),
    "png": (lambda fn: fn.graph_image("final", "png"), None),  # bytes: needs -o
}


C_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UsageError(BPError):
    """A command-line combination that cannot work (e.g. --emit llvm on the numpy backend)."""


def _int_at_least(lo: int, what: str):
    """An argparse type: an integer >= lo (a negative --steps must not pass silently)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
        return v

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _int_at_least(1, "a positive integer (>= 1)")
nonneg_int = _int_at_least(0, "an integer >= 0")  # seeds: NumPy refuses negative ones


def nonneg_float(text: str) -> float:
    """argparse type: a finite float >= 0 (tolerances)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (learning rates, clip norms)."""
    v = nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser by name (for error messages)."""
    p = argparse.ArgumentParser(
        prog="bpcompile",
        description="Compile a network's loss into readable forward+backward code.",
        epilog="SPEC is a .toml model spec or a .py model file (a .py file is executed: run "
               "only files you trust); see docs/spec.md. Exit codes: 0 ok, 1 failed check, "
               "2 user error, 3 internal error.")
    p.add_argument("--version", action="version", version=f"bpcompile {_version()}")
    p.add_argument("--debug", action="store_true", help="print a traceback for every error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each subcommand takes --debug too; SUPPRESS keeps the top-level value when it is absent.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print a traceback for every error")

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_, parents=[debug])
        sp.add_argument("spec", metavar="SPEC", help="model spec (.toml) or model file (.py)")
        return sp

    def backend(sp):
        sp.add_argument("--backend", "-b", choices=BACKENDS, default="numpy", metavar="B",
                        help=f"code generator: {', '.join(BACKENDS)} (default: numpy)")

    def precision(sp):
        sp.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default=None,
                        help="mixed precision: float32 master weights, 16-bit compute (default: "
                             "the spec's [model] precision, else float32; docs/dtypes.md)")

    c = add("compile", "print the generated derivative code or a graph of it")
    backend(c)
    c.add_argument("--emit", "-e", choices=list(EMITS), default="source", metavar="WHAT",
                   help=f"what to print: {', '.join(EMITS)} (default: source); llvm/asm need "
                        "--backend llvm, jax/stablehlo need --backend jax")
    c.add_argument("--dump-passes", action="store_true",
                   help="print the graph after every stage of the pipeline instead")
    c.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    c.add_argument("--memory-budget", metavar="BYTES", default=None,
                   help="recompute forward segments until the planned peak fits, e.g. 64MB "
                        "(docs/memory.md)")
    c.add_argument("--feedback", choices=("alignment", "direct"), default=None,
                   help="emit (direct) feedback alignment's updates instead of the gradient "
                        "(default: the spec's [feedback] table; docs/training.md)")
    precision(c)
    c.add_argument("--compress-activations", choices=("bfloat16", "int8"), default=None,
                   help="store the activations saved for the backward pass compressed "
                        "(docs/memory.md)")

    k = add("check", "compare the compiled gradient with JAX and finite differences")
    backend(k)
    k.add_argument("--seed", type=nonneg_int, default=None,
                   help="seed for random params/inputs (default: the spec's [init] seed)")
    k.add_argument("--rtol", type=nonneg_float, default=None, help="relative tolerance vs JAX")
    k.add_argument("--atol", type=nonneg_float, default=None, help="absolute tolerance vs JAX")
    precision(k)  # compared with JAX under the same policy, at the 16-bit dtype's tolerance

    e = add("export", "write a C shared library (lib<NAME>.so) and its header (<NAME>.h) "
                      "computing the loss and gradients (LLVM backend)")
    e.add_argument("-o", "--out-dir", required=True, metavar="DIR",
                   help="output directory (created if missing; must not be a file)")
    e.add_argument("--name", default=None,
                   help="C symbol and file name, letters/digits/_ (default: the model name)")

    r = add("run", "evaluate the loss and gradient norms on the example data")
    backend(r)
    r.add_argument("--seed", type=nonneg_int, default=None,
                   help="seed for random params/inputs")
    r.add_argument("--steps", type=positive_int, default=0, metavar="K",
                   help="take K >= 1 plain gradient-descent steps, printing the loss")
    r.add_argument("--lr", type=positive_float, default=0.1, help="learning rate for --steps")
    precision(r)
    rp = add("report", "write one self-contained HTML page: graph pictures, δ equations, "
                       "code of each backend, passes, memory, gradient check and norms")
    rp.add_argument("-o", "--output", required=True, metavar="FILE", help="the .html to write")
    rp.add_argument("--seed", type=nonneg_int, default=None,
                    help="seed for random params/inputs (default: the spec's [init] seed)")
    rp.add_argument("--no-check", action="store_true",
                    help="skip the gradient check (finite differences are slow on big models)")
    from .train.cli import add_parser as add_train_parser

    add_train_parser(sub, parents=[debug])  # `bpcompile train` (bpcompile/train/cli.py)
    return p, sub.choices


def _version() -> str:
    from . import __version__

    return __version__


def _load(path: str):
    from .spec import load

    return load(path)


def _compile(model, backend: str, **options):
    return model.compile(backend, **options)


# ---- subcommands ----------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    need = EMITS[args.emit][1]
    if need and args.backend != need and not args.dump_passes:
        raise UsageError(f"--emit {args.emit} needs --backend {need} "
                         f"(got --backend {args.backend})")
    if args.emit == "png" and not args.output and not args.dump_passes:
        raise UsageError("--emit png writes a binary image: give -o FILE.png")
    options = {}
    if args.memory_budget is not None:
        from .budget import parse_budget

        try:
            options["memory_budget"] = parse_budget(args.memory_budget)
        except ValueError as e:
            raise UsageError(f"--memory-budget: {e}") from None
    if args.feedback is not None:
        options["feedback"] = args.feedback
    if args.precision is not None:
        options["precision"] = args.precision
    if args.compress_activations is not None:
        options["compress_activations"] = args.compress_activations
    fn = _compile(_load(args.spec), args.backend, **options)
    if args.dump_passes:
        parts = []
        for name in [s.name for s in fn.stages]:
            parts.append(f"==== {name} ====\n{fn.graph(name)}")
        text = "\n\n".join(parts)
    else:
        text = EMITS[args.emit][0](fn)
    _write(text, args.output)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
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
    if model.feedback:  # say which derivative is checked: not what the spec compiles to
        print(f"note: the spec's [feedback] mode={model.feedback['mode']!r} compiles "
              "feedback-alignment updates, which are not gradients; this checks the exact "
              "gradient of the same model (`bpcompile report` checks the updates)",
              file=sys.stderr)
    report = check(model.loss, model.wrt, inputs=model.example_inputs(args.seed),
                   params=model.init_params(args.seed), backend=args.backend,
                   seed=model.seed if args.seed is None else args.seed,
                   rtol=args.rtol, atol=args.atol,
                   precision=args.precision or model.precision, **options)
    print(f"{model.describe()}")
    print(report)
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    import bpcompile

    export = getattr(bpcompile, "export", None)
    if export is None:
        raise UsageError("`bpcompile export` needs bpcompile.export, which this version lacks")
    if args.name is not None and not C_NAME.fullmatch(args.name):
        fix = re.sub(r"\W", "_", args.name, flags=re.ASCII)
        fix = fix if C_NAME.fullmatch(fix) else "model"
        raise UsageError(f"--name {args.name!r} is not a C identifier (ASCII letters, digits "
                         f"and _, not starting with a digit); try --name {fix}")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a directory; give a directory "
                         "(it is created if missing)")
    model = _load(args.spec)
    name = args.name
    if name is None:  # a file called my-model.toml must still export: make its name C-safe
        name = re.sub(r"\W", "_", model.name, flags=re.ASCII)
        name = name if C_NAME.fullmatch(name) else f"m_{name}"
    out.mkdir(parents=True, exist_ok=True)
    written = export(model.loss, model.wrt, str(out), name=name)
    print(f"wrote {written['library']} (shared library; entry point {name}_grad)")
    print(f"wrote {written['header']} (C header: signature, shapes, contracts)")
    if "workspace_bytes" in written:
        print(f"workspace: the caller passes {written['workspace_bytes']} bytes "
              f"({name.upper()}_WORKSPACE_BYTES in the header)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    model = _load(args.spec)
    fn = _compile(model, args.backend, precision=args.precision)  # None: the spec's
    inputs, params = model.example_inputs(args.seed), model.init_params(args.seed)
    print(model.describe())
    precision = args.precision or model.precision or "float32"
    if precision != "float32":
        print(f"precision: {precision} mixed (float32 master weights, {precision} compute)")
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


def cmd_report(args: argparse.Namespace) -> int:
    model = _load(args.spec)
    fn = _compile(model, "numpy")
    values = {**model.example_inputs(args.seed), **model.init_params(args.seed)}
    path = fn.report(args.output, values, title=model.describe(),
                     check_gradients=not args.no_check)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.cli import run

    return run(args)


COMMANDS = {"compile": cmd_compile, "check": cmd_check, "export": cmd_export, "run": cmd_run,
            "train": cmd_train, "report": cmd_report}


def _write(text: str | bytes, output: str | None):
    if isinstance(text, bytes):  # an image (--emit png; -o is required for it)
        Path(str(output)).write_bytes(text)
        print(f"wrote {output}", file=sys.stderr)
        return
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


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> int:
    """argparse names an unknown flag without a hint and with the top-level usage; name the
    subcommand, suggest the closest flag it has (`check --tol` -> --rtol) and exit 2."""
    options = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for word in extra:
        close = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6) \
            if word.startswith("-") else []
        hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: unrecognized argument{'s' if len(extra) > 1 else ''}: "
          f"{', '.join(hints)}; see {parser.prog} --help", file=sys.stderr)
    return 2


def _one_line(e: BaseException) -> str:
    """A user-facing message on one line (the first line of multi-line ones)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if "\n" in text else text


def _user_error(e: BaseException) -> str | None:
    """The message for an exception that is the user's to fix, or None for a bug."""
    if isinstance(e, BPError):
        return _one_line(e)
    if isinstance(e, OSError):  # a file the user named: missing, unreadable, not a directory
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    if isinstance(e, MemoryError):
        return ("out of memory: the model's shapes are too large for this machine; "
                "declare smaller inputs or layers")
    if isinstance(e, RecursionError):
        return ("the graph is too deep for Python's recursion limit (a bug: please report "
                "it with --debug); shorten the model meanwhile")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also callable in-process from tests)."""
    parser, commands = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, bad usage exits 2
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if extra:
        return _unrecognized(commands.get(args.command, parser), extra)
    debug = getattr(args, "debug", False)
    if getattr(args, "backend", None) == "jax":
        _enable_jax_x64()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("bpcompile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bpcompile compile ... | head`
        return 0
    except Exception as e:
        if debug:
            traceback.print_exc()
        msg = _user_error(e)
        if isinstance(e, MemoryError) and getattr(args, "spec", None):
            msg = f"{args.spec}: {msg}"  # name the model whose sizes are at fault
        if msg is not None:
            print(f"bpcompile {args.command}: error: {msg}", file=sys.stderr)
            return 2
        how = "the traceback is above" if debug else "rerun with --debug for the traceback"
        print(f"bpcompile {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(a bug; {how} and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
