"""Predict with a tlkit export without tlkit or torch: numpy, Pillow and onnxruntime only.

    pip install -r requirements.txt
    python predict.py IMAGE [IMAGE ...] [--top-k 3] [--csv predictions.csv | --csv -] [--json out.json] [--no-tta]
                      [--overwrite]

Reads model.json and model.onnx beside this file. Images are decoded and preprocessed by preprocessing.py (tlkit's
own eval preprocessing module, copied verbatim by `tlkit export`); the views of the exported TTA policy
(model.json "tta_views") go through model.onnx together and their probabilities combine as "aggregate" says.
Prints path, top-1 label and probability per image; --csv writes path, label_1, prob_1, ... like `tlkit predict`.
A multi-label model (model.json "multi_label": true) gives independent sigmoid probabilities, and each image's label
set is the classes at or over their "thresholds"; --csv then writes path, labels, probs, p_<class>... .
An existing --csv/--json file is kept unless --overwrite is given. Images that cannot be read, or whose size is
refused (empty, an aspect ratio over 100:1), are skipped with the reason; a damaged model.json is one error line.
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
from preprocessing import (
    CROPS,
    MAX_INPUT_SIZE,
    Preprocessing,
    View,
    as_rgb,
    eval_resize_size,
    make_views,
)

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError)
AGGREGATES = ("mean_prob", "mean_logit", "max")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell as a formula


class ModelError(Exception):
    """model.json / model.onnx cannot be used: one line naming the file and the fix, never blamed on the images."""


def csv_cell(value) -> str:
    """A text cell a spreadsheet shows as text: a leading ' before =, +, -, @ (numbers are written as they are).
    tlkit's own CSV outputs do the same (tlkit.io.csv_safe); this bundle does not import tlkit."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


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
        folder = Path(folder)
        path = folder / "model.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            self._read(meta, tta)
        except FileNotFoundError:
            raise ModelError(f"{path} does not exist; pass --model with the folder `tlkit export` wrote.") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
            raise ModelError(f"{path} is damaged or edited ({detail}); export the model again with tlkit export.") \
                from None
        self.session, self.input_name = _session(folder / meta["files"]["onnx"], len(self.classes), self.pre)

    def _read(self, meta: dict, tta: bool) -> None:
        """Every value model.json gives, checked before any image is read (ValueError naming the bad one)."""
        self.classes: list[str] = [str(c) for c in meta["classes"]]
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: a non-empty list of distinct names expected")
        self.multi_label = meta.get("multi_label") is True
        self.thresholds = np.asarray(meta["thresholds"], dtype=np.float32) if self.multi_label else None
        if self.thresholds is not None and (self.thresholds.shape != (len(self.classes),)
                                            or not np.isfinite(self.thresholds).all()):
            raise ValueError(f"thresholds: one finite number per class ({len(self.classes)}) expected")
        self.pre = Preprocessing.from_dict(meta["preprocessing"])  # sizes, interpolation, finite mean/std
        views = meta["tta_views"]
        self.views = [View(int(v["scale"]), str(v["crop"]), bool(v["flip"])) for v in views["views"]] if tta \
            else [View(eval_resize_size(self.pre), "center", False)]
        if not 1 <= len(self.views) <= 64 or any(v.crop not in CROPS or not self.pre.input_size <= v.scale
                                                 <= MAX_INPUT_SIZE for v in self.views):
            raise ValueError(f"tta_views: 1-64 views with crops in {', '.join(CROPS)} and scales from input_size "
                             f"to {MAX_INPUT_SIZE} expected")
        self.aggregate = str(views["aggregate"]) if tta else "mean_prob"
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if not isinstance(meta["files"]["onnx"], str):
            raise TypeError("files.onnx: a file name expected")

    def probabilities(self, image) -> np.ndarray:
        """[C] probabilities; the image's errors are DECODE_ERRORS, the model's are ModelError."""
        views = make_views(as_rgb(image), self.views, self.pre)
        try:
            logits = self.session.run(None, {self.input_name: views})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: the model, not the image
            raise ModelError(f"model.onnx refused the input ({str(exc).splitlines()[0][:160]}); model.json and "
                             "model.onnx do not match: export the model again.") from None
        probs = aggregate(logits, self.aggregate, self.multi_label)
        if not np.isfinite(probs).all():
            raise ModelError("the model gave non-finite probabilities; model.onnx or model.json is damaged: export "
                             "the model again.")
        return probs

    def label_set(self, probs: np.ndarray) -> list[int]:
        """Multi-label: the classes at or over their thresholds, most probable first."""
        return [j for j in np.argsort(-probs, kind="stable") if probs[j] >= self.thresholds[j]]


