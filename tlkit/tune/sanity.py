"""The first two steps of the usual tuning procedure (CS231n) as verdicts: initial loss ~ ln(C), and overfitting a tiny subset.

Plain functions over tensors and numbers; tlkit.run.tuning feeds them a recipe's model and data. `task` (a
tlkit.model.tasks.Task or its name) gives the loss, its value at zero logits and what "exactly right" means:
multi-label models (task="multi_label": (N, C) multi-hot targets) use binary cross-entropy summed over the C
classes, C x ln 2 at zero logits whatever the labels, and "accuracy" is the share of images whose whole label set is
right at threshold 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tlkit.model.tasks import Task, task_from

DEFAULT_LOSS_TOLERANCE = 0.05  # relative to ln(C); a zero-initialised final layer is exact to float rounding


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    causes: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)


def expected_initial_loss(num_classes: int, task: Task | str = "single_label") -> float:
    """Cross-entropy of uniform predictions over C classes: ln(C); multi-label, every sigmoid at 0.5: C x ln 2."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes; got {num_classes}.")
    return task_from(task).initial_loss(num_classes)


def initial_loss_check(observed: float, num_classes: int, tolerance: float = DEFAULT_LOSS_TOLERANCE, *,
                       task: Task | str = "single_label") -> CheckResult:
    """Verdict on the loss before any training step (weight decay off): within `tolerance` x ln(C) of ln(C)
    (multi-label: of C x ln 2)."""
    expected = expected_initial_loss(num_classes, task)
    rel = (observed - expected) / expected
    values = {"observed": observed, "expected": expected, "relative_error": rel, "tolerance": tolerance}
    formula = task_from(task).initial_loss_formula(num_classes)
    summary = (f"initial loss {observed:.6f} vs {formula} = {expected:.6f} (relative error {rel:+.1e}, "
               f"tolerance ±{tolerance:.0%})")
    if not math.isfinite(observed):
        return CheckResult("initial loss", False, summary, [
            "the loss is not finite: NaN/Inf inputs (unreadable or unnormalised images) or an overflowing init",
        ], values)
    if abs(rel) <= tolerance:
        return CheckResult("initial loss", True, summary, [], values)
    if rel > 0:
        causes = [
            "the final layer starts with large weights, so the untrained model is confidently wrong: keep "
            "head.final_init: zeros (or a small normal)",
            "inputs are not normalised as the backbone expects (check backbone.mean/std/input_size)",
            "labels do not match the outputs (a class count or label mapping error)",
        ]
    else:
        causes = [
            "the untrained model already predicts the labels: label information leaks into the inputs "
            "(e.g. a class-coloured border or file-name-dependent preprocessing), or the check batches hold one class",
            "a non-zero final init happens to favour the majority class of a very imbalanced dataset",
        ]
    return CheckResult("initial loss", False, summary, causes, values)


def plain_loss(logits: torch.Tensor, targets: torch.Tensor, *, task: Task | str = "single_label") -> torch.Tensor:
    """The task's training loss (as TransferModule's), without smoothing or weights, averaged over images."""
    return task_from(task).loss(logits, targets)


def initial_loss(forward: Callable[[torch.Tensor], torch.Tensor], batches, *,
                 task: Task | str = "single_label") -> float:
    """Mean plain loss (no smoothing, no L1) of `forward` over `batches` of (inputs, targets), no grad."""
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            total += float(plain_loss(forward(inputs), targets, task=task)) * len(targets)
            count += len(targets)
    if count == 0:
        raise ValueError("no batches to measure the initial loss on.")
    return total / count


def pick_per_class(labels: list, per_class: int, seed: int = 0) -> list[int]:
    """Indices of up to `per_class` samples of every class (multi-label: of every label set), chosen with a seeded
    generator."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator).tolist()
    taken: dict[int, int] = {}
    chosen = []
    for i in order:
        if taken.get(labels[i], 0) < per_class:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            chosen.append(i)
    return sorted(chosen)


def overfit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    *,
    task: Task | str = "single_label",
) -> list[tuple[float, float]]:
    """Full-batch steps on one tiny fixed subset; returns (loss, accuracy) before each step and after the last."""
    task = task_from(task)
    history = []
    for step in range(steps + 1):
        logits = forward(inputs)
        loss = plain_loss(logits, targets, task=task)
        history.append((float(loss.detach()), task.exact(logits.detach(), targets)))
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return history


def overfit_check(history: list[tuple[float, float]], num_classes: int, max_loss_fraction: float = 0.1, *,
                  task: Task | str = "single_label") -> CheckResult:
    """Pass when the tiny subset is fitted: 100% train accuracy (multi-label: every label set exact) and loss below
    max_loss_fraction x the initial loss (ln(C), multi-label C x ln 2)."""
    loss, acc = history[-1]
    limit = max_loss_fraction * expected_initial_loss(num_classes, task)
    values = {"final_loss": loss, "final_acc": acc, "start_loss": history[0][0], "steps": len(history) - 1,
              "loss_limit": limit}
    summary = (f"overfit {len(history) - 1} steps: loss {history[0][0]:.4f} -> {loss:.4f} (need < {limit:.4f}), "
               f"train accuracy {acc:.0%} (need 100%)")
    if math.isfinite(loss) and acc >= 1.0 and loss < limit:
        return CheckResult("overfit tiny subset", True, summary, [], values)
    if not math.isfinite(loss) or loss > 2 * history[0][0]:
        causes = ["the learning rate is too high: the loss grew or became NaN (try optim.lr / 10, or tlkit lr-find)"]
    else:
        causes = [
            "the learning rate is too low or too few steps: raise optim.lr or --steps (tlkit lr-find suggests one)",
            "the trainable part cannot separate even a few images: a frozen backbone whose features do not "
            "distinguish the classes (random weights? check backbone.weights), or a head that is too small",
            "labels and images are mis-paired (check the class folders)",
        ]
    return CheckResult("overfit tiny subset", False, summary, causes, values)


def format_results(results: list[CheckResult]) -> str:
    """PASS/FAIL per check, and the likely causes under each failure."""
    lines = []
    for r in results:
        lines.append(f"[{'PASS' if r.passed else 'FAIL'}] {r.name}: {r.summary}")
        lines += [f"       likely cause: {c}" for c in r.causes]
    return "\n".join(lines)
