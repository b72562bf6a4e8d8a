"""`audit(scan)`: features -> out-of-fold probe -> label issues, near-duplicates, outliers -> findings.csv, summary.json
and audit.html in an output folder outside the data. The images and tables of the data are only read."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.audit import findings as find
from tlkit.audit.adapter import FolderScan, image_features, relative_name
from tlkit.audit.pixels import twin_neighbours
from tlkit.errors import DataError
from tlkit.io import atomic_write

log = logging.getLogger(__name__)

DUPLICATE_NEIGHBOURS = 10  # neighbours searched per image for near-duplicates (an image with more twins is rare)
COLUMNS = ("path", "split", "finding", "given", "suggested", "score", "other", "similarity")
KINDS = {
    "label_issue": "the given label is probably wrong (score: cleanlab's label quality, lower = more likely wrong)",
    "leak": "near-twin of an image in another split (score: similarity of their thumbnails, best over small crops); "
            "val scores are inflated by it",
    "near_duplicate": "near-twin of another image of the same split (score: similarity of their thumbnails, best over "
                      "small crops)",
    "outlier": "far from every other image (score: cleanlab's out-of-distribution score, lower = more atypical)",
}


@dataclass(frozen=True)
class AuditSettings:
    """How the audit looks: folds of the out-of-fold probe, neighbours shown, the near-duplicate similarity, the
    share of images listed as outliers, and the seed of the folds."""

    folds: int = 5
    neighbours: int = 3
    duplicate_threshold: float = 0.95  # crop-searched thumbnail similarity (tlkit.audit.pixels)
    outlier_fraction: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise DataError(f"folds must be at least 2 (each image is predicted by a probe fitted on the others); "
                            f"got {self.folds}.")
        if not 0 < self.duplicate_threshold <= 1:
            raise DataError(f"the near-duplicate threshold is a cosine similarity in (0, 1]; got "
                            f"{self.duplicate_threshold} (0.95 finds resized, re-encoded and slightly cropped copies).")
        if not 0 <= self.outlier_fraction < 1:
            raise DataError(f"the outlier share must be in [0, 1); got {self.outlier_fraction}.")


@dataclass
class AuditResult:
    """What the audit found and where it wrote it."""

    rows: list[dict]  # one per finding, the columns of findings.csv
    summary: dict
    out: Path
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Images:
    """The scan's images in one order (train, val, test) with their split and labels."""

    paths: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,) class indices, or (N, C) 0/1 for multi-label data
    classes: list[str]
    multi_label: bool
    root: str

    @classmethod
    def of(cls, scan: FolderScan) -> Images:
        samples = [(p, y, s) for s, part in (("train", scan.train), ("val", scan.val), ("test", scan.test))
                   for p, y in part]
        if scan.multi_label:
            labels = np.zeros((len(samples), len(scan.classes)), dtype=np.float32)
            for i, (_, y, _) in enumerate(samples):
                labels[i, list(y)] = 1
        else:
            labels = np.array([y for _, y, _ in samples], dtype=np.int64)
        return cls([p for p, _, _ in samples], [s for _, _, s in samples], labels, list(scan.classes),
                   scan.multi_label, scan.data_root())

    def name(self, index: int) -> str:
        return relative_name(self.paths[index], self.root)

    def label_text(self, ids) -> str:
        ids = [ids] if np.isscalar(ids) else list(ids)
        return ";".join(self.classes[int(i)] for i in ids)

    def given(self, index: int) -> str:
        label = self.labels[index]
        return self.label_text(np.flatnonzero(label) if self.multi_label else int(label))


