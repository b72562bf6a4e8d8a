"""Classifier: a timm backbone + a head + the config it carries, as a plain `nn.Module` (as timm's models are).

`classifier(images)` gives logits, `classifier.embed(images)` the embeddings the head reads, and
`classifier.backbone` is always the timm model itself (`forward_features`, `group_matcher`, `pretrained_cfg` work as
in timm; its `pretrained_cfg` states the real preprocessing, so `timm.data.resolve_data_config(model=backbone)`
agrees with tlkit). With multi-layer features (`features: stages`), the stage pooling sits beside the backbone, not
around it. TransferModule trains one; Predictor, evaluate and export run one; `load_classifier`
(tlkit.model.loading) rebuilds one from a checkpoint, a `model.safetensors` or an export folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlkit.config import settings_from
from tlkit.data.preprocessing import Preprocessing
from tlkit.model.backbones import create_backbone
from tlkit.model.heads import build_head
from tlkit.model.multilayer import StagePooling, resolve_stages
from tlkit.model.settings import (
    DEFAULT_STAGE_GRID,
    BackboneConfig,
    HeadConfig,
    normalize_tta_spec,
)
from tlkit.model.tasks import task_from

CHECKPOINT_FORMAT = 2  # 2: settings stored as the settings models' dicts (backbone, strategy, optim, schedule...)


@dataclass(frozen=True)
class ClassifierConfig:
    """What a Classifier is besides its weights, in plain types: it serialises to the `tlkit` description that
    checkpoints and exports carry (`to_dict`)."""

    backbone: str  # the timm architecture
    classes: tuple[str, ...]
    preprocessing: Preprocessing  # the eval input contract
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig's dict
    features: str | tuple[int, ...] = "last"  # last, stages, or stage indices (multi-layer features)
    stage_grid: int = DEFAULT_STAGE_GRID  # multi-layer features: each stage's map pooled to stage_grid x stage_grid cells
    task: str = "single_label"  # single_label (softmax over classes) | multi_label (a sigmoid per class)
    tta: dict[str, Any] = field(default_factory=lambda: normalize_tta_spec(None))  # default TTA policy (canonical)

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    def to_dict(self, thresholds: Sequence[float] | None = None) -> dict[str, Any]:
        """The `tlkit` description (plain types only: checkpoints load with torch.load(weights_only=True))."""
        features = self.features if isinstance(self.features, str) else list(self.features)
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.classes),
            "backbone": self.backbone,
            "head": dict(self.head),
            "features": features,
            **({"stage_grid": self.stage_grid} if features != "last" else {}),
            "preprocessing": self.preprocessing.to_dict(),
            "tta": dict(self.tta),
            **task_from(self.task).description(thresholds),
        }


class Classifier(nn.Module):
    """backbone (timm, `num_classes=0`) -> head, with the config it carries (`config`: classes, task,
    preprocessing, features, TTA; the per-class decision thresholds of a multi-label model are the `thresholds`
    buffer, so they travel in the state dict).

    Build one with `create_classifier(...)` or `load_classifier(path)`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, config: ClassifierConfig, *,
                 stage_pooling: StagePooling | None = None, channels_last: bool = True,
                 thresholds: Sequence[float] | None = None, weights_source: str = "random init"):
        super().__init__()
        self.backbone = backbone
        self.stage_pooling = stage_pooling
        self.head = head
        self.config = config
        self.channels_last = bool(channels_last)
        self.weights_source = weights_source  # where the backbone's pretrained weights came from (for summaries)
        self.task = task_from(config.task)
        if self.task.has_thresholds:
            values = self.task.default_thresholds(len(config.classes)) if thresholds is None else \
                [float(t) for t in thresholds]
            if len(values) != len(config.classes):
                raise ValueError(f"thresholds: one per class ({len(config.classes)}); got {len(values)}.")
            self.register_buffer("thresholds", torch.tensor(values, dtype=torch.float32))
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        _state_preprocessing(backbone, config.preprocessing)
        # The network that turns images into the head's input: the backbone itself, or the backbone and the stage
        # pooling together (one module for the feature cache to run and fingerprint). Kept out of _modules, so
        # the state dict holds each weight once.
        embedder = backbone if stage_pooling is None else _Embedder(backbone, stage_pooling)
        object.__setattr__(self, "embedder", embedder)
        self.register_load_state_dict_pre_hook(_rename_wrapped_backbone_keys)

    # -- the config, for callers -------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def num_classes(self) -> int:
        return len(self.config.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    @property
    def tta_spec(self) -> dict[str, Any]:
        return dict(self.config.tta)

    @property
    def multi_label(self) -> bool:
        return self.config.multi_label

    @property
    def num_features(self) -> int:
        """Width of the embeddings (the head's input)."""
        return self.backbone.num_features if self.stage_pooling is None else self.stage_pooling.num_features

    # -- forward -----------------------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W), preprocessed as `preprocessing` says -> embeddings (N, num_features)."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.embedder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> logits (N, num_classes)."""
        return self.head(self.embed(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what the model outputs as probabilities: sigmoid per class (multi-label) or softmax."""
        return self.task.activation(logits)

    def describe(self) -> dict[str, Any]:
        """The `tlkit` description of checkpoints and exports: the config, with the current thresholds."""
        return self.config.to_dict(self.thresholds.tolist() if self.task.has_thresholds else None)

    def extra_repr(self) -> str:
        c = self.config
        return (f"backbone={c.backbone!r}, classes={len(c.classes)}, task={c.task}, "
                f"input_size={c.preprocessing.input_size}, features={c.features!r}")


class _Embedder(nn.Module):
    """backbone + stage pooling as one module: images -> multi-layer embeddings."""

    def __init__(self, backbone: nn.Module, stage_pooling: StagePooling):
        super().__init__()
        self.backbone = backbone
        self.stage_pooling = stage_pooling

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stage_pooling.embed(self.backbone, images)


def create_classifier(
    backbone: str | BackboneConfig | Mapping = "tf_efficientnet_lite0",
    classes: Sequence[str] | None = None,
    *,
    weights: str | None = None,
    head: HeadConfig | Mapping | None = None,
    features: str | Sequence[int] = "last",
    stage_grid: int = DEFAULT_STAGE_GRID,
    multi_label: bool = False,
    tta: str | Mapping | None = None,
    thresholds: Sequence[float] | None = None,
    channels_last: bool = True,
) -> Classifier:
    """A Classifier: timm backbone `backbone` (a name, or BackboneConfig / its dict: weights, input size,
    normalisation...) with a new head for `classes`.

    Args:
        weights: shorthand for backbone.weights (auto | hub | bundled | none | a file).
        head: HeadConfig or its dict; default one linear layer.
        features: last = the backbone's pooled features; stages or a list of stage indices = those stages' pooled
            outputs concatenated with the last ones (tlkit.model.multilayer), each pooled to stage_grid x stage_grid.
        multi_label: each image may carry any number of the classes (a sigmoid per class, `thresholds`).
        tta: the default test-time augmentation of evaluate/predict: a policy name or a TTA spec dict.
        channels_last: NHWC memory layout (on a 2-core CPU lite0 runs ~1.5x faster).
    """
    if not classes or len(classes) < 2:
        raise ValueError(f"A classifier needs at least 2 class names; got {classes!r}.")
    backbone_config = settings_from(BackboneConfig, backbone, shorthand="name")
    if weights is not None:
        backbone_config = backbone_config.model_copy(update={"weights": weights})
    head_config = settings_from(HeadConfig, head)
    tta_spec = normalize_tta_spec(tta)  # fails on a bad policy before any model is built
    model, pretrained, source = create_backbone(backbone_config.name, backbone_config.weights,
                                                drop_path_rate=backbone_config.drop_path_rate)
    pooling = None
    if features != "last":
        pooling = StagePooling(model, resolve_stages(model, features, backbone_config.name), stage_grid)
    config = ClassifierConfig(
        backbone=backbone_config.name,
        classes=tuple(classes),
        preprocessing=pretrained.replace(**backbone_config.preprocessing_overrides()),
        head=head_config.model_dump(mode="json"),
        features=features if isinstance(features, str) else tuple(int(i) for i in features),
        stage_grid=int(stage_grid),
        task="multi_label" if multi_label else "single_label",
        tta=tta_spec,
    )
    width = model.num_features if pooling is None else pooling.num_features
    return Classifier(model, build_head(width, len(classes), head_config), config, stage_pooling=pooling,
                      channels_last=channels_last, thresholds=thresholds, weights_source=source)


def _state_preprocessing(backbone: nn.Module, pre: Preprocessing) -> None:
    """Write the real preprocessing into the timm model's pretrained_cfg, so timm's own helpers
    (`resolve_data_config(model=backbone)`, `create_transform`) agree with tlkit's eval transform."""
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    cfg.update(input_size=(3, pre.input_size, pre.input_size), crop_pct=pre.crop_pct, crop_mode="center",
               interpolation=pre.interpolation, mean=tuple(pre.mean), std=tuple(pre.std))
    for key in ("test_input_size", "test_crop_pct"):  # timm would prefer them with use_test_size; tlkit has one size
        cfg.pop(key, None)
    backbone.pretrained_cfg = cfg
    if hasattr(backbone, "default_cfg"):
        backbone.default_cfg = cfg  # timm's older alias of the same dict


def _rename_wrapped_backbone_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Multi-layer checkpoints written before the Classifier wrapped the timm model (backbone.model.*, and the
    stage choice as backbone.feature_stages): renamed to today's layout so they still load."""
    old_stages = f"{prefix}backbone.feature_stages"
    if old_stages not in state_dict:
        return
    state_dict[f"{prefix}stage_pooling.feature_stages"] = state_dict.pop(old_stages)
    inner = f"{prefix}backbone.model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[f"{prefix}backbone.{key[len(inner):]}"] = state_dict.pop(key)


__all__ = ["CHECKPOINT_FORMAT", "Classifier", "ClassifierConfig", "create_classifier"]
