"""Predict in memory: `Predictor.from_checkpoint(path)` or `.from_export(folder)`, then `predictor.predict(images)`.

Images may be file paths, PIL images or uint8 numpy arrays (HxW grey, HxWx3 RGB, HxWx4 RGBA). They are decoded and
preprocessed by tlkit.data.preprocessing and batched, forwarded and aggregated by tlkit.infer.tta exactly as
`tlkit predict` does, so the numbers are the same (tests/test_predict.py, tests/test_export.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tlkit.data.preprocessing import CROPS, Preprocessing, View, as_rgb
from tlkit.errors import CheckpointError, DataError
from tlkit.infer.settings import (
    DEFAULT_MAX_VIEWS_PER_FORWARD,
    MAX_TTA_SCALE,
    MAX_TTA_VIEWS,
)
from tlkit.infer.tta import (
    TTAPolicy,
    ViewMaker,
    forward_views,
    images_per_batch,
    normalize_spec,
    policy_for,
    resolve_policy,
)
from tlkit.model.classifier import Classifier
from tlkit.model.tasks import task_from, task_of

ImageLike = str | Path | Image.Image | np.ndarray
log = logging.getLogger(__name__)
# What reading or preprocessing one image may raise: missing, undecodable, a decompression bomb, or refused by its
# size (preprocessing.ImageGeometryError, a ValueError: empty, an extreme aspect ratio).
IMAGE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError)
ON_BAD = ("error", "skip")


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
    skipped: str | None = None  # on_bad="skip": why the image was not predicted (label None, probabilities NaN)


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
        self.task = task_from(self.thresholds is not None)  # thresholds are what a multi-label model decides with
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
            classes = _sidecar_classes(meta["classes"])
            policy = _policy_from_sidecar(meta, pre) if tta is None else resolve_policy(tta, pre)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / 'model.json'} is incomplete or edited ({type(exc).__name__}: {exc}); "
                                  "export the model again with `tlkit export`.") from None
        from tlkit.model.loading import WEIGHTS_NAME, load_classifier, read_thresholds

        thresholds = read_thresholds(folder / "model.json", meta, len(classes)) if task_of(meta).has_thresholds \
            else None
        onnx_name = meta.get("files", {}).get("onnx")
        if onnx_name and (folder / onnx_name).is_file():
            forward = _onnx_forward(folder / onnx_name, len(classes), pre.input_size)
            return cls(forward, classes, pre, policy, thresholds=thresholds, **kwargs)
        classifier = load_classifier(folder / WEIGHTS_NAME)
        return cls(_torch_forward(classifier), classifier.classes, classifier.preprocessing, policy,
                   thresholds=_thresholds(classifier), **kwargs)

    @property
    def multi_label(self) -> bool:
        return self.task.has_thresholds

    def probabilities(self, images: Sequence[ImageLike], *, on_bad: str = "error") -> np.ndarray:
        """[N, C] float32 class probabilities (multi-label: per-class sigmoids), in input order (batched like
        `tlkit predict`). on_bad="skip": an image that cannot be read, or whose size is refused (empty, an extreme
        aspect ratio), gets a row of NaN and a warning instead of stopping the batch; "error" raises DataError."""
        return self._probabilities(images, on_bad)[0]

    def _probabilities(self, images: Sequence[ImageLike], on_bad: str) -> tuple[np.ndarray, dict[int, str]]:
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {', '.join(ON_BAD)}; got {on_bad!r}.")
        out = np.full((len(images), len(self.classes)), np.nan, dtype=np.float32)
        skipped: dict[int, str] = {}
        per_batch = images_per_batch(self.policy, self.max_views_per_forward)
        for start in range(0, len(images), per_batch):
            done, views = [], []
            for index in range(start, min(start + per_batch, len(images))):
                try:
                    views.append(self._views(as_rgb(images[index])))
                except IMAGE_ERRORS as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    name = _image_name(images[index], index)
                    if on_bad == "error":
                        raise DataError(f"{name}: {reason}. Pass on_bad='skip' to predict the other images.") from None
                    log.warning("skipped %s: %s", name, reason)
                    skipped[index] = reason
                    continue
                done.append(index)
            if not done:
                continue
            with torch.inference_mode():
                out[done] = forward_views(self.forward, torch.stack(views), self.policy.aggregate,
                                          max_views_per_forward=self.max_views_per_forward,
                                          task=self.task).float().numpy()
        return out, skipped

    def predict(self, images: ImageLike | Sequence[ImageLike], *, top_k: int = 5,
                on_bad: str = "error") -> Prediction | list[Prediction]:
        """One image -> one Prediction; a list (or an N x H x W x C array) -> a list. Multi-label: each Prediction
        lists the image's label set (top_k does not apply).

        on_bad: "error" raises DataError naming an image that cannot be read or is refused by its size; "skip"
        returns it as a Prediction with `skipped` set (label None, NaN probabilities) and predicts the others."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        batch = [images] if single else list(images)
        probs, skipped = self._probabilities(batch, on_bad)
        k = max(1, min(top_k, len(self.classes)))
        results = []
        for index, (image, row) in enumerate(zip(batch, probs)):
            source = str(image) if isinstance(image, (str, Path)) else None
            if index in skipped:
                results.append(Prediction(None, float("nan"), [], [], row, source, skipped[index]))
                continue
            order = self.task.chosen(row, top_k=k, thresholds=self.thresholds)  # the predictions CSV's order
            labels, top = [self.classes[j] for j in order], [float(row[j]) for j in order]
            results.append(Prediction(labels[0] if labels else None, top[0] if top else 0.0, labels, top, row, source))
        return results[0] if single else results

    def __repr__(self) -> str:
        return (f"Predictor({len(self.classes)} classes, {self.preprocessing.input_size} px, TTA {self.policy.label}: "
                f"{self.policy.num_views} view(s))")