def audit(scan: FolderScan, *, out: str | Path, backbone: str = "tf_efficientnet_lite0", weights: str = "auto",
          input_size: int | None = None, settings: AuditSettings | None = None, num_workers: int = 0,
          cache_dir: str | Path | None = None, progress: bool = True) -> AuditResult:
    """Audit the labelled images of `scan`; write findings.csv, summary.json and audit.html to `out` (a new or
    earlier audit folder outside the data)."""
    settings = settings or AuditSettings()
    images = Images.of(scan)
    out = _output_folder(out, images.root)
    started = time.perf_counter()
    features, info = image_features(scan, backbone, weights, input_size=input_size, cache_dir=cache_dir,
                                    num_workers=num_workers, progress=progress)
    extracted = time.perf_counter()
    probs = find.out_of_fold_probabilities(features, images.labels, num_classes=len(images.classes),
                                           folds=settings.folds, seed=settings.seed, multi_label=images.multi_label)
    issues = find.label_issues(images.labels, probs, multi_label=images.multi_label)
    neighbours, similarities = find.nearest_neighbours(features, settings.neighbours)
    twins, twin_similarities = twin_neighbours(images.paths, DUPLICATE_NEIGHBOURS)
    pairs = find.near_duplicates(twins, twin_similarities, images.splits, threshold=settings.duplicate_threshold)
    scores = find.outlier_scores(features)
    count = max(1, round(settings.outlier_fraction * len(scores))) if settings.outlier_fraction > 0 else 0
    outliers = [int(i) for i in np.argsort(scores, kind="stable")[:count]]
    rows = _rows(images, issues, pairs, outliers, scores)
    summary = _summary(images, probs, issues, pairs, outliers, settings, info,
                       {"features": round(extracted - started, 1),
                        "findings": round(time.perf_counter() - extracted, 1)})
    files = _write(rows, summary, out, images, neighbours, similarities)
    return AuditResult(rows=rows, summary=summary, out=out, files=files)


def _output_folder(out: str | Path, root: str) -> Path:
    out = Path(out).resolve()
    if out.is_relative_to(Path(root).resolve()):
        raise DataError(f"--out {out} is inside the data folder {root}; the audit never writes there. Choose a folder "
                        "outside it (default: runs/audit/<folder name>).")
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise DataError(f"{out} is not empty and holds no earlier audit; choose a new or empty --out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _rows(images: Images, issues, pairs, outliers, scores) -> list[dict]:
    rows = [{"path": images.name(i.index), "split": images.splits[i.index], "finding": "label_issue",
             "given": images.given(i.index), "suggested": images.label_text(i.suggested), "score": f"{i.quality:.4f}",
             "other": "", "similarity": ""} for i in issues]
    for pair in pairs:  # the later image of a pair is the one to drop: the val/test copy of a leak, the second copy
        rows.append({"path": images.name(pair.second), "split": images.splits[pair.second],
                     "finding": "leak" if pair.leak else "near_duplicate", "given": images.given(pair.second),
                     "suggested": "", "score": f"{pair.similarity:.4f}", "other": images.name(pair.first),
                     "similarity": f"{pair.similarity:.4f}"})
    rows += [{"path": images.name(i), "split": images.splits[i], "finding": "outlier", "given": images.given(i),
              "suggested": "", "score": f"{scores[i]:.4f}", "other": "", "similarity": ""} for i in outliers]
    return rows


def _summary(images: Images, probs, issues, pairs, outliers, settings: AuditSettings, info: dict,
             seconds: dict) -> dict:
    splits = np.array(images.splits)
    twins = np.zeros(len(splits), dtype=bool)
    for pair in pairs:
        if pair.leak and images.splits[pair.first] == "train":
            twins[pair.second] = True
    leaks = {"val_with_twin_in_train": int((twins & (splits == "val")).sum()),
             "test_with_twin_in_train": int((twins & (splits == "test")).sum())}
    if not images.multi_label:
        leaks.update(find.val_accuracy_without(probs, images.labels, splits == "val", twins))
    return {
        "images": len(images.paths), "per_split": {s: int((splits == s).sum()) for s in ("train", "val", "test")},
        "classes": images.classes, "multi_label": images.multi_label,
        "label_issues": len(issues), "near_duplicate_pairs": sum(not p.leak for p in pairs),
        "leak_pairs": sum(p.leak for p in pairs), "outliers": len(outliers), "leaks": leaks,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "features": {k: info[k] for k in ("backbone", "weights", "input_size", "from_disk", "extracted", "cpus")},
        "seconds": seconds, "data_root": images.root, "findings_meaning": KINDS,
    }


def _write(rows: list[dict], summary: dict, out: Path, images: Images, neighbours, similarities) -> dict[str, Path]:
    from tlkit.audit.page import render_page

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files = {"csv": out / "findings.csv", "summary": out / "summary.json", "html": out / "audit.html"}
    atomic_write(files["csv"], text.getvalue())
    atomic_write(files["summary"], json.dumps(summary, indent=2) + "\n")
    atomic_write(files["html"], render_page(rows, summary, images, neighbours, similarities))
    log.info("audit: %d label issues, %d leak pairs, %d near-duplicate pairs, %d outliers; %s",
             summary["label_issues"], summary["leak_pairs"], summary["near_duplicate_pairs"], summary["outliers"],
             os.fspath(files["csv"]))
    return files
