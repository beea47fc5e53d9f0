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


PHASE_COLORS = {"forward": "tab:blue", "recompute": "tab:orange", "backward": "tab:green",
                "output copy": "tab:grey"}


def plot_memory(memory: dict | list, path, title: str = "memory timeline") -> Path:
    """Write a PNG of bytes live at each step: `fn.memory(timeline=True)` (or its `timeline`
    list), one bar per step coloured by phase (forward, recompute, backward), with the peak."""
    plt = _pyplot()
    path = Path(path)
    rows = memory["timeline"] if isinstance(memory, dict) else memory
    if not rows:
        raise BPError("plot_memory: the timeline is empty")
    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    steps = [r["step"] for r in rows]
    live = [r["live_bytes"] / 2**20 for r in rows]
    colors = [PHASE_COLORS.get(r["phase"], "black") for r in rows]
    ax.bar(steps, live, width=1.0, color=colors, linewidth=0)
    peak = max(live)
    ax.axhline(peak, color="tab:red", ls="--", lw=0.8)
    for ph, c in PHASE_COLORS.items():
        if any(r["phase"] == ph for r in rows):
            ax.bar([], [], color=c, label=ph)
    estimate = isinstance(memory, dict) and memory.get("estimate")
    ax.set_title(f"{title}: peak {peak:.3g} MiB" + (" (estimate)" if estimate else ""))
    ax.set_xlabel("schedule step")
    ax.set_ylabel("live MiB")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
