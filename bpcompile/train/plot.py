"""Training plots: loss curves and per-parameter gradient norms (matplotlib, `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BPError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BPError("plotting needs matplotlib: pip install 'bpcompile[plot]'") from None
    return plt


def plot_history(history, path) -> Path:
    """Write a PNG with (left) training and validation loss and (right) mean gradient norm per
    parameter, both per epoch on log scales."""
    plt = _pyplot()
    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ep = history.epoch
    ax1.plot(ep, history.loss, label="training loss", color="tab:blue")
    val = [(e, v) for e, v in zip(ep, history.val_loss) if v is not None]
    if val:
        ax1.plot([e for e, _ in val], [v for _, v in val], label="validation loss",
                 color="tab:orange")
    if history.best_epoch is not None:
        ax1.axvline(history.best_epoch, color="grey", ls=":", lw=1, label="best epoch")
    if all(v > 0 for v in history.loss):
        ax1.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    if history.grad_norm:
        for k, g in history.grad_norm.items():
            ax2.plot(ep[-len(g):], g, label=k)
        if all(v > 0 for g in history.grad_norm.values() for v in g):
            ax2.set_yscale("log")
        if min(min(g) for g in history.grad_norm.values()) < 1e-5:
            ax2.axhline(1e-7, color="tab:red", ls="--", lw=0.8, label="vanishing (1e-7)")
        ax2.legend(ncol=2, fontsize="small")
    else:
        ax2.text(0.5, 0.5, "no gradient diagnostics recorded", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mean ‖gradient‖ per epoch")
    ax2.set_title("gradient norm per parameter")
    ax2.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
