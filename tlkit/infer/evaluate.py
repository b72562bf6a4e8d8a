"""Evaluation report: metrics per TTA policy side by side with their cost, and the files a person looks at.

Writes into `out_dir`: report.json, summary.txt (the printed table) and, per policy, a folder with
per_class.csv, confusion_matrix.csv/.png, top_losses.csv/.png and predictions.csv. A multi-label model (label sets
as targets) is scored by mAP and micro / macro F1 at its per-class thresholds instead: per_class.csv then holds AP,
precision, recall, F1 and threshold per class, top_losses.csv the images with the highest summed binary
cross-entropy, and there is no confusion matrix (labels do not compete).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from tlkit.data.images import load_rgb
from tlkit.data.preprocessing import Preprocessing
from tlkit.errors import DataError
from tlkit.infer.inference import InferenceResult, predict_files
from tlkit.infer.settings import DEFAULT_TOP_LOSSES
from tlkit.infer.tta import DEFAULT_MAX_VIEWS_PER_FORWARD, TTAPolicy
from tlkit.io import atomic_open, atomic_write, write_csv_rows
from tlkit.model.tasks import MultiLabel, SingleLabel, task_of
from tlkit.plots import plot_confusion_matrix, plot_top_losses

log = logging.getLogger(__name__)

MOST_CONFUSED = 10
EPS = 1e-12


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> dict:
    """Top-1 (top-5 when >= 5 classes), balanced accuracy, NLL, per-class P/R/F1, confusion matrix, confused pairs."""
    n_classes = len(classes)
    labels = list(range(n_classes))
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(targets, predicted, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=labels, zero_division=0
    )
    present = support > 0  # balanced accuracy = mean recall over the classes that have images here
    p_true = probs[np.arange(len(targets)), targets]
    pairs = [
        {"true": classes[i], "predicted": classes[j], "count": int(matrix[i, j])}
        for i in range(n_classes)
        for j in range(n_classes)
        if i != j and matrix[i, j] > 0
    ]
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    return {
        "images": int(len(targets)),
        "accuracy": float((predicted == targets).mean()) if len(targets) else math.nan,
        "top5_accuracy": (
            float(top_k_accuracy_score(targets, probs, k=5, labels=labels)) if n_classes >= 5 and len(targets) else None
        ),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else math.nan,
        "nll": float(-np.log(np.clip(p_true, EPS, 1.0)).mean()) if len(targets) else math.nan,
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": matrix.tolist(),
        "most_confused": pairs[:MOST_CONFUSED],
    }


def top_losses(
    probs: np.ndarray, targets: np.ndarray, paths: Sequence[str], classes: Sequence[str], n: int
) -> list[dict]:
    """The n images with the highest cross-entropy -log p(true class), worst first."""
    p_true = probs[np.arange(len(targets)), targets]
    loss = -np.log(np.clip(p_true, EPS, 1.0))
    order = np.argsort(-loss, kind="stable")[:n]
    predicted = probs.argmax(axis=1)
    return [
        {
            "path": str(paths[i]),
            "true": classes[targets[i]],
            "predicted": classes[predicted[i]],
            "p_true": float(p_true[i]),
            "p_predicted": float(probs[i, predicted[i]]),
            "loss": float(loss[i]),
        }
        for i in order
    ]


def evaluate_policies(
    model: torch.nn.Module,
    samples: Sequence[tuple[str, int]],
    classes: Sequence[str],
    policies: Sequence[TTAPolicy],
    preprocessing: Preprocessing,
    out_dir: str | Path,
    *,
    max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
    num_workers: int = 0,
    top_loss_count: int = DEFAULT_TOP_LOSSES,
    skipped: Sequence[tuple[str, str]] = (),
    context: dict | None = None,
    progress: bool | None = None,
    precision: str = "fp32",
) -> dict:
    """Run every policy over `samples` ((path, label index into `classes`), or (path, tuple of label indices) for a
    multi-label model), write the report, return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [p for p, _ in samples]
    kind = REPORT_KINDS[model.task.name]
    labels = kind.targets([label for _, label in samples], len(classes))
    report: dict = {**(context or {}), "classes": list(classes), "num_images": len(samples), "policies": {},
                    **model.task.description(model.thresholds.tolist() if model.task.has_thresholds else None)}
    failed: dict[str, str] = dict(skipped)
    baseline: InferenceResult | None = None
    for policy in policies:
        result = predict_files(
            model, paths, policy, preprocessing, max_views_per_forward=max_views_per_forward,
            num_workers=num_workers, warmup=True, progress=progress, desc=f"evaluate {policy.label}",
            precision=precision,
        )
        failed.update(result.failed)
        if not result.indices:
            path, why = result.failed[0] if result.failed else ("", "no images")
            raise DataError(f"None of the {len(paths)} images could be decoded (e.g. {path}: {why}); check the folder.")
        if policy.num_views == 1 and baseline is None:
            baseline = result
        idx = np.array(result.indices, dtype=np.int64)
        targets = labels[idx]
        kept_paths = [paths[i] for i in idx]
        report["precision"] = result.precision
        report["policies"][policy.label] = kind.entry(policy, result, targets, kept_paths, classes, model,
                                                      out_dir / policy.label, top_loss_count)
    if baseline is not None:
        base_ms = round(baseline.ms_per_image, 3)  # ratios of the reported (rounded) figures: none is exactly 1.0
        base_forward_ms = round(baseline.forward_ms_per_image, 3)
        for entry in report["policies"].values():
            entry["cost_vs_single_view"] = _ratio(entry["ms_per_image"], base_ms)
            entry["forward_cost_vs_single_view"] = _ratio(entry["forward_ms_per_image"], base_forward_ms)
    report["skipped"] = [{"path": p, "reason": why} for p, why in sorted(failed.items())]
    report["timing_note"] = (
        "ms_per_image = wall time of decode + views + forwards / images (one untimed warm-up forward first); "
        "forward_ms_per_image = model forwards only. Timings vary with machine load."
    )
    table = format_report_table(report)
    atomic_write(out_dir / "summary.txt", table + "\n")
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def multi_hot(label_sets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(N, C) 0/1 targets from label-index tuples."""
    targets = np.zeros((len(label_sets), num_classes), dtype=np.float32)
    for row, labels in enumerate(label_sets):
        targets[row, list(labels)] = 1.0
    return targets


def class_indices(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """(N,) class-index targets."""
    return np.array(labels, dtype=np.int64)


def _single_label_entry(policy: TTAPolicy, result: InferenceResult, targets: np.ndarray, paths: Sequence[str],
                        classes: Sequence[str], model: torch.nn.Module, folder: Path, top_loss_count: int) -> dict:
    """One policy's single-label scores (accuracy, top-5, balanced accuracy, NLL, confusions) and its files."""
    metrics = classification_metrics(result.probs, targets, classes)
    worst = top_losses(result.probs, targets, paths, classes, top_loss_count)
    files = _write_policy_files(folder, policy, metrics, worst, result.probs, targets, paths, classes)
    return {
        "policy": policy.name,
        "aggregate": policy.aggregate,
        "views": policy.num_views,
        **{k: metrics[k] for k in ("images", "accuracy", "top5_accuracy", "balanced_accuracy", "nll")},
        "ms_per_image": round(result.ms_per_image, 3),
        "forward_ms_per_image": round(result.forward_ms_per_image, 3),
        "per_class": metrics["per_class"],
        "most_confused": metrics["most_confused"],
        "confusion_matrix": metrics["confusion_matrix"],
        "files": {k: str(v.relative_to(folder.parent)) for k, v in files.items()},
    }


def _multilabel_entry(policy: TTAPolicy, result: InferenceResult, targets: np.ndarray, paths: Sequence[str],
                      classes: Sequence[str], model: torch.nn.Module, folder: Path, top_loss_count: int) -> dict:
    """One policy's multi-label scores (tlkit.model.thresholds.multilabel_metrics) and its files."""
    from tlkit.model.thresholds import decide, multilabel_metrics

    thresholds = model.thresholds.tolist()
    metrics = multilabel_metrics(result.probs, targets, thresholds, classes)
    probs = np.clip(result.probs.astype(np.float64), EPS, 1 - EPS)
    loss = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)).sum(1)  # the training loss, per image
    predicted = decide(result.probs, thresholds)
    names = lambda row: ";".join(c for c, on in zip(classes, row) if on)  # noqa: E731
    folder.mkdir(parents=True, exist_ok=True)
    files = {"per_class": folder / "per_class.csv", "top_losses_csv": folder / "top_losses.csv",
             "predictions": folder / "predictions.csv"}
    _write_csv(files["per_class"], ["class", "ap", "precision", "recall", "f1", "threshold", "support"],
               [[r["class"], "" if r["ap"] is None else f"{r['ap']:.4f}", f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                 f"{r['f1']:.4f}", f"{r['threshold']:.4f}", r["support"]] for r in metrics["per_class"]])
    worst = np.argsort(-loss, kind="stable")[:top_loss_count]
    _write_csv(files["top_losses_csv"], ["path", "true", "predicted", "loss"],
               [[paths[i], names(targets[i] > 0.5), names(predicted[i]), f"{loss[i]:.4f}"] for i in worst])
    _write_csv(files["predictions"], ["path", "true", "predicted", "exact", *(f"p_{c}" for c in classes)],
               [[p, names(targets[i] > 0.5), names(predicted[i]), int((predicted[i] == (targets[i] > 0.5)).all()),
                 *(f"{v:.4f}" for v in result.probs[i])] for i, p in enumerate(paths)])
    return {
        "policy": policy.name, "aggregate": policy.aggregate, "views": policy.num_views,
        **{k: metrics[k] for k in ("images", "map", "f1_micro", "f1_macro", "exact_match")},
        "loss": float(loss.mean()) if len(loss) else math.nan,
        "ms_per_image": round(result.ms_per_image, 3),
        "forward_ms_per_image": round(result.forward_ms_per_image, 3),
        "per_class": metrics["per_class"],
        "files": {k: str(v.relative_to(folder.parent)) for k, v in files.items()},
    }


