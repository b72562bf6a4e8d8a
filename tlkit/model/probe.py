"""Closed-form linear probe: L2-regularised logistic regression on cached features (Kornblith et al. 2019 protocol).

The L2 strength C is chosen on a held-out part of the training features, then the model is refitted on all of them;
the result is written into the head's final linear layer, so the checkpoint is a normal one.

Why not sklearn's LogisticRegression once per C: on raw features each weakly regularised solve needs thousands of
L-BFGS iterations (116 s for 2,000 x 1,280 features and 7 values of C on a busy machine). Here the features are
standardised once, the C path runs from strong to weak regularisation with each solve starting from the previous
solution (a warm start, as glmnet does for its lambda path), and full-batch L-BFGS runs in torch. The
standardisation is folded back into the returned weight and bias, so the head takes raw features.
Single-label: softmax cross-entropy (multinomial); multi-label: one sigmoid per class (one-vs-rest, BCE), which is
the sum of C independent binary problems, solved together.

Memory: features given as a tensor, or rows from the feature cache (tlkit.data.shards.FeatureViews) that fit in
IN_MEMORY_VALUES, are held in memory and solved exactly as above. Larger cached rows are never held whole: the
standardisation statistics, every loss and gradient evaluation and the held-out scores each read them in batches
of BATCH_VALUES (the same sums, accumulated batch by batch), so the probe's memory does not grow with the images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from tlkit.model.tasks import Task, task_from

log = logging.getLogger(__name__)

C_GRID = tuple(10.0**k for k in range(-4, 3))  # inverse L2 strength, 1e-4 .. 1e2 (sklearn's meaning of C)
MAX_ITER = 500  # L-BFGS iterations per C; warm starts usually converge in far fewer
TOL_GRAD = 1e-5  # stop when every gradient entry of the mean loss is below this
THREADED_WORK = 2e8  # multiply-adds per loss evaluation below which one thread is faster (see _threads)
IN_MEMORY_VALUES = 2**25  # cached feature values (128 MB as float32) up to which the probe holds them in memory
BATCH_VALUES = 2**20  # feature values per batch read when it does not (4 MB as float32)


def fit_logistic_head(views: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int,
                      holdout: float = 0.2, task: Task | str | bool = "single_label",
                      fine_tune_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(weight (C, D), bias (C,), info) of an L-BFGS logistic regression; C chosen on a held-out split.

    Args:
        views: (K, N, D) cached features, K augmented views of N images (or (N, D)).
        labels: (N,) class indices, or (N, num_classes) multi-hot 0/1 for a multi-label task.
        task: single_label (softmax cross-entropy, C chosen by held-out accuracy) or multi_label (a sigmoid per
            class, one-vs-rest; C chosen by held-out mean average precision): a Task, its name, or a multi-label
            flag. The task states the loss, the score and how the held-out split is stratified.
        fine_tune_loss: (logits, targets) -> the loss fine-tuning will minimise from this head (LP-FT). C is then
            the one with the lowest held-out value of it, not the best held-out score: the probe is a starting
            point, and a head that already minimises the fine-tune's loss (label smoothing included) sends the
            smallest gradients into the backbone in the first steps. An overconfident head under label smoothing
            does the opposite (cifar10_small: C=0.01 and C=0.001 tied on held-out accuracy, 405/600; the sharper
            one started the fine-tune with a larger loss).
    """
    task = task_from(task)
    views, labels = _as_problem(views, labels, task)
    split = _holdout_split(labels, num_classes, holdout, seed, task)
    best_c, scores, init, losses = _choose_c(views, labels, num_classes, task, split, fine_tune_loss)
    if not scores:
        log.warning("lbfgs probe: too few images%s to hold out %.0f%% for choosing C; using C=1",
                    "" if task.strata(labels) is None else " per class", 100 * holdout)
    x, y, scale = _standardised_rows(views, labels, torch.arange(len(labels)))
    weight, bias = _solve(x, y, best_c, num_classes, task, init)
    weight, bias = _unstandardise(weight, bias, *scale)
    info = {"solver": "lbfgs", "C": best_c, task.probe_scores_key: scores}
    if losses:
        info["holdout_fine_tune_loss"] = losses
    if scores:
        chosen_by = f", fine-tune loss {losses[best_c]:.4f}: the lowest" if losses else ""
        log.info("lbfgs probe: C=%g (held-out %s %.3f%s)", best_c, task.metric_label, scores[best_c], chosen_by)
    return weight, bias, info


