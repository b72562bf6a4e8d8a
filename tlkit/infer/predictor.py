"""Predict in memory: `Predictor.from_checkpoint(path)` or `.from_export(folder)`, then `predictor.predict(images)`.

Images may be file paths, PIL images or uint8 numpy arrays (HxW grey, HxWx3 RGB, HxWx4 RGBA). They are decoded and
preprocessed by tlkit.data.preprocessing and batched, forwarded and aggregated by tlkit.infer.tta exactly as
`tlkit predict` does, so the numbers are the same (tests/test_predict.py, tests/test_export.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tlkit.data.preprocessing import CROPS, Preprocessing, View, as_rgb
from tlkit.errors import CheckpointError
from tlkit.model.classifier import Classifier
from tlkit.infer.settings import DEFAULT_MAX_VIEWS_PER_FORWARD, MAX_TTA_SCALE
from tlkit.infer.tta import (
    TTAPolicy,
    ViewMaker,
    forward_views,
    images_per_batch,
    normalize_spec,
    policy_for,
    resolve_policy,
)

ImageLike = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: the top-1, the top-k (best first) and every class probability.

    Multi-label models: `labels` is the image's label set (classes at or over their thresholds, most probable
    first; possibly empty), `label` its most probable member (None for an empty set) and `probabilities` are
    independent sigmoid probabilities."""

    label: str | None
    probability: float
    labels: list[str]  # top-k labels, best first (multi-label: the label set)
    probs: list[float]  # their probabilities
    probabilities: np.ndarray  # float32 [C], in Predictor.classes order; sums to 1 (single-label)
    source: str | None = None  # the file, for images given as paths