def format_report_table(report: dict) -> str:
    """One row per policy: views, accuracy figures and cost, so what TTA buys and costs is side by side."""
    return REPORT_KINDS[task_of(report).name].table(report)


def _single_label_table(report: dict) -> str:
    with_top5 = any(e.get("top5_accuracy") is not None for e in report["policies"].values())
    return _format_table(report, ["policy", "views", "top-1", *(["top-5"] if with_top5 else []), "bal. acc", "NLL"],
                         lambda label, e: [label, str(e["views"]), _pct(e["accuracy"]),
                                           *([_pct(e["top5_accuracy"])] if with_top5 else []),
                                           _pct(e["balanced_accuracy"]), f"{e['nll']:.4f}"])


def _multilabel_table(report: dict) -> str:
    return _format_table(report, ["policy", "views", "mAP", "F1 micro", "F1 macro", "exact match", "loss"],
                         lambda label, e: [label, str(e["views"]), _pct(e["map"]), _pct(e["f1_micro"]),
                                           _pct(e["f1_macro"]), _pct(e["exact_match"]), f"{e['loss']:.4f}"],
                         "F1 at the model's per-class thresholds; ")


@dataclass(frozen=True)
class ReportKind:
    """How one task's evaluation report is built: its targets, each policy's entry (scores and files), the table."""

    targets: Callable[[Sequence, int], np.ndarray]
    entry: Callable[..., dict]
    table: Callable[[dict], str]


