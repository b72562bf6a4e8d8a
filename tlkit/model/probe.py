"""Closed-form linear probe: multinomial logistic regression on cached features (Kornblith et al. 2019 protocol).

The L2 strength is chosen on a stratified held-out part of the training features, then the model is refitted on all
of them; the result is written into the head's final linear layer, so the checkpoint is a normal one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

C_GRID = tuple(10.0**k for k in range(-4, 3))  # inverse L2 strength, 1e-4 .. 1e2


def fit_logistic_head(views: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int,
                      holdout: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(weight (C, D), bias (C,), info) of an L-BFGS logistic regression; C chosen on a held-out split.

    Args:
        views: (K, N, D) cached features, K augmented views of N images (or (N, D)).
        labels: (N,) class indices.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if views.ndim == 2:
        views = views[None]
    y = labels.numpy()
    counts = np.bincount(y, minlength=num_classes)
    n_held = round(len(y) * holdout)
    scores: dict[float, float] = {}
    if counts.min() >= 2 and len(counts) <= n_held <= len(y) - len(counts):
        # Split images, not rows: the K views of one image stay on the same side, so C is scored on unseen images.
        fit_idx, held_idx = train_test_split(np.arange(len(y)), test_size=n_held, stratify=y, random_state=seed)
        fit_x, fit_y = _rows(views, fit_idx), np.tile(y[fit_idx], len(views))
        held_x, held_y = _rows(views, held_idx), np.tile(y[held_idx], len(views))
        for c in C_GRID:
            model = LogisticRegression(C=c, max_iter=2000).fit(fit_x, fit_y)
            scores[c] = float((model.predict(held_x) == held_y).mean())
        best_c = max(C_GRID, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: closest to sklearn's default 1
    else:
        best_c = 1.0
        log.warning("lbfgs probe: too few images per class to hold out %.0f%% for choosing C; using C=1", 100 * holdout)
    model = LogisticRegression(C=best_c, max_iter=2000).fit(_rows(views, np.arange(len(y))), np.tile(y, len(views)))
    weight, bias = _as_softmax_layer(model, num_classes)
    info = {"solver": "lbfgs", "C": best_c, "holdout_acc": scores}
    if scores:
        log.info("lbfgs probe: C=%g (held-out accuracy %.3f)", best_c, scores[best_c])
    return weight, bias, info


def _rows(views: torch.Tensor, index: np.ndarray) -> np.ndarray:
    return views[:, torch.as_tensor(index)].reshape(-1, views.shape[-1]).double().numpy()


def _as_softmax_layer(model, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1 and num_classes == 2:
        # Binary sklearn models give one logit z = w.x + b; logits (-z/2, z/2) have the same softmax.
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    full_w = np.zeros((num_classes, coef.shape[1]))
    full_b = np.zeros(num_classes)
    full_w[model.classes_] = coef
    full_b[model.classes_] = intercept
    return torch.from_numpy(full_w).float(), torch.from_numpy(full_b).float()