def holdout_scores(views: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int, holdout: float = 0.2,
                   task: Task | str | bool = "single_label") -> dict:
    """The probe's held-out measurement without the final refit: fit on (1 - holdout) of the images, score on the
    rest (the task's: accuracy, or mean average precision for multi-label) for each C of the grid.

    Returns {"C": the best C, "score": its held-out score, "scores": {C: score}, "metric": "accuracy" | "mAP",
    "fit_images": n, "held_out_images": n}; score is None when too few images (per class) to hold out."""
    task = task_from(task)
    views, labels = _as_problem(views, labels, task)
    split = _holdout_split(labels, num_classes, holdout, seed, task)
    best_c, scores, _, _ = _choose_c(views, labels, num_classes, task, split)
    return {"C": best_c if scores else None, "score": scores[best_c] if scores else None, "scores": scores,
            "metric": task.metric_label,
            "fit_images": len(split[0]) if split is not None else len(labels),
            "held_out_images": len(split[1]) if split is not None else 0}


def _as_problem(views: Any, labels: torch.Tensor, task: Task) -> tuple[Any, torch.Tensor]:
    """(K, N, D) float views (a tensor, or cached rows too big to hold, read in batches) and the labels in the
    loss's dtype."""
    views = _in_memory_if_small(views)
    if isinstance(views, torch.Tensor):
        views = (views[None] if views.ndim == 2 else views).float()
    return views, task.probe_targets(labels)


def _in_memory_if_small(views: Any) -> Any:
    """Cached rows (FeatureViews) as a tensor when they hold at most IN_MEMORY_VALUES values."""
    if not isinstance(views, torch.Tensor) and views.numel() <= IN_MEMORY_VALUES:
        return views.tensor()
    return views


