"""Read train/val curves the way CS231n's training notes do and say what to change.

`diagnose_curves` is a pure function over per-epoch arrays, so synthetic curves test every verdict; `read_metrics_csv`
turns Lightning's CSVLogger file (train and val metrics on separate rows) into those arrays.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import DataError, DataNotFoundError
from tlkit.io import save_figure

CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")

ADVICE = {
    "diverged": [
        "lower optim.lr (10x), or find one with tlkit lr-find",
        "add schedule.warmup_epochs; check the inputs for NaN (tlkit check)",
    ],
    "overfitting": [
        "more regularisation: raise optim.weight_decay, head.dropout, optim.label_smoothing",
        "more augmentation (augment: medium/heavy) or Mixup/CutMix; more data",
        "freeze more: a linear probe instead of fine-tuning, or a lower strategy.backbone_lr_mult",
    ],
    "underfitting": [
        "more capacity: a bigger backbone, an MLP head (head.hidden), or fine-tune more layers (strategy: finetune)",
        "train longer or with a higher LR; less regularisation (weight decay, dropout, augmentation)",
    ],
    "still improving": [
        "train longer (trainer.epochs): the validation curve has not flattened yet",
    ],
    "well fit": [
        "no clear problem: small train/val gap and high training accuracy; tune LR/weight decay (tlkit search) "
        "for the last points",
    ],
}


@dataclass
class Diagnosis:
    verdict: str
    reason: str
    advice: list[str]
    values: dict


def diagnose_curves(
    train_loss: list[float],
    val_loss: list[float],
    train_acc: list[float],
    val_acc: list[float],
    *,
    gap: float = 0.10,
    underfit_train_acc: float = 0.90,
    improving: float = 0.02,
    window: int = 3,
) -> Diagnosis:
    """One verdict, checked in order: diverged, overfitting, still improving, underfitting, well fit.

    Args:
        gap: train - val accuracy (last epoch) above this is overfitting; so is a val loss that rose 20% above its
            minimum while the train loss kept falling.
        underfit_train_acc: with no gap, a final train accuracy below this is underfitting (the model cannot even fit
            the training set; the "no gap" case).
        improving: relative val-loss drop over the last `window` epochs that counts as still improving.
    """
    n = min(len(train_loss), len(val_loss), len(train_acc), len(val_acc))
    if n == 0:
        raise ValueError("no complete epoch (train and val metrics) to diagnose.")
    tl, vl, ta, va = (list(map(float, c[:n])) for c in (train_loss, val_loss, train_acc, val_acc))
    final_gap = ta[-1] - va[-1]
    values = {"epochs": n, "train_acc": ta[-1], "val_acc": va[-1], "train_loss": tl[-1], "val_loss": vl[-1],
              "gap": final_gap, "best_val_epoch": max(range(n), key=lambda i: (va[i], -vl[i]))}

    def verdict(kind: str, reason: str) -> Diagnosis:
        return Diagnosis(kind, reason, ADVICE[kind], values)

    if not all(math.isfinite(v) for v in tl + vl):
        return verdict("diverged", "the loss became NaN or infinite")
    if n >= 2 and tl[-1] > 1.5 * tl[0]:
        return verdict("diverged", f"train loss rose from {tl[0]:.3f} to {tl[-1]:.3f}")
    if final_gap > gap:
        return verdict("overfitting", f"train accuracy {ta[-1]:.1%} vs val {va[-1]:.1%}: a gap of {final_gap:.1%} "
                                      f"(> {gap:.0%})")
    best_vl = min(vl)
    rising = n >= window and vl[-1] > 1.2 * best_vl and tl[-1] < tl[vl.index(best_vl)]
    rise = f"val loss rose from its minimum {best_vl:.3f} (epoch {vl.index(best_vl)}) to {vl[-1]:.3f}"
    if rising and final_gap >= 0:
        return verdict("overfitting", f"{rise} while the train loss kept falling")
    # Training accuracy below validation (label smoothing, augmentation and mixing make the training numbers
    # pessimistic): a rising val loss is then growing confidence on the few val errors, not memorisation.
    note = f"; {rise}, but train accuracy is below val: overconfidence on a few errors, not overfitting" if rising else ""
    recent = vl[-min(window, n):]
    if not rising and n >= 2 and recent[0] > 0 and (recent[0] - recent[-1]) / recent[0] > improving:
        return verdict("still improving", f"val loss fell {(recent[0] - recent[-1]) / recent[0]:.1%} over the last "
                                          f"{len(recent)} epochs")
    if ta[-1] < underfit_train_acc:
        return verdict("underfitting", f"no gap (train {ta[-1]:.1%}, val {va[-1]:.1%}) and the model does not fit "
                                       f"the training set (train accuracy < {underfit_train_acc:.0%}){note}")
    return verdict("well fit", f"gap {final_gap:+.1%}, train accuracy {ta[-1]:.1%}{note or ', val loss flat'}")


def metrics_rows(path: Path) -> Iterator[dict[str, float]]:
    """The filled cells of each row of a Lightning CSVLogger metrics.csv, as numbers (NaN and inf included).

    A cell that is not a number, or a file that is not UTF-8 text, is a DataError naming the line and column: the file
    was edited or damaged, and a traceback from float() would not say where."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                values = {}
                for key, text in row.items():
                    if text in (None, "") or key is None:  # key None: more cells than columns (kept out)
                        continue
                    try:
                        values[key] = float(text)
                    except (TypeError, ValueError):
                        raise DataError(f"{path}, line {reader.line_num}, column {key!r}: {str(text)[:40]!r} is not a "
                                        "number; metrics.csv is written by tlkit train: restore it, or remove that "
                                        "row.") from None
                yield values
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); it is "
                        "damaged: restore it from a copy.") from None


def read_metrics_csv(path: str | Path) -> dict[str, list[float]]:
    """Per-epoch curves {'epoch', 'train_loss', ...} from a Lightning CSVLogger metrics.csv."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found; give a run directory written by tlkit train (it has metrics.csv).")
    by_epoch: dict[int, dict[str, float]] = {}
    for row in metrics_rows(path):
        if "epoch" not in row or not math.isfinite(row["epoch"]):
            continue
        epoch = by_epoch.setdefault(int(row["epoch"]), {})
        epoch.update({key: row[key] for key in CURVES if key in row})
    epochs = sorted(e for e, m in by_epoch.items() if all(k in m for k in CURVES))
    curves = {"epoch": [float(e) for e in epochs]}
    curves.update({k: [by_epoch[e][k] for e in epochs] for k in CURVES})
    return curves


def plot_curves(curves: dict[str, list[float]], diagnosis: Diagnosis, out: str | Path, title: str = "") -> Path:
    """Loss and accuracy, train vs val, per epoch, with the verdict in the title."""
    from tlkit.plots import _pyplot

    plt = _pyplot()
    epochs = [e + 1 for e in curves["epoch"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in ((left, "loss"), (right, "acc")):
        ax.plot(epochs, curves[f"train_{metric}"], "o-", label="train")
        ax.plot(epochs, curves[f"val_{metric}"], "s-", label="val")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # no "epoch 1.5" ticks on short runs
        ax.set_ylabel("cross-entropy" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}{': ' if title else ''}{diagnosis.verdict} — {diagnosis.reason}", fontsize=10)
    return save_figure(fig, out, dpi=110)
