"""Tasks: what a classifier's outputs mean. SingleLabel (one class per image: softmax) and MultiLabel (any number
of classes per image: a sigmoid per class and a decision threshold each) own their loss, output activation, metrics,
monitored metric, decisions and prediction output, so the code around them never asks which one it has.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelStatScores,
)

from tlkit.model.mixing import binary_cross_entropy, soft_target_cross_entropy
from tlkit.model.settings import DEFAULT_THRESHOLD
from tlkit.model.task_reports import MULTI_LABEL, SINGLE_LABEL, TaskReport, report_of


class Task(ABC):
    """The common interface; `task_from(name)` gives one."""

    report: ClassVar[TaskReport]  # what the task reports, as plain data (tlkit.model.task_reports)
    has_thresholds: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        r = cls.report
        cls.name, cls.monitor, cls.metric_label = r.name, r.monitor, r.metric_label
        cls.reported, cls.train_reported = r.reported, r.train_reported
        cls.activation_description = r.activation_description

    name: ClassVar[str]
    monitor: ClassVar[str]  # the validation metric that picks the best checkpoint and that search optimises
    metric_label: ClassVar[str]  # how the monitored metric is shown ("accuracy", "mAP")
    reported: ClassVar[tuple[str, ...]]  # the val_* metrics a run reports (test_* the same names); monitor first
    train_reported: ClassVar[tuple[str, ...]]  # the train_* metrics a run reports besides the loss
    activation_description: ClassVar[str]  # how an exported model's logits become a prediction (model.json)

    @abstractmethod
    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities."""

    @abstractmethod
    def combine_peak(self, peak: torch.Tensor) -> torch.Tensor:
        """TTA's `max` aggregation: the per-class max probability over the views (B, C) -> the probabilities."""

    @abstractmethod
    def chosen(self, probabilities: np.ndarray, *, top_k: int, thresholds: Sequence[float] | None) -> list[int]:
        """One image's predicted classes, most probable first: the top_k, or those at or over their threshold."""

    @abstractmethod
    def exact(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The share of images predicted exactly right (the tiny-subset overfit check's accuracy)."""

    @abstractmethod
    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The monitored metric over a whole split's logits (accuracy, or mAP over the classes present)."""

    @abstractmethod
    def initial_loss_formula(self, num_classes: int) -> str:
        """How `initial_loss` is computed, for messages ("ln(10)")."""

    def description(self, thresholds: Sequence[float] | None = None) -> dict[str, Any]:
        """What a checkpoint, an export or metrics.json records about the task (nothing for single-label, so older
        files read the same)."""
        return {}

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, *, smoothing: float = 0.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss on hard targets (class indices or multi-hot rows); weight: data.balance: loss_weights."""

    @abstractmethod
    def mixed_loss(self, logits: torch.Tensor, soft_targets: torch.Tensor, *, weight: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, targets the training metrics count, or None) under Mixup/CutMix; label smoothing is inside the
        soft targets already."""

    @abstractmethod
    def metrics(self, num_classes: int) -> nn.ModuleDict:
        """The torchmetrics objects, one set per split, keyed "<split>_<name>" (a module, so they follow the
        device)."""

    @abstractmethod
    def initial_loss(self, num_classes: int) -> float:
        """The loss of all-zero logits (a zero-initialised final layer): the first sanity check."""

    def log_train(self, module: L.LightningModule, logits: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Training metrics of a batch (targets None: none countable, e.g. multi-label under mixing)."""

    @abstractmethod
    def log_eval(self, module: L.LightningModule, split: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Update (and log) the <split> metrics with a labelled batch."""

    def log_epoch_end(self, module: L.LightningModule, split: str) -> None:
        """Log the <split> metrics that are computed over the whole epoch."""

    # The closed-form probe's problem (tlkit.model.probe): a logistic regression in the task's own terms.
    probe_scores_key: ClassVar[str]  # where the held-out score of each C is recorded (a run's metrics.json)

    @abstractmethod
    def probe_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels in the probe loss's dtype: class indices (long) or multi-hot rows (float)."""

    @abstractmethod
    def probe_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The probe's data term, averaged over images (the solver adds the L2 penalty)."""

    @abstractmethod
    def probe_score(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The held-out score the probe's L2 strength C is chosen by."""

    @abstractmethod
    def strata(self, labels: torch.Tensor) -> np.ndarray | None:
        """What a held-out split is stratified by: each image's class, or None when images have no single class."""


class SingleLabel(Task):
    """One class per image: softmax cross-entropy, accuracy (micro), balanced accuracy and macro F1."""

    report = SINGLE_LABEL
    EVAL_METRICS = ("acc", "balanced_acc", "macro_f1")

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)

    def combine_peak(self, peak):
        return peak / peak.sum(dim=-1, keepdim=True)  # stays a distribution; the argmax is unchanged

    def chosen(self, probabilities, *, top_k, thresholds):
        return [int(j) for j in np.argsort(-probabilities, kind="stable")[:max(1, top_k)]]

    def exact(self, logits, targets):
        return float((logits.argmax(-1) == targets).float().mean())

    def score(self, logits, targets):
        return float((logits.argmax(-1) == targets).float().mean())

    def initial_loss_formula(self, num_classes):
        return f"ln({num_classes})"

    def loss(self, logits, targets, *, smoothing=0.0, weight=None):
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)

    def mixed_loss(self, logits, soft_targets, *, weight=None):
        return soft_target_cross_entropy(logits, soft_targets), soft_targets.argmax(dim=-1)  # the dominant label

    def metrics(self, num_classes: int) -> nn.ModuleDict:
        made = {"train_acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}
        for split in ("val", "test"):
            made[f"{split}_acc"] = MulticlassAccuracy(num_classes=num_classes, average="micro")
            # Imbalance-aware: macro recall (= balanced accuracy) and macro F1.
            made[f"{split}_balanced_acc"] = MulticlassAccuracy(num_classes=num_classes, average="macro")
            made[f"{split}_macro_f1"] = MulticlassF1Score(num_classes=num_classes, average="macro")
        return nn.ModuleDict(made)

    def initial_loss(self, num_classes: int) -> float:
        return math.log(num_classes)

    def log_train(self, module, logits, targets):
        if targets is None:
            return
        metric = module.metrics["train_acc"]
        metric(logits, targets)
        module.log("train_acc", metric, on_step=False, on_epoch=True, batch_size=len(targets))

    probe_scores_key = "holdout_acc"

    def probe_targets(self, labels):
        return labels.long()

    def probe_loss(self, logits, targets):
        return F.cross_entropy(logits, targets)

    def probe_score(self, logits, targets):
        return self.score(logits, targets)

    def strata(self, labels):
        return labels.numpy()

    def log_eval(self, module, split, logits, targets):
        for name in self.EVAL_METRICS:
            metric = module.metrics[f"{split}_{name}"]
            metric(logits, targets)
            module.log(f"{split}_{name}", metric, on_step=False, on_epoch=True,
                       prog_bar=name == "acc" and split == "val", batch_size=len(targets))


class MultiLabel(Task):
    """Any number of classes per image: binary cross-entropy summed over classes, a sigmoid per class, per-class
    decision thresholds, and mAP / micro F1 / macro F1 (over the classes a split has)."""

    report = MULTI_LABEL
    has_thresholds = True

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def combine_peak(self, peak):
        return peak  # independent sigmoids, not a distribution: nothing to renormalise

    def chosen(self, probabilities, *, top_k, thresholds):
        order = np.argsort(-probabilities, kind="stable")  # top_k does not apply: the label set is the decision
        return [int(j) for j in order if probabilities[j] >= thresholds[j]]

    def exact(self, logits, targets):
        return float(((logits > 0) == (targets > 0.5)).all(-1).float().mean())  # the whole set at threshold 0.5

    def score(self, logits, targets):
        positive = targets.round().int()
        ap = MultilabelAveragePrecision(num_labels=targets.shape[-1], average=None)(logits.float().sigmoid(), positive)
        present = positive.sum(0) > 0
        return float(ap[present].mean()) if present.any() else float("nan")

    def initial_loss_formula(self, num_classes):
        return f"{num_classes} x ln 2"

    def description(self, thresholds=None):
        return {"multi_label": True, "thresholds": [float(t) for t in thresholds or []]}

    def loss(self, logits, targets, *, smoothing=0.0, weight=None):
        return binary_cross_entropy(logits, targets, smoothing=smoothing, pos_weight=weight)

    def mixed_loss(self, logits, soft_targets, *, weight=None):
        # A train mAP would keep every prediction of the epoch; val_map tells progress.
        return binary_cross_entropy(logits, soft_targets, pos_weight=weight), None

    def metrics(self, num_classes: int) -> nn.ModuleDict:
        made = {}
        for split in ("val", "test"):  # per class; reduced at epoch end over the classes the split has
            made[f"{split}_ap"] = MultilabelAveragePrecision(num_labels=num_classes, average=None)
            made[f"{split}_stats"] = MultilabelStatScores(num_labels=num_classes, average=None)
        return nn.ModuleDict(made)

    def initial_loss(self, num_classes: int) -> float:
        return num_classes * math.log(2)

    def log_eval(self, module, split, logits, targets):
        probs, positive = logits.detach().float().sigmoid(), targets.round().int()
        module.metrics[f"{split}_ap"].update(probs, positive)
        module.metrics[f"{split}_stats"].update(self.decide(probs, module.thresholds).int(), positive)

    def log_epoch_end(self, module, split):
        """<split>_map, <split>_f1_micro, <split>_f1_macro of the epoch (F1 at the current thresholds)."""
        ap, stats = module.metrics[f"{split}_ap"], module.metrics[f"{split}_stats"]
        if not stats.update_called:  # no labelled batch this epoch (every file failed to decode)
            return
        for name, value in multilabel_summary(ap.compute(), stats.compute()).items():
            module.log(f"{split}_{name}", value.float(), prog_bar=split == "val" and name == "map")
        ap.reset()
        stats.reset()

    probe_scores_key = "holdout_map"

    def probe_targets(self, labels):
        return labels.float()

    def probe_loss(self, logits, targets):  # one-vs-rest: the sum over classes of each binary problem's loss
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(targets)

    def probe_score(self, logits, targets):
        """Macro average precision over the classes with a held-out positive (scikit-learn's; 0 when none has)."""
        from sklearn.metrics import average_precision_score

        has_pos = targets.sum(0) > 0
        if not bool(has_pos.any()):
            return 0.0
        return float(average_precision_score(targets[:, has_pos].numpy(), logits[:, has_pos].numpy(),
                                             average="macro"))

    def strata(self, labels):
        return None  # a multi-hot row has no single class to stratify on

    @staticmethod
    def decide(probabilities: torch.Tensor, thresholds: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """The label sets: (N, C) bool, a class where its probability reaches its threshold."""
        return probabilities >= torch.as_tensor(thresholds, dtype=probabilities.dtype, device=probabilities.device)

    @staticmethod
    def default_thresholds(num_classes: int) -> list[float]:
        return [DEFAULT_THRESHOLD] * num_classes


def multilabel_summary(ap: torch.Tensor, stats: torch.Tensor) -> dict[str, torch.Tensor]:
    """map, f1_micro, f1_macro from per-class AP (C,) and stat scores (C, 5: tp, fp, tn, fn, support); the macro
    averages cover the classes with at least one positive (as tlkit.model.thresholds.multilabel_metrics)."""
    tp, fp, fn, support = (stats[:, i].double() for i in (0, 1, 3, 4))
    present = support > 0
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return {
        "map": ap.double()[present].mean() if present.any() else nan,
        "f1_micro": 2 * tp.sum() / micro_den if micro_den > 0 else torch.zeros((), dtype=torch.float64),
        "f1_macro": f1[present].mean() if present.any() else nan,
    }


TASKS: dict[str, type[Task]] = {SingleLabel.name: SingleLabel, MultiLabel.name: MultiLabel}


def task_from(value: str | bool | Task) -> Task:
    """A Task from its name (single_label, multi_label), a multi_label flag, or itself."""
    if isinstance(value, Task):
        return value
    if isinstance(value, bool):
        return MultiLabel() if value else SingleLabel()
    if value not in TASKS:
        raise ValueError(f"Unknown task {value!r}; expected one of {', '.join(TASKS)}.")
    return TASKS[value]()


def task_of(description: Mapping[str, Any]) -> Task:
    """The task a stored description names (a checkpoint's or export's `tlkit` dict, metrics.json, an evaluation
    report): what `Task.description` wrote."""
    return TASKS[report_of(description).name]()


__all__ = ["MultiLabel", "SingleLabel", "Task", "multilabel_summary", "task_from", "task_of"]
