"""The report's plots, drawn with matplotlib (Agg) and returned as data: URIs so the page needs no other file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from tlkit.plots import _pyplot
from tlkit.report.runs import Run

TRAIN_STYLE, VAL_STYLE = "--", "-"
LR_DASHES, LR_MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
# Colour-blind-safe palette (Okabe-Ito) so overlaid runs stay distinguishable.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


def png_uri(fig, dpi: int = 100) -> str:
    """The figure as a base64 PNG data: URI; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_INLINE_BYTES = 20 * 2**20  # evaluate's galleries and preview grids are a few MB at most


def file_uri(path: Path, inside: Path) -> str | None:
    """A PNG inside the folder `inside` (evaluate's top losses, preview's grid) as a data: URI; None for anything
    else. report.json names its files, so a path leading out of the run folder (absolute, '..', a symlink) or a file
    that is not a PNG (a private key, say) must never end up in a page that gets shared."""
    try:
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(inside.resolve()) or not resolved.is_file():
            return None
        with resolved.open("rb") as f:
            data = f.read(MAX_INLINE_BYTES + 1)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None
    if not data.startswith(PNG_SIGNATURE) or len(data) > MAX_INLINE_BYTES:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    """(1-based epochs, values) of one metric, skipping epochs that did not log it."""
    points = [(e + 1, m[key]) for e, m in sorted(run.epochs.items()) if key in m]
    return [p[0] for p in points], [p[1] for p in points]


def _style_axis(ax, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)  # no "epoch 1.5" ticks on short runs
    ax.grid(alpha=0.3)


def curves_figure(runs: list[Run]) -> str | None:
    """Loss and accuracy per epoch, train dashed and val solid, one colour per run; None when nothing was logged."""
    if not any(run.epochs for run in runs):
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        prefix = f"{run.label} " if len(runs) > 1 else ""
        for ax, metric in ((left, "loss"), (right, "acc")):
            for split, style in (("train", TRAIN_STYLE), ("val", VAL_STYLE)):
                x, y = _series(run, f"{split}_{metric}")
                if x:
                    ax.plot(x, y, style, marker="o", markersize=4, color=colour, label=f"{prefix}{split}")
        x, y = _series(run, "val_map")  # multi-label runs: no accuracy, mAP on the same 0-1 scale
        if x:
            right.plot(x, y, VAL_STYLE, marker="^", markersize=4, color=colour, label=f"{prefix}val mAP")
        if len(runs) == 1:
            x, y = _series(run, "val_balanced_acc")
            if x:
                right.plot(x, y, ":", marker="s", markersize=3, color="#555555", label="val balanced")
    multi = any(_series(run, "val_map")[0] for run in runs)
    _style_axis(left, "cross-entropy loss" + (" (multi-label: summed binary)" if multi else ""))
    _style_axis(right, "accuracy / mAP" if multi else "accuracy")
    left.set_title("loss", fontsize=11)
    right.set_title("accuracy / mAP" if multi else "accuracy", fontsize=11)
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=8)
    return png_uri(fig)


def lr_figure(runs: list[Run]) -> str | None:
    """Per-group learning rate per epoch (LearningRateMonitor's lr-<Optimizer>/<group> columns): one colour per run
    when comparing, else per group; groups differ by marker and dash, so equal schedules (head and head_no_decay)
    stay visible on top of each other."""
    if not any(run.lr for run in runs):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.2), layout="constrained")
    values_seen = []
    for i, run in enumerate(runs):
        for j, (column, values) in enumerate(run.lr.items()):
            group = column.split("/", 1)[-1]
            colour = COLOURS[(i if len(runs) > 1 else j) % len(COLOURS)]
            ax.plot(range(1, len(values) + 1), values, LR_DASHES[j % len(LR_DASHES)],
                    marker=LR_MARKERS[j % len(LR_MARKERS)], markersize=max(3.0, 8 - 1.5 * j), color=colour,  # later on top, smaller
                    label=f"{run.label}: {group}" if len(runs) > 1 else group)
            values_seen += values
    positive = [v for v in values_seen if v > 0]
    # A backbone at 1/100 of the head's LR would be a flat line at zero on a linear axis.
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    _style_axis(ax, "learning rate")
    ax.set_title("learning rate per parameter group", fontsize=11)
    # Outside the axes: schedules end where a corner legend would sit.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=2 if len(ax.lines) > 12 else 1)
    return png_uri(fig)
