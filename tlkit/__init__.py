"""tlkit: transfer learning for image classification on pretrained timm backbones.

Public names load lazily (PEP 562 module __getattr__): `import tlkit`, the CLI's --help and recipe validation never
import torch, Lightning or timm; the first use of a name that needs them does.
"""

from __future__ import annotations

import importlib
import os as _os

# A toolkit must not phone home: albumentations checks PyPI for updates at import unless told not to.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "BackboneError": "tlkit.errors",
    "CheckpointError": "tlkit.errors",
    "DataError": "tlkit.errors",
    "DataNotFoundError": "tlkit.errors",
    "ExportError": "tlkit.errors",
    "RecipeError": "tlkit.errors",
    "TTAError": "tlkit.errors",
    "TlkitError": "tlkit.errors",
    "HeadConfig": "tlkit.model.settings",
    "build_head": "tlkit.model.heads",
    "ImageFolderDataModule": "tlkit.data.datamodule",
    "ImageFilesDataModule": "tlkit.data.files",
    "CacheConfig": "tlkit.data.settings",
    "DataConfig": "tlkit.data.settings",
    "scan_folder": "tlkit.data.scan",
    "scan_table": "tlkit.data.table",
    "write_mosaics": "tlkit.data.generate",
    "LayerGroup": "tlkit.model.groups",
    "layer_groups": "tlkit.model.groups",
    "Preprocessing": "tlkit.data.preprocessing",
    "create_backbone": "tlkit.model.backbones",
    "Recipe": "tlkit.recipe",
    "load_recipe": "tlkit.recipe",
    "TTAPolicy": "tlkit.infer.tta",
    "resolve_policy": "tlkit.infer.tta",
    "TrainAugment": "tlkit.data.augment",
    "build_eval_transform": "tlkit.data.augment",
    "eval_preprocess": "tlkit.data.preprocessing",
    "build_train_transform": "tlkit.data.augment",
    "Classifier": "tlkit.model.classifier",
    "ClassifierConfig": "tlkit.model.classifier",
    "create_classifier": "tlkit.model.classifier",
    "load_classifier": "tlkit.model.loading",
    "TransferModule": "tlkit.model.module",
    "WeightEMA": "tlkit.model.ema",
    "load_checkpoint": "tlkit.model.loading",
    "Prediction": "tlkit.infer.predictor",
    "Predictor": "tlkit.infer.predictor",
    "load_exported": "tlkit.infer.export",  # = load_classifier of a model.safetensors
    "evaluate_checkpoint": "tlkit.run",
    "export_checkpoint": "tlkit.run",
    "fit": "tlkit.run",
    "predict_checkpoint": "tlkit.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
