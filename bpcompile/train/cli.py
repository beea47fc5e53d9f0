"""`bpcompile train SPEC --data FILE.npz ...`: train a spec on arrays from an .npz file.

    bpcompile train SPEC [--data FILE.npz] [--epochs N] [--batch-size B] [--optimizer adam]
                    [--lr 1e-3] [--seed S] [--checkpoint DIR] [--resume] [--plot FILE.png]
                    [--val FILE.npz | --val-split F] [--patience P] [--clip-norm C]
                    [--backend B] [--no-progress] [--feedback alignment|direct]
                    [--memory-budget BYTES] [--compress-activations bfloat16|int8]
                    [--micro-batches K]

The .npz holds one array per model input (by input name, examples on the leading axis).
Wired into `bpcompile/cli.py` as the `train` subcommand: `add_parser(subparsers)`, `run(args)`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import BPError

BACKENDS = ("numpy", "llvm", "jax")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add the `train` subcommand's parser to the main CLI's `subparsers`."""
    from ..cli import nonneg_int, positive_float, positive_int
    from ..optim import OPTIMIZERS

    help_ = "train a model on .npz data with a compiled training step"
    t = subparsers.add_parser("train", help=help_, description=help_, parents=list(parents))
    t.add_argument("spec", metavar="SPEC", help="model spec (.toml) or model file (.py)")
    t.add_argument("--data", metavar="FILE.npz",
                   help="training arrays by input name, examples on the leading axis "
                        "(default: the spec's literal [data], if it gives every input)")
    t.add_argument("--epochs", type=positive_int, default=10, metavar="N",
                   help="epochs (default 10)")
    t.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                   help="minibatch size (default: the spec's input batch size)")
    t.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam", metavar="OPT",
                   help=f"one of {', '.join(sorted(OPTIMIZERS))} (default adam)")
    t.add_argument("--lr", type=positive_float, default=1e-3,
                   help="learning rate (default 1e-3)")
    t.add_argument("--clip-norm", type=positive_float, default=None, metavar="C",
                   help="clip gradients to global norm C")
    t.add_argument("--seed", type=nonneg_int, default=None,
                   help="seed for init and shuffling (default: the spec's [init] seed)")
    val = t.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="FILE.npz", help="validation arrays")
    val.add_argument("--val-split", type=float, metavar="F",
                     help="hold out this fraction of the data for validation")
    t.add_argument("--patience", type=positive_int, default=None, metavar="P",
                   help="early stopping: stop after P epochs without improvement")
    t.add_argument("--checkpoint", metavar="DIR", help="save last.npz/best.npz here each epoch")
    t.add_argument("--resume", action="store_true", help="continue from DIR/last.npz")
    t.add_argument("--plot", metavar="FILE.png", help="draw loss and gradient-norm curves")
    t.add_argument("--backend", "-b", choices=BACKENDS, default="numpy", metavar="B",
                   help=f"code generator: {', '.join(BACKENDS)} (default: numpy)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or epoch lines")
    t.add_argument("--precision", choices=("float32", "float16", "bfloat16"), default=None,
                   help="mixed precision: float32 master weights, 16-bit compute (docs/dtypes.md)")
    t.add_argument("--loss-scale", type=_loss_scale, default=None, metavar="S",
                   help="'dynamic' or a static scale for float16 training (docs/dtypes.md)")
    t.add_argument("--feedback", choices=("alignment", "direct"), default=None,
                   help="train with (direct) feedback alignment instead of backprop "
                        "(default: the spec's [feedback], else backprop; docs/training.md)")
    t.add_argument("--feedback-seed", type=nonneg_int, default=None, metavar="S",
                   help="seed of the fixed random feedback matrices (default 0)")
    t.add_argument("--memory-budget", metavar="BYTES", default=None,
                   help="recompute forward segments until the step's planned peak fits, e.g. "
                        "64MB (default: the spec's [memory] table; docs/memory.md)")
    t.add_argument("--compress-activations", choices=("bfloat16", "int8"), default=None,
                   help="store the activations saved for the backward pass compressed "
                        "(default: the spec's [memory] table; docs/memory.md)")
    t.add_argument("--micro-batches", type=positive_int, default=1, metavar="K",
                   help="gradient accumulation: each step of --batch-size examples runs as K "
                        "micro-batches and one update (default 1)")
    return t


def _loss_scale(text: str) -> str | float:
    if text == "dynamic":
        return text
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive number, got {text!r}")
    return v