class Predictor:
    """A model, its classes, its preprocessing and a TTA policy: images in, Predictions out.

    thresholds: per-class decision thresholds of a multi-label model (None: single-label, softmax over classes).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], classes: Sequence[str],
                 preprocessing: Preprocessing, policy: TTAPolicy, *,
                 max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
                 thresholds: Sequence[float] | None = None):
        self.forward = forward
        self.classes = list(classes)
        self.thresholds = np.asarray(thresholds, dtype=np.float32) if thresholds is not None else None
        if self.thresholds is not None and self.thresholds.shape != (len(self.classes),):
            raise ValueError(f"thresholds: one per class ({len(self.classes)}); got {len(self.thresholds)}.")
        self.preprocessing = preprocessing
        self.policy = policy
        self.max_views_per_forward = max_views_per_forward
        self._views = ViewMaker(policy, preprocessing)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, tta: str | dict | None = None, device: str = "cpu",
                        **kwargs: Any) -> Predictor:
        """A run's .ckpt (or an exported model.safetensors), in PyTorch. tta: None = the checkpoint's own policy."""
        from tlkit.model.loading import load_classifier

        return cls.from_classifier(load_classifier(path, map_location=device), tta=tta, **kwargs)

    @classmethod
    def from_classifier(cls, classifier: Classifier, *, tta: str | dict | None = None, **kwargs: Any) -> Predictor:
        """A Classifier in memory (e.g. `module.classifier` after training), in PyTorch. tta: None = its own policy."""
        return cls(_torch_forward(classifier), classifier.classes, classifier.preprocessing,
                   policy_for(classifier, tta), thresholds=_thresholds(classifier), **kwargs)

    @classmethod
    def from_export(cls, folder: str | Path, *, tta: str | dict | None = None, **kwargs: Any) -> Predictor:
        """A `tlkit export` folder: model.onnx through onnxruntime (else model.safetensors in PyTorch).

        tta: None = the views model.json lists for the bundle (what its predict.py uses), or a policy name/spec.
        """
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        meta = _read_sidecar(folder)
        try:
            pre = Preprocessing.from_dict(meta["preprocessing"])
            classes = [str(c) for c in meta["classes"]]
            policy = _policy_from_sidecar(meta, pre) if tta is None else resolve_policy(tta, pre)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'model.json'} is incomplete or edited ({type(exc).__name__}: {exc}); "
                                  "export the model again with `tlkit export`.") from None
        from tlkit.model.loading import WEIGHTS_NAME, load_classifier, read_thresholds

        thresholds = read_thresholds(folder / "model.json", meta, len(classes)) if meta.get("multi_label") is True \
            else None
        onnx_name = meta.get("files", {}).get("onnx")
        if onnx_name and (folder / onnx_name).is_file():
            return cls(_onnx_forward(folder / onnx_name), classes, pre, policy, thresholds=thresholds, **kwargs)
        classifier = load_classifier(folder / WEIGHTS_NAME)
        return cls(_torch_forward(classifier), classifier.classes, classifier.preprocessing, policy,
                   thresholds=_thresholds(classifier), **kwargs)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def probabilities(self, images: Sequence[ImageLike]) -> np.ndarray:
        """[N, C] float32 class probabilities (multi-label: per-class sigmoids), in input order (batched like
        `tlkit predict`)."""
        out = []
        per_batch = images_per_batch(self.policy, self.max_views_per_forward)
        for start in range(0, len(images), per_batch):
            views = torch.stack([self._views(as_rgb(image)) for image in images[start: start + per_batch]])
            with torch.inference_mode():
                out.append(forward_views(self.forward, views, self.policy.aggregate,
                                         max_views_per_forward=self.max_views_per_forward,
                                         multi_label=self.multi_label).float())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, images: ImageLike | Sequence[ImageLike], *, top_k: int = 5) -> Prediction | list[Prediction]:
        """One image -> one Prediction; a list (or an N x H x W x C array) -> a list. Unreadable files raise.
        Multi-label: each Prediction lists the image's label set (top_k does not apply)."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        batch = [images] if single else list(images)
        probs = self.probabilities(batch)
        k = max(1, min(top_k, len(self.classes)))
        results = []
        for image, row in zip(batch, probs):
            order = np.argsort(-row, kind="stable")  # the same ordering as the predictions CSV
            order = [j for j in order if row[j] >= self.thresholds[j]] if self.multi_label else order[:k]
            labels, top = [self.classes[j] for j in order], [float(row[j]) for j in order]
            source = str(image) if isinstance(image, (str, Path)) else None
            results.append(Prediction(labels[0] if labels else None, top[0] if top else 0.0, labels, top, row, source))
        return results[0] if single else results

    def __repr__(self) -> str:
        return (f"Predictor({len(self.classes)} classes, {self.preprocessing.input_size} px, TTA {self.policy.label}: "
                f"{self.policy.num_views} view(s))")


def _thresholds(classifier: Classifier) -> list[float] | None:
    return classifier.thresholds.tolist() if classifier.multi_label else None


def _torch_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    module.eval()
    device = next(module.parameters()).device
    return lambda x: module(x.to(device)).float().cpu()


def _onnx_forward(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy().astype(np.float32, copy=False)})[0])


def _read_sidecar(folder: Path) -> dict:
    path = folder / "model.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no model.json; pass the folder `tlkit export --out` wrote.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({type(exc).__name__}); export the model again.") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a tlkit export description; export the model again.")
    return meta


def _policy_from_sidecar(meta: dict, pre: Preprocessing) -> TTAPolicy:
    """The bundle's concrete views from model.json, bounded like any TTA spec (the file may come from anyone)."""
    views_meta = meta.get("tta_views")
    if views_meta is None:  # an export written before the bundle existed: its checkpoint policy
        return resolve_policy(meta.get("tta"), pre)
    views = tuple(View(int(v["scale"]), str(v["crop"]), bool(v["flip"])) for v in views_meta["views"])
    if not views or len(views) > 64 or any(v.crop not in CROPS or not 1 <= v.scale <= MAX_TTA_SCALE for v in views):
        raise ValueError("tta_views: 1-64 views with known crops and scales up to 2048 px expected")
    aggregate = normalize_spec({"policy": "none", "aggregate": views_meta["aggregate"]})["aggregate"]
    return TTAPolicy(name=str(views_meta["policy"]), views=views, aggregate=aggregate)


__all__ = ["Prediction", "Predictor"]
