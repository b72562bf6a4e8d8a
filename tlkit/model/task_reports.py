"""What each task reports, as plain data (no torch): the monitored metric, the metrics a run records and how
summaries show them. tlkit.model.tasks' Task classes read their declarations from here; `tlkit report` and the CLI
summary read them too, without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskReport:
    name: str
    monitor: str  # the validation metric that picks the best checkpoint and that search optimises
    metric_label: str  # how the monitored metric is shown ("accuracy", "mAP")
    reported: tuple[str, ...]  # the val_* metrics a run records (test_* the same names); monitor first
    train_reported: tuple[str, ...]  # the train_* metrics a run records besides the loss
    activation_description: str  # how an exported model's logits become a prediction (model.json)
    headline: tuple[tuple[str, tuple[str, ...]], ...]  # a run summary's first lines: (label, keys shown together)
    test_headline: tuple[str, tuple[str, ...]]  # the test split's line
    report_fields: tuple[tuple[str, str], ...]  # the HTML report's figures: (label, metrics key)


SINGLE_LABEL = TaskReport(
    name="single_label", monitor="val_acc", metric_label="accuracy",
    reported=("val_acc", "val_balanced_acc", "val_macro_f1"), train_reported=("train_acc",),
    activation_description="softmax over classes",
    headline=(("val accuracy", ("val_acc",)), ("best val accuracy", ("best_val_acc",))),
    test_headline=("test accuracy", ("test_acc",)),
    report_fields=(("val accuracy", "val_acc"), ("best val accuracy", "best_val_acc"),
                   ("val balanced accuracy", "val_balanced_acc"), ("val macro F1", "val_macro_f1"),
                   ("train accuracy", "train_acc")),
)
MULTI_LABEL = TaskReport(
    name="multi_label", monitor="val_map", metric_label="mAP",
    reported=("val_map", "val_f1_micro", "val_f1_macro"), train_reported=(),
    activation_description="sigmoid per class; a class is predicted when its probability >= its entry in `thresholds`",
    headline=(("val mAP", ("val_map",)), ("best val mAP", ("best_val_map",)),
              ("val F1 micro / macro", ("val_f1_micro", "val_f1_macro"))),
    test_headline=("test mAP / F1 micro / macro", ("test_map", "test_f1_micro", "test_f1_macro")),  # val's thresholds
    report_fields=(("val mAP", "val_map"), ("best val mAP", "best_val_map"), ("val F1 micro", "val_f1_micro"),
                   ("val F1 macro", "val_f1_macro"), ("test mAP", "test_map")),
)
REPORTS = {r.name: r for r in (SINGLE_LABEL, MULTI_LABEL)}


def report_of(description: Mapping[str, Any]) -> TaskReport:
    """The task a stored description names (a checkpoint's `tlkit` dict, an export's model.json, metrics.json, an
    evaluation report): multi-label ones say `multi_label: true`."""
    return MULTI_LABEL if description.get("multi_label") is True else SINGLE_LABEL


def report_for_monitor(monitor: str) -> TaskReport | None:
    return next((r for r in REPORTS.values() if r.monitor == monitor), None)