def run(args: argparse.Namespace) -> int:
    """Train; print a summary; exit 0 (errors raise BPError, reported by the main CLI)."""
    from ..optim import get
    from ..spec import load
    from .fit import fit

    if args.resume and not args.checkpoint:
        raise BPError("--resume needs --checkpoint DIR")
    if args.epochs < 1:
        raise BPError(f"--epochs must be >= 1, got {args.epochs}")
    if args.plot:  # fail before training, not after it
        from .plot import _pyplot

        _pyplot()
    model = load(args.spec)
    data = args.data
    if data is None:
        names = [x.attr("name") for x in model.inputs]
        if not all(n in model.data for n in names):
            raise BPError(f"{args.spec}: no --data FILE.npz given and the spec has no literal "
                          f"data for every input ({', '.join(names)})")
        data = {n: model.data[n] for n in names}
    kw = {"clip_norm": args.clip_norm} if args.clip_norm else {}
    budget = None
    if args.memory_budget is not None:  # parsed before training, like --plot
        from ..budget import parse_budget

        try:
            budget = parse_budget(args.memory_budget)
        except ValueError as e:
            raise BPError(f"--memory-budget: {e}") from None
    try:
        opt = get(args.optimizer, args.lr, **kw)
    except ValueError as e:
        raise BPError(str(e)) from None
    hist = fit(model, data, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
               seed=args.seed, validation=args.val if args.val else args.val_split,
               early_stopping=args.patience, checkpoint_dir=args.checkpoint,
               resume=args.resume, progress=not args.no_progress, backend=args.backend,
               precision=args.precision, loss_scale=args.loss_scale,
               memory_budget=budget, compress_activations=args.compress_activations,
               micro_batches=args.micro_batches, **_feedback(model, args))
    if not hist.loss:
        print(f"nothing to do: the checkpoint is already at epoch {args.epochs}")
        return 0
    last = hist.loss[-1]
    if not math.isfinite(last):
        raise BPError(f"training diverged: loss {last}")
    summary = f"trained {hist.epoch[-1]} epochs: loss {last:.6g}"
    if hist.val_loss and hist.val_loss[-1] is not None:
        summary += f", val_loss {hist.val_loss[-1]:.6g}"
    if hist.best_epoch is not None:
        summary += f", best {hist.best_loss:.6g} at epoch {hist.best_epoch}"
    if hist.loss_scale:
        summary += (f", loss scale {hist.loss_scale[-1]:g} "
                    f"({sum(hist.skipped_steps)} steps skipped)")
    print(summary)
    memory = _memory_line(hist.step)
    if memory:
        print(memory)
    for w in hist.warnings[:10]:
        print(f"warning: {w}")
    if args.checkpoint:
        print(f"checkpoints in {Path(args.checkpoint)}/ (last.npz, best.npz, history.json)")
    if args.plot:
        print(f"wrote {hist.plot(args.plot)}")
    return 0


def _feedback(model, args: argparse.Namespace) -> dict:
    """fit's feedback keywords: the flags over the spec's [feedback] table."""
    mode = args.feedback or model.feedback.get("mode")
    if mode is None:
        if args.feedback_seed is not None:
            raise BPError("--feedback-seed needs --feedback (or a [feedback] table in the spec)")
        return {}
    seed = args.feedback_seed if args.feedback_seed is not None else model.feedback.get("seed", 0)
    return {"feedback": mode, "feedback_seed": seed}


def _memory_line(step) -> str:
    """What --memory-budget / --compress-activations did to the step ('' when neither)."""
    parts = []
    rep = step.remat_report
    if rep:
        flops = rep.get("recompute_flops", rep["recompute_flops_model"])
        parts.append(f"planned peak {rep['planned_peak_bytes']} B <= budget "
                     f"{rep['budget_bytes']} B, {rep['recomputed_segments']} segments "
                     f"recomputed ({flops} FLOPs)")
    comp = step.compress_report
    if comp:
        parts.append(f"{comp['tensors']} saved activations stored as {comp['mode']} "
                     f"({comp['exact_bytes']} -> {comp['stored_bytes']} B)")
    return "memory: " + "; ".join(parts) if parts else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (`python -m bpcompile.train.cli`), same behaviour as `bpcompile train`
    (same exit codes and messages: it goes through the main CLI)."""
    import sys

    from ..cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(argv if argv[:1] == ["train"] else ["train", *argv])


if __name__ == "__main__":
    raise SystemExit(main())

