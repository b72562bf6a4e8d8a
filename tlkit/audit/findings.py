"""What the audit finds, from features and labels alone: out-of-fold probabilities of a k-fold probe, label issues
(cleanlab), near-duplicates by cosine similarity (within a split, and across splits: leaks) and outliers.

Pure numpy / torch / cleanlab on arrays: no files, no models, so every piece is testable on its own.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tlkit.audit.adapter import fit_probe
from tlkit.errors import DataError

log = logging.getLogger(__name__)

SIMILARITY_CHUNK = 1024  # rows of the similarity matrix computed at once: bounded memory at any data size


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 5,
                              seed: int = 0, multi_label: bool = False) -> np.ndarray:
    """(N, C) probabilities of each image from a probe that never saw it: k folds (stratified by class for
    single-label data), a closed-form probe fitted on the other k - 1 (softmax; multi-label: one sigmoid per class).

    labels: (N,) class indices, or (N, C) 0/1 for multi_label. Fewer folds are used when the smallest class has
    fewer images than `folds` (at least 2, so every class is in each fitting part)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(features)
    if multi_label:
        k = min(folds, n)
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(features)
    else:
        smallest = int(np.bincount(labels, minlength=num_classes)[np.bincount(labels, minlength=num_classes) > 0].min())
        if smallest < 2:
            raise DataError("every class needs at least 2 images for an out-of-fold probe; a class has "
                            f"{smallest}. Add images or remove the class.")
        k = max(2, min(folds, smallest))
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(features, labels)
    if k < folds:
        log.warning("audit: %d folds instead of %d (the smallest class has %d images)", k, folds, k)
    probs = np.zeros((n, num_classes), dtype=np.float64)
    for fold, (fit, held) in enumerate(splits):
        weight, bias = fit_probe(features[fit], labels[fit], num_classes=num_classes, seed=seed + fold,
                                 multi_label=multi_label)
        logits = features[held].astype(np.float64) @ weight.T.astype(np.float64) + bias
        probs[held] = 1 / (1 + np.exp(-logits)) if multi_label else _softmax(logits)
    return probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LabelIssue:
    index: int
    quality: float  # cleanlab's label quality score: 0 = the given label is surely wrong, 1 = surely right
    suggested: tuple[int, ...]  # the probe's label(s): its top class, or (multi-label) every class above 0.5


def label_issues(labels: np.ndarray, probs: np.ndarray, *, multi_label: bool = False) -> list[LabelIssue]:
    """Images cleanlab finds likely mislabelled (confident learning on the out-of-fold probabilities), worst first.

    n_jobs=1: cleanlab's default forks a process pool, and a fork of a process that runs torch's threads can deadlock
    in the child (seen: `tlkit audit` hung forever in CI's test run)."""
    if multi_label:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        given = [list(np.flatnonzero(row)) for row in labels]
        flagged = find_label_issues(labels=given, pred_probs=probs, n_jobs=1)
        quality = get_label_quality_scores(labels=given, pred_probs=probs)
        suggested = [tuple(np.flatnonzero(p >= 0.5).tolist()) for p in probs]
    else:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        flagged = find_label_issues(labels=labels, pred_probs=probs, n_jobs=1)
        quality = get_label_quality_scores(labels=labels, pred_probs=probs)
        suggested = [(int(p.argmax()),) for p in probs]
    issues = [LabelIssue(int(i), float(quality[i]), suggested[i]) for i in np.flatnonzero(flagged)]
    return sorted(issues, key=lambda issue: (issue.quality, issue.index))


def nearest_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k), cosine similarities (N, k)) of each image's k most similar other images, most similar
    first; computed in chunks of rows, so memory stays bounded."""
    import torch

    x = torch.nn.functional.normalize(torch.from_numpy(features).float(), dim=1)
    k = min(k, len(x) - 1)
    indices, similarities = [], []
    for start in range(0, len(x), SIMILARITY_CHUNK):
        block = x[start:start + SIMILARITY_CHUNK] @ x.T
        rows = torch.arange(len(block))
        block[rows, rows + start] = -math.inf  # an image is not its own neighbour
        top = block.topk(k, dim=1)
        indices.append(top.indices)
        similarities.append(top.values)
    return torch.cat(indices).numpy(), torch.cat(similarities).numpy()


@dataclass(frozen=True)
class DuplicatePair:
    first: int  # the earlier image (train before val before test, then in scan order)
    second: int
    similarity: float
    leak: bool  # the two images are in different splits


def near_duplicates(neighbours: np.ndarray, similarities: np.ndarray, splits: Sequence[str], *,
                    threshold: float) -> list[DuplicatePair]:
    """Pairs of images whose features have cosine similarity >= threshold (each pair once), most similar first."""
    pairs: dict[tuple[int, int], float] = {}
    for i, (row, sims) in enumerate(zip(neighbours, similarities)):
        for j, s in zip(row.tolist(), sims.tolist()):
            if s >= threshold:
                pairs[(min(i, j), max(i, j))] = max(s, pairs.get((min(i, j), max(i, j)), -1.0))
    found = [DuplicatePair(a, b, s, splits[a] != splits[b]) for (a, b), s in pairs.items()]
    return sorted(found, key=lambda p: (-p.similarity, p.first, p.second))


def outlier_scores(features: np.ndarray, k: int = 10) -> np.ndarray:
    """cleanlab's out-of-distribution score of each image from its k nearest neighbours (cosine distance): near 0 =
    unlike any other image, near 1 = typical."""
    from cleanlab.outlier import OutOfDistribution

    k = max(1, min(k, len(features) - 2))
    with contextlib.redirect_stdout(io.StringIO()):  # cleanlab prints progress notes to stdout
        return OutOfDistribution(params={"k": k}).fit_score(features=features.astype(np.float32))


def val_accuracy_without(probs: np.ndarray, labels: np.ndarray, val: np.ndarray, left_out: np.ndarray) -> dict:
    """Out-of-fold accuracy on the val images, with all of them and without `left_out` (val images with a
    near-twin in train: a model that saw the twin scores them too well)."""
    correct = probs.argmax(1) == labels
    kept = val & ~left_out

    def share(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    return {"val_images": int(val.sum()), "with_twin_in_train": int((val & left_out).sum()),
            "val_acc": share(val), "val_acc_without_twins": share(kept)}