REPORT_KINDS = {  # by task name (tlkit.model.tasks): the task says what the outputs mean, this what to report
    SingleLabel.name: ReportKind(class_indices, _single_label_entry, _single_label_table),
    MultiLabel.name: ReportKind(multi_hot, _multilabel_entry, _multilabel_table),
}


def _format_table(report: dict, headers: list[str], scores, note: str = "") -> str:
    """The policies table: `scores(label, entry)` gives each row's leading cells; the cost columns follow."""
    headers = [*headers, "ms/image", "model ms/image", "cost x1"]
    rows = []
    for label, e in report["policies"].items():
        rows.append([
            *scores(label, e),
            f"{e['ms_per_image']:.1f}",
            f"{e['forward_ms_per_image']:.1f}",
            f"{e['forward_cost_vs_single_view']:.2f}" if e.get("forward_cost_vs_single_view") is not None else "n/a",
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    notes = [f"{report['num_images']} images, {len(report['classes'])} classes; {note}'cost x1' = model time per image "
             "relative to the single view" + (f"; forwards in {report['precision']}" if report.get("precision") else "")]
    if report.get("skipped"):
        notes.append(f"{len(report['skipped'])} file(s) skipped (listed in report.json)")
    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule, *notes])


def _write_policy_files(
    folder: Path,
    policy: TTAPolicy,
    metrics: dict,
    worst: list[dict],
    probs: np.ndarray,
    targets: np.ndarray,
    paths: Sequence[str],
    classes: Sequence[str],
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "per_class": folder / "per_class.csv",
        "confusion_matrix_csv": folder / "confusion_matrix.csv",
        "confusion_matrix_png": folder / "confusion_matrix.png",
        "top_losses_csv": folder / "top_losses.csv",
        "top_losses_png": folder / "top_losses.png",
        "predictions": folder / "predictions.csv",
    }
    _write_csv(files["per_class"], ["class", "precision", "recall", "f1", "support"],
               [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
                for r in metrics["per_class"]])
    _write_csv(files["confusion_matrix_csv"], ["true \\ predicted", *classes],
               [[name, *row] for name, row in zip(classes, metrics["confusion_matrix"])])
    title = f"{policy.label} ({policy.num_views} view{'s' if policy.num_views > 1 else ''}): " \
            f"top-1 {_pct(metrics['accuracy'])} on {metrics['images']} images"
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classes, files["confusion_matrix_png"], title=title)
    _write_csv(files["top_losses_csv"], ["path", "true", "predicted", "p_true", "p_predicted", "loss"],
               [[r["path"], r["true"], r["predicted"], f"{r['p_true']:.4f}", f"{r['p_predicted']:.4f}",
                 f"{r['loss']:.4f}"] for r in worst])
    plot_top_losses(worst, files["top_losses_png"], title=f"Highest-loss images, {policy.label}", load=load_rgb)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    _write_csv(files["predictions"], ["path", "true", "predicted", "p_predicted", "correct"],
               [[p, classes[t], classes[k], f"{probs[i, k]:.4f}", int(t == k)]
                for i, (p, t, k) in enumerate(zip(paths, targets, predicted))])
    return files


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base > 0 else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_open(path, newline="") as f:
        write_csv_rows(f, [header, *rows])  # class names are neutralised (csv_safe)
