"""Multi-label decisions and scores: per-class thresholds tuned for F1, and mAP / micro / macro F1 from probabilities.

Plain numpy over (N, C) sigmoid probabilities and (N, C) 0/1 targets, so evaluate, the end of a fit and a user's own
code share one definition. A class counts in the macro averages (mAP, macro F1) only when the split has at least one
image of it: a class with no positives has no defined AP, and scoring it 0 would punish the model for the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tlkit.model.settings import DEFAULT_THRESHOLD


def _as_arrays(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise ValueError(f"probabilities and targets must both be (images, classes); got {probs.shape} and "
                         f"{targets.shape}.")
    return probs, targets


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray, default: float = DEFAULT_THRESHOLD) -> float:
    """The threshold t maximising F1 of `score >= t` for one class (default when it has no positives).

    t is placed halfway between the lowest score kept positive and the next lower score, so the decision on these
    images is the one that scored best and a slightly different probability (another TTA, bf16) does not flip it.
    Ties go to the highest threshold (fewer false positives for the same F1)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float(default)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores (ties are decided together)
    tp = np.cumsum(y)[last_of_group]
    kept = np.flatnonzero(last_of_group) + 1  # images predicted positive at each cut
    f1 = 2 * tp / (kept + n_pos)
    best = int(np.argmax(f1))
    cut = s[last_of_group][best]
    below = s[last_of_group][best + 1] if best + 1 < len(tp) else 0.0
    return float((cut + below) / 2)


def tune_thresholds(probs, targets, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """(C,) float32 per-class thresholds maximising each class's F1 on (probs, targets), e.g. the validation split's
    sigmoid probabilities; a class without positives keeps `default`."""
    probs, targets = _as_arrays(probs, targets)
    return np.array([best_f1_threshold(probs[:, c], targets[:, c], default) for c in range(probs.shape[1])],
                    dtype=np.float32)


def decide(probs, thresholds: Sequence[float]) -> np.ndarray:
    """(N, C) booleans: which labels each image gets (probability >= its class's threshold)."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float32)[None, :]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class (scikit-learn's step-wise definition); NaN when the class has no positives."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positive, scores)) if positive.any() else math.nan


def multilabel_metrics(probs, targets, thresholds: Sequence[float], classes: Sequence[str]) -> dict:
    """mAP and micro / macro F1 (at `thresholds`), exact-match ratio, and per class AP, precision, recall, F1,
    threshold and support (images with the label)."""
    probs, targets = _as_arrays(probs, targets)
    predicted = decide(probs, thresholds)
    tp = (predicted & targets).sum(0)
    fp = (predicted & ~targets).sum(0)
    fn = (~predicted & targets).sum(0)
    support = targets.sum(0)
    present = support > 0
    ap = np.array([average_precision(probs[:, c], targets[:, c]) for c in range(probs.shape[1])])
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    micro = _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "images": int(len(probs)),
        "map": float(ap[present].mean()) if present.any() else math.nan,
        "f1_micro": float(micro),
        "f1_macro": float(f1[present].mean()) if present.any() else math.nan,
        "exact_match": float((predicted == targets).all(1).mean()) if len(probs) else math.nan,
        "per_class": [
            {"class": name, "ap": None if math.isnan(ap[c]) else float(ap[c]), "precision": float(_ratio(tp[c], tp[c] + fp[c])),
             "recall": float(_ratio(tp[c], tp[c] + fn[c])), "f1": float(f1[c]), "threshold": float(thresholds[c]),
             "support": int(support[c])}
            for c, name in enumerate(classes)
        ],
    }


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


__all__ = ["DEFAULT_THRESHOLD", "best_f1_threshold", "decide", "multilabel_metrics", "tune_thresholds"]