class _Batched:
    """The standardised rows (all views, view after view) of cached features too big to hold: what the solver
    multiplies, read BATCH_VALUES at a time."""

    def __init__(self, views: Any, mean: torch.Tensor, std: torch.Tensor):
        self.views, self.mean, self.std = views, mean, std
        self.width = views.shape[-1]
        self.step = max(1, BATCH_VALUES // self.width)

    def __len__(self) -> int:
        return len(self.views) * self.views.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.width

    def numel(self) -> int:
        return len(self) * self.width

    def batches(self):
        for view in self.views:
            for rows in view.chunks(self.step):
                yield (rows.float() - self.mean) / self.std


def _raw_stats(views: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (float64, two passes) of cached rows read in batches."""
    step = max(1, BATCH_VALUES // views.shape[-1])
    n = len(views) * views.shape[1]
    total = torch.zeros(views.shape[-1], dtype=torch.float64)
    for view in views:
        for rows in view.chunks(step):
            total += rows.double().sum(0)
    mean = total / n
    squares = torch.zeros_like(total)
    for view in views:
        for rows in view.chunks(step):
            squares += rows.double().sub_(mean).pow_(2).sum(0)
    return mean, (squares / max(n - 1, 1)).sqrt()


def _choose_c(views: torch.Tensor, labels: torch.Tensor, num_classes: int, task: Task,
              split: tuple[torch.Tensor, torch.Tensor] | None, fine_tune_loss: Callable | None = None,
              ) -> tuple[float, dict[float, float], tuple[torch.Tensor, torch.Tensor] | None, dict[float, float]]:
    """(best C, held-out score per C, the best C's solution on the fit part to warm-start from, held-out
    fine_tune_loss per C or {}); with no split (too few images): (1.0, {}, None, {})."""
    if split is None:
        return 1.0, {}, None, {}
    fit_idx, held_idx = split
    x, y, scale = _standardised_rows(views, labels, fit_idx)
    held_x = ((_rows(views, held_idx) - scale[0]) / scale[1] if isinstance(views, torch.Tensor)
              else _Batched(views.subset(held_idx), *scale))
    held_y = _tile(labels[held_idx], len(views))
    scores: dict[float, float] = {}
    losses: dict[float, float] = {}
    solutions = {}
    init = None
    for c in C_GRID:  # strong -> weak regularisation, each solve warm-started from the last
        init = _solve(x, y, c, num_classes, task, init)
        solutions[c] = init
        logits = _logits(held_x, *init)
        scores[c] = task.probe_score(logits, held_y)
        if fine_tune_loss is not None:
            losses[c] = float(fine_tune_loss(logits, held_y))
    closest_to_default = {c: -abs(np.log10(c)) for c in C_GRID}  # ties: closest to sklearn's default 1
    if losses:
        best_c = max(C_GRID, key=lambda c: (-losses[c], closest_to_default[c]))
    else:
        best_c = max(C_GRID, key=lambda c: (scores[c], closest_to_default[c]))
    return best_c, scores, solutions[best_c], losses


def _holdout_split(labels: torch.Tensor, num_classes: int, holdout: float, seed: int,
                   task: Task) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(fit, held-out) image indices, stratified as the task says (by class for single-label); None when too few
    images to split.

    Images, not rows, are split: the K views of one image stay on the same side, so C is scored on unseen images."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_held = round(n * holdout)
    stratify = task.strata(labels)
    if stratify is None:
        ok = 2 <= n_held <= n - 2
    else:
        counts = np.bincount(stratify, minlength=num_classes)
        present = int((counts > 0).sum())
        ok = counts[counts > 0].min() >= 2 and present <= n_held <= n - present
    if not ok:
        return None
    fit_idx, held_idx = train_test_split(np.arange(n), test_size=n_held, stratify=stratify, random_state=seed)
    return torch.as_tensor(fit_idx), torch.as_tensor(held_idx)


def _rows(views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return views[:, index].reshape(-1, views.shape[-1])


def _tile(labels: torch.Tensor, k: int) -> torch.Tensor:
    return labels.repeat(k, *([1] * (labels.ndim - 1)))


def _standardised_rows(views, labels, index) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Rows of `index` (all views), standardised per feature: L-BFGS then converges in tens, not thousands, of
    iterations. Constant features get scale 1 (they carry nothing and must not blow up). Cached rows too big to
    hold come back as a _Batched reader of the same standardised rows."""
    if not isinstance(views, torch.Tensor):
        part = views.subset(index)
        mean, std = _raw_stats(part)
        std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
        scale = (mean.float(), std.float())
        return _Batched(part, *scale), _tile(labels[index], len(views)), scale
    x = _rows(views, index).double()
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
    return ((x - mean) / std).float(), _tile(labels[index], len(views)), (mean.float(), std.float())


def _logits(x: Any, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x @ weight.T + bias
    return torch.cat([rows @ weight.T + bias for rows in x.batches()])


def _solve(x: torch.Tensor, y: torch.Tensor, c: float, num_classes: int, task: Task,
           init: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean loss + ||W||^2 / (2 C N): sklearn's C * sum(loss) + ||W||^2 / 2 divided by C N (same minimum;
    the intercept is not penalised, as in sklearn)."""
    w = torch.zeros(num_classes, x.shape[1]) if init is None else init[0].clone()
    b = torch.zeros(num_classes) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    penalty = 1.0 / (2.0 * c * len(x))
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=MAX_ITER, tolerance_grad=TOL_GRAD, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if isinstance(x, torch.Tensor):
            loss = task.probe_loss(x @ w.T + b, y) + penalty * w.pow(2).sum()
            loss.backward()
            return loss
        loss = penalty * w.pow(2).sum()  # rows read in batches: the mean loss as a sum of per-batch parts
        loss.backward()
        total, start = loss.detach(), 0
        for rows in x.batches():
            part = task.probe_loss(rows @ w.T + b, y[start: start + len(rows)]) * (len(rows) / len(x))
            part.backward()
            total, start = total + part.detach(), start + len(rows)
        return total

    with torch.enable_grad(), _threads(1 if x.numel() * num_classes < THREADED_WORK else None):
        opt.step(closure)
    return w.detach(), b.detach()


@contextmanager
def _threads(n: int | None):
    """Run with `n` intra-op threads. A probe's matrix products are small (2,000 x 1,280 x 10: 2 ms on one core);
    measured on 2 shared cores, two threads made each 10x slower (32 ms) by waiting on each other."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unstandardise(weight, bias, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """The same logits on raw features: W ((x - m) / s) + b = (W / s) x + (b - (W / s) m)."""
    raw_w = weight / std
    return raw_w.float().contiguous(), (bias - raw_w @ mean).float()


def fit_selected_head(views: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int, keep: float,
                      task: Task | str | bool = "single_label") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Like fit_logistic_head, on the `keep` fraction of the features that matter most; the rest get weight 0.

    A feature's relevance is the norm of its weights across classes in a first fit on all features, times its spread
    (the weight it would have on standardised inputs): a one-step stand-in for Head2Toe's group-lasso relevance.
    Then the probe is fitted again (C chosen again) on the kept features only."""
    views = _in_memory_if_small(views)
    if views.ndim == 2:
        views = views[None]
    width = views.shape[-1]
    first, _, first_info = fit_logistic_head(views, labels, num_classes=num_classes, seed=seed, task=task)
    in_memory = isinstance(views, torch.Tensor)
    spread = views.reshape(-1, width).float().std(0) if in_memory else _raw_stats(views)[1].float()
    kept = torch.argsort(first.norm(dim=0) * spread, descending=True)[: max(1, round(keep * width))].sort().values
    weight, bias, info = fit_logistic_head(views[..., kept] if in_memory else views.select_columns(kept), labels,
                                           num_classes=num_classes, seed=seed, task=task)
    full = torch.zeros(num_classes, width)
    full[:, kept] = weight
    info = {**info, "kept_features": len(kept), "of_features": width, "C_all_features": first_info["C"]}
    log.info("lbfgs probe: kept %d of %d features", len(kept), width)
    return full, bias, info
