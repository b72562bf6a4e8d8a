"""Predict with a tlkit export without tlkit or torch: numpy, Pillow and onnxruntime only.

    pip install -r requirements.txt
    python predict.py IMAGE [IMAGE ...] [--top-k 3] [--csv predictions.csv | --csv -] [--json out.json] [--no-tta]

Reads model.json and model.onnx beside this file. Images are decoded and preprocessed by preprocessing.py (tlkit's
own eval preprocessing module, copied verbatim by `tlkit export`); the views of the exported TTA policy
(model.json "tta_views") go through model.onnx together and their probabilities combine as "aggregate" says.
Prints path, top-1 label and probability per image; --csv writes path, label_1, prob_1, ... like `tlkit predict`.
A multi-label model (model.json "multi_label": true) gives independent sigmoid probabilities, and each image's label
set is the classes at or over their "thresholds"; --csv then writes path, labels, probs, p_<class>... .
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # preprocessing.py lives beside this file (also under `python -I`)

import numpy as np
from PIL import Image, UnidentifiedImageError
from preprocessing import Preprocessing, View, as_rgb, eval_resize_size, make_views

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def aggregate(logits: np.ndarray, how: str, multi_label: bool = False) -> np.ndarray:
    """[views, C] logits -> [C] probabilities (softmax, or sigmoid per class when multi_label): mean_prob (mean of the
    views' probabilities), mean_logit, or max (a softmax's max renormalised)."""
    activate = sigmoid if multi_label else softmax
    if how == "mean_logit":
        return activate(logits.astype(np.float64).mean(axis=0))
    probs = activate(logits)
    if how == "mean_prob":
        return probs.mean(axis=0)
    if how == "max":
        peak = probs.max(axis=0)
        return peak if multi_label else peak / peak.sum()
    raise ValueError(f"Unknown aggregate {how!r} in model.json; expected mean_prob, mean_logit or max.")


class Model:
    """model.onnx + model.json from a tlkit export folder; `probabilities(image)` for a path, PIL image or array."""

    def __init__(self, folder: str | Path = HERE, *, tta: bool = True):
        import onnxruntime as ort

        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        self.classes: list[str] = list(meta["classes"])
        self.multi_label = meta.get("multi_label") is True
        self.thresholds = np.asarray(meta["thresholds"], dtype=np.float32) if self.multi_label else None
        self.pre = Preprocessing.from_dict(meta["preprocessing"])
        views = meta["tta_views"]
        self.views = [View(**v) for v in views["views"]] if tta else [View(eval_resize_size(self.pre), "center", False)]
        self.aggregate = views["aggregate"] if tta else "mean_prob"
        self.session = ort.InferenceSession(str(folder / meta["files"]["onnx"]), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, image) -> np.ndarray:
        views = make_views(as_rgb(image), self.views, self.pre)
        logits = self.session.run(None, {self.input_name: views})[0]
        return aggregate(logits, self.aggregate, self.multi_label)

    def label_set(self, probs: np.ndarray) -> list[int]:
        """Multi-label: the classes at or over their thresholds, most probable first."""
        return [j for j in np.argsort(-probs, kind="stable") if probs[j] >= self.thresholds[j]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict labels with a tlkit export (no tlkit or torch needed).")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=str(HERE), help="export folder (default: this script's folder)")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image in --csv/--json (default 5; a "
                        "multi-label model lists its label set instead)")
    parser.add_argument("--csv", help="write path, label_1, prob_1, ... here ('-' = stdout)")
    parser.add_argument("--json", help="write every class probability per image here")
    parser.add_argument("--no-tta", action="store_true", help="single centre view instead of model.json's TTA views")
    args = parser.parse_args(argv)
    model = Model(args.model, tta=not args.no_tta)
    k = max(1, min(args.top_k, len(model.classes)))
    rows = []
    for path in args.images:
        try:
            probs = model.probabilities(path)
        except DECODE_ERRORS as exc:
            print(f"skipped {path}: unreadable ({type(exc).__name__})", file=sys.stderr)
            continue
        order = model.label_set(probs) if model.multi_label else np.argsort(-probs, kind="stable")[:k]
        rows.append({"path": path, "labels": [model.classes[j] for j in order],
                     "probs": [float(probs[j]) for j in order], "probabilities": [float(p) for p in probs]})
    if not rows:
        print("error: no image could be read; pass image files (JPEG, PNG, ...).", file=sys.stderr)
        return 1
    if args.csv:
        to_stdout = args.csv == "-"
        with contextlib.nullcontext(sys.stdout) if to_stdout else open(args.csv, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            if model.multi_label:
                writer.writerow(["path", "labels", "probs", *(f"p_{c}" for c in model.classes)])
                writer.writerows([r["path"], ";".join(r["labels"]), ";".join(f"{p:.6f}" for p in r["probs"]),
                                  *(f"{p:.6f}" for p in r["probabilities"])] for r in rows)
            else:
                writer.writerow(["path"] + [f"{n}_{i}" for i in range(1, k + 1) for n in ("label", "prob")])
                writer.writerows([r["path"], *[x for lab, p in zip(r["labels"], r["probs"]) for x in (lab, f"{p:.6f}")]]
                                 for r in rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"classes": model.classes, "predictions": rows}, indent=1) + "\n",
                                   encoding="utf-8")
    if args.csv != "-":
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            if model.multi_label:
                labels = ", ".join(f"{lab} {p:.4f}" for lab, p in zip(r["labels"], r["probs"]))
                print(f"{r['path']:<{width}}  {labels or '(no label over its threshold)'}")
            else:
                print(f"{r['path']:<{width}}  {r['labels'][0]}  {r['probs'][0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
