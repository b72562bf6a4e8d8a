"""Tasks own what outputs mean: loss, activation, metrics, the monitored metric and decisions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tlkit.model.module import TransferModule
from tlkit.model.task_reports import report_of
from tlkit.model.tasks import MultiLabel, SingleLabel, task_from, task_of
from tlkit.tune.search import PruneOnMonitored


def test_single_label_is_softmax_cross_entropy_monitored_by_val_acc():
    task, logits, targets = SingleLabel(), torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
    torch.testing.assert_close(task.activation(logits), logits.softmax(-1))
    torch.testing.assert_close(task.loss(logits, targets, smoothing=0.1),
                               F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert task.monitor == "val_acc" and task.initial_loss(3) == pytest.approx(math.log(3))
    assert {"train_acc", "val_acc", "val_balanced_acc", "test_macro_f1"} <= set(task.metrics(3))


def test_multi_label_is_a_sigmoid_per_class_with_thresholds_monitored_by_val_map():
    task, logits = MultiLabel(), torch.tensor([[2.0, 0.0, -1.0]])
    torch.testing.assert_close(task.activation(logits), logits.sigmoid())
    assert task.monitor == "val_map" and task.has_thresholds and task.initial_loss(3) == pytest.approx(3 * math.log(2))
    assert task.decide(task.activation(logits), [0.9, 0.5, 0.1]).tolist() == [[False, True, True]]
    assert {"val_ap", "val_stats", "test_ap"} <= set(task.metrics(3)) and "train_acc" not in task.metrics(3)


def test_each_task_decides_scores_and_combines_views_its_own_way():
    probs = np.array([0.1, 0.6, 0.3], dtype=np.float32)
    assert SingleLabel().chosen(probs, top_k=2, thresholds=None) == [1, 2]
    assert MultiLabel().chosen(probs, top_k=1, thresholds=[0.05, 0.7, 0.2]) == [2, 0]  # the set, best first
    peak = torch.tensor([[0.5, 0.75]])
    torch.testing.assert_close(SingleLabel().combine_peak(peak), torch.tensor([[0.4, 0.6]]))  # still a distribution
    torch.testing.assert_close(MultiLabel().combine_peak(peak), peak)
    logits = torch.tensor([[2.0, -1.0], [-1.0, 2.0], [2.0, -1.0]])
    assert SingleLabel().score(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert SingleLabel().exact(logits, torch.tensor([0, 1, 0])) == 1.0
    hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert MultiLabel().exact(logits, hot) == pytest.approx(2 / 3)  # the third image misses one of its labels
    ranked = torch.tensor([[2.0, -1.0], [-1.0, 2.0], [2.0, 1.0]])
    assert MultiLabel().score(ranked, hot) == pytest.approx(1.0)  # mAP: each positive ranked above every negative


def test_a_stored_description_names_its_task_and_what_it_reports():
    described = MultiLabel().description([0.3, 0.7])
    assert described == {"multi_label": True, "thresholds": [0.3, 0.7]} and SingleLabel().description() == {}
    assert isinstance(task_of(described), MultiLabel) and isinstance(task_of({}), SingleLabel)
    assert report_of(described).monitor == MultiLabel.monitor == "val_map"
    assert SingleLabel.reported[0] == SingleLabel.monitor and MultiLabel.reported[0] == MultiLabel.monitor


def test_mixing_counts_the_dominant_label_only_for_single_label():
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    _, counted = SingleLabel().mixed_loss(torch.zeros(2, 2), soft)
    assert counted.tolist() == [0, 1]
    assert MultiLabel().mixed_loss(torch.zeros(2, 2), soft)[1] is None


def test_the_module_takes_its_monitor_and_activation_from_the_classifiers_task():
    module = TransferModule({"name": "test_resnet", "weights": "none"}, ["a", "b", "c"], multi_label=True)
    assert isinstance(module.task, MultiLabel) and module.task is module.classifier.task
    assert module.monitor == "val_map"
    logits = torch.tensor([[1.0, -1.0, 0.0]])
    torch.testing.assert_close(module.probabilities(logits), logits.sigmoid())


def test_search_prunes_on_the_monitored_metric_of_the_task():
    reports = []

    class Trial:
        def report(self, value, step):
            reports.append((value, step))

        def should_prune(self):
            return False

    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0,
                              callback_metrics={"val_map": torch.tensor(0.25)})  # a multi-label run logs no val_acc
    module = SimpleNamespace(monitor=task_from("multi_label").monitor)
    PruneOnMonitored(Trial()).on_validation_end(trainer, module)
    assert reports == [(0.25, 0)]


def test_an_unknown_task_is_a_one_line_error():
    with pytest.raises(ValueError, match="expected one of single_label, multi_label"):
        task_from("multi_class")


def test_the_largest_tta_policy_is_accepted_everywhere_a_policy_is_read():
    from pathlib import Path

    from tlkit.data.preprocessing import Preprocessing
    from tlkit.infer.tta import resolve_policy
    from tlkit.model.settings import MAX_TTA_SCALE, MAX_TTA_SCALES, MAX_TTA_VIEWS

    pre = Preprocessing(input_size=32, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    largest = resolve_policy({"policy": "custom", "crops": "five", "flip": True,
                              "scales": list(range(MAX_TTA_SCALE - MAX_TTA_SCALES + 1, MAX_TTA_SCALE + 1))}, pre)
    assert largest.num_views == MAX_TTA_VIEWS  # what a recipe may ask for ...
    bundle = (Path(__file__).parents[1] / "tlkit" / "infer" / "bundle" / "predict.py").read_text(encoding="utf-8")
    assert f"MAX_VIEWS = {MAX_TTA_VIEWS} " in bundle  # ... is what the standalone bundle (and Predictor.from_export) accept