def _image_name(image: ImageLike, index: int) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    size = "x".join(map(str, image.shape)) if isinstance(image, np.ndarray) else "x".join(map(str, image.size))
    return f"image {index} ({type(image).__name__} {size})"


def _thresholds(classifier: Classifier) -> list[float] | None:
    return classifier.thresholds.tolist() if classifier.task.has_thresholds else None


def _torch_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    module.eval()
    device = next(module.parameters()).device
    return lambda x: module(x.to(device)).float().cpu()


def _sidecar_classes(classes: Any) -> list[str]:
    if not isinstance(classes, list) or not classes or len({str(c) for c in classes}) != len(classes):
        raise ValueError("classes: a non-empty list of distinct names expected")
    return [str(c) for c in classes]


def _onnx_forward(path: Path, num_classes: int, input_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX graph as a forward; CheckpointError when its fixed shapes disagree with model.json (an edited class
    list or input size would otherwise label every image wrongly, or fail on each batch)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a damaged graph
        raise CheckpointError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]}); export the "
                              "model again.") from None
    for what, dims, stated in (("classes", session.get_outputs()[0].shape[-1:], num_classes),
                               ("input_size", session.get_inputs()[0].shape[-1:], input_size)):
        if dims and isinstance(dims[0], int) and dims[0] != stated:
            raise CheckpointError(f"{path.parent / 'model.json'} states {what} {stated} but {path.name} has "
                                  f"{dims[0]}; the files come from different exports: export the model again.")
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
    if not views or len(views) > MAX_TTA_VIEWS or any(v.crop not in CROPS or not pre.input_size <= v.scale <= MAX_TTA_SCALE
                                                      for v in views):
        raise ValueError(f"tta_views: 1-{MAX_TTA_VIEWS} views with known crops and scales from input_size to "
                         f"{MAX_TTA_SCALE} px expected")
    aggregate = normalize_spec({"policy": "none", "aggregate": views_meta["aggregate"]})["aggregate"]
    return TTAPolicy(name=str(views_meta["policy"]), views=views, aggregate=aggregate)


__all__ = ["Prediction", "Predictor"]
