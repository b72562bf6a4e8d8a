"""The doctor's cheap pass at the start of training: what the folder scan already knows, plus exact duplicates found
by hashing only files whose byte sizes collide (a stat per file, a read for a handful), so it costs little even on
large folders. `tlkit doctor DIR` is the full, slower inspection (decodes every image)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence

from tlkit.data.scan import FolderScan
from tlkit.io import file_sha256

IMBALANCE_WARNING = 3.0  # largest / smallest class at which training suggests data.balance
# A scan of a LitData stream (tlkit.data.stream) holds item ids, not files: only the label checks run on it at
# training start; the file checks ran on the original images when the stream was written (its `file_checks`).
STREAM_LAYOUT = "stream"


def exact_duplicates(groups: dict[str, Sequence[str]]) -> list[list[tuple[str, str]]]:
    """Sets of byte-identical files across and within groups ({"train": paths, "val": paths}), each as
    [(group, path), ...]. Only files sharing a byte size are read."""
    by_size: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for group, paths in groups.items():
        for path in paths:
            by_size[os.path.getsize(path)].append((group, path))
    copies: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for candidates in by_size.values():
        if len(candidates) > 1:
            for group, path in candidates:
                copies[file_sha256(path)].append((group, path))
    return [found for found in copies.values() if len(found) > 1]


def class_counts(samples: Sequence[tuple], num_classes: int) -> list[int]:
    """Images per class; multi-label samples (tuples of class indices) count once for each class they carry."""
    counts = Counter(c for _, y in samples for c in (y if isinstance(y, tuple) else (y,)))
    return [counts[c] for c in range(num_classes)]


def preflight(scan: FolderScan, *, balance: str = "none", crop_size: int | None = None) -> dict:
    """{"warnings": [one line each], "duplicates_across": n, "duplicates_within": n, "imbalance_ratio": r,
    "smaller_than_crop": n}. crop_size: the model's input size; shorter image sides are counted (from headers).
    A stream's scan gives the file checks made when it was written (its counts are None)."""
    if scan.layout == STREAM_LAYOUT:
        files = {"warnings": list(getattr(scan, "file_checks", [])), "duplicates_across": None,
                 "duplicates_within": None, "smaller_than_crop": None}
    else:
        files = file_checks(scan, crop_size=crop_size)
    warnings = [*label_warnings(scan, balance=balance), *files.pop("warnings")]
    if scan.skipped:
        warnings.append(f"{len(scan.skipped)} file(s) skipped at scan (listed in the run's skipped.txt)")
    return {"warnings": warnings, **files, "imbalance_ratio": imbalance_ratio(scan)}


def file_checks(scan: FolderScan, *, crop_size: int | None = None) -> dict:
    """The checks that read the image files' sizes (and bytes where sizes collide): exact duplicates across and
    within splits, images smaller than the crop. {"warnings": [...], "duplicates_across": n, ...}."""
    warnings: list[str] = []
    duplicates = exact_duplicates({name: [p for p, _ in samples] for name, samples in
                                   (("train", scan.train), ("val", scan.val), ("test", scan.test)) if samples})
    across = [d for d in duplicates if len({group for group, _ in d}) > 1]
    within = [d for d in duplicates if len({group for group, _ in d}) == 1]
    if across:
        example = " == ".join(path for _, path in across[0])
        warnings.append(f"{len(across)} image(s) are byte-identical across splits (leakage: val/test metrics are "
                        f"inflated), e.g. {example}; remove one copy")
    if within:
        warnings.append(f"{len(within)} image(s) have exact copies in the same split (over-weighted), e.g. "
                        f"{' == '.join(path for _, path in within[0])}")
    small = sorted((min(size), path) for path, size in scan.sizes.items() if crop_size and min(size) < crop_size)
    if small:
        side, path = small[0]
        warnings.append(f"{len(small)} image(s) have a side shorter than the {crop_size} px input and are upscaled "
                        f"(thumbnails?); the smallest: {path} ({side} px)")
    return {"warnings": warnings, "duplicates_across": len(across), "duplicates_within": len(within),
            "smaller_than_crop": len(small)}


def imbalance_ratio(scan: FolderScan) -> float | None:
    """Training images of the largest class / of the smallest present one (None: no training images)."""
    present = [n for n in class_counts(scan.train, len(scan.classes)) if n]
    return max(present) / min(present) if present else None


def label_warnings(scan: FolderScan, *, balance: str = "none") -> list[str]:
    """The checks that need only labels (a stream's too): class imbalance, classes never validated."""
    warnings: list[str] = []
    counts = class_counts(scan.train, len(scan.classes))  # multi-label: images carrying each class
    present = [n for n in counts if n]
    ratio = max(present) / min(present) if present else None
    if ratio is not None and ratio >= IMBALANCE_WARNING:
        largest, smallest = counts.index(max(present)), counts.index(min(present))
        options = "loss_weights" if scan.layout == STREAM_LAYOUT else "sampler (or loss_weights)"
        advice = f"data.balance: {options} would even it out" if balance == "none" else f"data.balance: {balance} is on"
        warnings.append(f"class imbalance {ratio:.1f}x ({scan.classes[largest]} {max(present)} vs "
                        f"{scan.classes[smallest]} {min(present)} training images); {advice}")
    val_counts = class_counts(scan.val, len(scan.classes))
    unvalidated = [name for c, name in enumerate(scan.classes) if not val_counts[c]]
    if scan.val and unvalidated:
        warnings.append(f"no validation images for {', '.join(unvalidated)}: trained, never validated")
    return warnings
