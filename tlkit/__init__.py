"""tlkit: transfer learning for image classification on pretrained timm backbones."""

import os as _os

# A toolkit must not phone home: albumentations checks PyPI for updates at import unless told not to.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from tlkit.augment import TrainAugment, build_eval_transform, build_train_transform  # noqa: E402
from tlkit.backbones import Preprocessing, create_backbone  # noqa: E402
from tlkit.checkpoint import load_checkpoint  # noqa: E402
from tlkit.data import ImageFolderDataModule, scan_folder  # noqa: E402
from tlkit.errors import (  # noqa: E402
    BackboneError,
    CheckpointError,
    DataError,
    DataNotFoundError,
    ExportError,
    RecipeError,
    TlkitError,
    TTAError,
)
from tlkit.ema import WeightEMA  # noqa: E402
from tlkit.export import load_exported  # noqa: E402
from tlkit.groups import LayerGroup, layer_groups  # noqa: E402
from tlkit.heads import HeadSpec, build_head  # noqa: E402
from tlkit.module import TransferModule  # noqa: E402
from tlkit.recipe import Recipe, load_recipe  # noqa: E402
from tlkit.run import evaluate_checkpoint, export_checkpoint, fit, predict_checkpoint  # noqa: E402
from tlkit.tta import TTAPolicy, resolve_policy  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackboneError",
    "CheckpointError",
    "DataError",
    "DataNotFoundError",
    "ExportError",
    "HeadSpec",
    "ImageFolderDataModule",
    "LayerGroup",
    "Preprocessing",
    "Recipe",
    "RecipeError",
    "TTAError",
    "TTAPolicy",
    "TlkitError",
    "TrainAugment",
    "TransferModule",
    "WeightEMA",
    "build_eval_transform",
    "build_head",
    "build_train_transform",
    "create_backbone",
    "evaluate_checkpoint",
    "export_checkpoint",
    "fit",
    "layer_groups",
    "load_checkpoint",
    "load_exported",
    "load_recipe",
    "predict_checkpoint",
    "resolve_policy",
    "scan_folder",
]
