"""Label-audit check against a known answer: a noisy copy (tlkit generate noisy) and its truth file.

  python scripts/audit_baseline.py NOISY_FOLDER --findings AUDIT_OUT/findings.csv --input-size 64

Prints, for the training images (the only ones the generator mislabels):
- precision and recall of tlkit audit's label issues (from its findings.csv) against the truth;
- the same for the baseline: cleanlab's find_label_issues run directly on 5-fold out-of-fold probabilities of a
  scikit-learn LogisticRegression over the same features (standardised, C=1, lbfgs);
- val accuracy of the closed-form probe trained on the noisy labels, on the noisy labels without the flagged
  images (what data.exclude does), and on the true labels (the clean training set).
Features come from tlkit's cache (the audit filled it), so this costs no extraction when run after the audit.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from tlkit.audit.adapter import fit_probe, image_features, relative_name, scan_data


def precision_recall(flagged: set[str], truth: set[str]) -> dict:
    hits = len(flagged & truth)
    return {"flagged": len(flagged), "correct": hits, "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(truth) if truth else None}


def sklearn_baseline(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices cleanlab flags from a LogisticRegression's out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(model, features, labels, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                              method="predict_proba")
    return np.flatnonzero(find_label_issues(labels=labels, pred_probs=probs, n_jobs=1))  # no fork beside torch


def probe_accuracy(train_x, train_y, val_x, val_y, classes: int, seed: int) -> float:
    weight, bias = fit_probe(train_x, train_y, num_classes=classes, seed=seed, multi_label=False)
    return float(((val_x @ weight.T + bias).argmax(1) == val_y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a noisy copy written by tlkit generate noisy (its truth is <folder>.truth.csv)")
    parser.add_argument("--findings", required=True, help="tlkit audit's findings.csv for that folder")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="bundled")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    root = Path(args.folder).resolve()
    truth_rows = list(csv.DictReader((root.parent / f"{root.name}.truth.csv").read_text(encoding="utf-8").splitlines()))
    truth = {row["path"] for row in truth_rows}
    scan = scan_data(root, seed=args.seed)
    features, _ = image_features(scan, args.backbone, args.weights, input_size=args.input_size, progress=False)
    n_train = len(scan.train)
    names = [relative_name(p, root) for p, _ in scan.train]
    noisy = np.array([y for _, y in scan.train])
    true_of = {row["path"]: scan.classes.index(row["true"]) for row in truth_rows}
    clean = np.array([true_of.get(name, y) for name, y in zip(names, noisy)])
    train_x, val_x = features[:n_train], features[n_train:n_train + len(scan.val)]
    val_y = np.array([y for _, y in scan.val])

    findings = list(csv.DictReader(Path(args.findings).read_text(encoding="utf-8").splitlines()))
    audit_flagged = {r["path"] for r in findings if r["finding"] == "label_issue" and r["split"] == "train"}
    started = time.perf_counter()
    baseline_flagged = {names[i] for i in sklearn_baseline(train_x, noisy, args.seed)}
    baseline_seconds = time.perf_counter() - started
    keep = np.array([name not in audit_flagged for name in names])
    classes = len(scan.classes)
    figures = {
        "moved": len(truth), "train_images": n_train,
        "audit": precision_recall(audit_flagged, truth),
        "sklearn_logreg_cleanlab": {**precision_recall(baseline_flagged, truth), "seconds": round(baseline_seconds, 1)},
        "probe_val_acc": {
            "noisy": probe_accuracy(train_x, noisy, val_x, val_y, classes, args.seed),
            "noisy_without_flagged": probe_accuracy(train_x[keep], noisy[keep], val_x, val_y, classes, args.seed),
            "clean": probe_accuracy(train_x, clean, val_x, val_y, classes, args.seed),
        },
    }
    acc = figures["probe_val_acc"]
    gap = acc["clean"] - acc["noisy"]
    acc["gap_recovered"] = (acc["noisy_without_flagged"] - acc["noisy"]) / gap if gap > 0 else None
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