def _session(path: Path, num_classes: int, pre: Preprocessing):
    """(onnxruntime session, its input name); ModelError when the file is missing, damaged, or its fixed shapes
    disagree with model.json."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"{path} does not exist; keep model.onnx beside model.json (or export the model again).")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
        raise ModelError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]}); export the "
                         "model again.") from None
    for what, dims, stated in (("classes", session.get_outputs()[0].shape[-1:], num_classes),
                               ("input_size", session.get_inputs()[0].shape[-1:], pre.input_size)):
        if dims and isinstance(dims[0], int) and dims[0] != stated:
            raise ModelError(f"model.json states {what} {stated} but {path.name} has {dims[0]}; the files come from "
                             "different exports: export the model again.")
    return session, session.get_inputs()[0].name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict labels with a tlkit export (no tlkit or torch needed).")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=str(HERE), help="export folder (default: this script's folder)")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image in --csv/--json (default 5; a "
                        "multi-label model lists its label set instead)")
    parser.add_argument("--csv", help="write path, label_1, prob_1, ... here ('-' = stdout)")
    parser.add_argument("--json", help="write every class probability per image here")
    parser.add_argument("--no-tta", action="store_true", help="single centre view instead of model.json's TTA views")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv/--json file")
    args = parser.parse_args(argv)
    for out in (args.csv, args.json):
        if out and out != "-" and Path(out).exists() and not args.overwrite:
            print(f"error: {out} already exists; pass --overwrite to replace it, or choose another file.",
                  file=sys.stderr)
            return 1
    try:
        model = Model(args.model, tta=not args.no_tta)
        rows = _predict(model, args.images, max(1, min(args.top_k, len(model.classes))))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print("error: no image could be read; pass image files (JPEG, PNG, ...).", file=sys.stderr)
        return 1
    _write(model, rows, args)
    return 0


def _predict(model: Model, images: list[str], k: int) -> list[dict]:
    rows = []
    for path in images:
        try:
            probs = model.probabilities(path)
        except DECODE_ERRORS as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            print(f"skipped {path}: {reason}", file=sys.stderr)
            continue
        order = model.label_set(probs) if model.multi_label else np.argsort(-probs, kind="stable")[:k]
        rows.append({"path": path, "labels": [model.classes[j] for j in order],
                     "probs": [float(probs[j]) for j in order], "probabilities": [float(p) for p in probs]})
    return rows


def _write(model: Model, rows: list[dict], args: argparse.Namespace) -> None:
    k = max(1, min(args.top_k, len(model.classes)))
    if args.csv:
        to_stdout = args.csv == "-"
        with contextlib.nullcontext(sys.stdout) if to_stdout else open(args.csv, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            if model.multi_label:
                writer.writerow(["path", "labels", "probs", *(csv_cell(f"p_{c}") for c in model.classes)])
                writer.writerows([csv_cell(r["path"]), csv_cell(";".join(r["labels"])),
                                  ";".join(f"{p:.6f}" for p in r["probs"]), *(f"{p:.6f}" for p in r["probabilities"])]
                                 for r in rows)
            else:
                writer.writerow(["path"] + [f"{n}_{i}" for i in range(1, k + 1) for n in ("label", "prob")])
                writer.writerows([csv_cell(r["path"]), *[x for lab, p in zip(r["labels"], r["probs"])
                                                         for x in (csv_cell(lab), f"{p:.6f}")]] for r in rows)
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


if __name__ == "__main__":
    sys.exit(main())
