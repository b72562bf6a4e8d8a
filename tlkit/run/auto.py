"""strategy: auto -> linear_probe or finetune, decided from the scanned dataset size (the transfer rule)."""

from __future__ import annotations

import logging

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.recipe import Finetune, LinearProbe, Recipe

log = logging.getLogger(__name__)


def decide_strategy(train_images: int, num_classes: int, threshold: int) -> tuple[str, str]:
    """(kind, reason): a linear probe below `threshold` mean training images per class, else a fine-tune."""
    per_class = train_images / max(1, num_classes)
    if per_class < threshold:
        return "linear_probe", (f"{per_class:.0f} training images per class < {threshold}: small data, so freeze the "
                                "backbone and train a linear classifier on its features")
    return "finetune", (f"{per_class:.0f} training images per class >= {threshold}: enough data to fine-tune "
                        "everything, backbone at a lower LR")


def resolve_auto_strategy(recipe: Recipe, datamodule: ImageFolderDataModule) -> tuple[Recipe, dict | None]:
    """The recipe with `strategy: auto` replaced by the decided strategy, and the decision (None when not auto)."""
    if recipe.strategy.kind != "auto":
        return recipe, None
    auto = recipe.strategy
    kind, reason = decide_strategy(len(datamodule.scan.train), datamodule.num_classes, auto.images_per_class)
    strategy = LinearProbe() if kind == "linear_probe" else Finetune(backbone_lr_mult=auto.backbone_lr_mult)
    decision = {"kind": kind, "reason": reason, "images_per_class_threshold": auto.images_per_class,
                "train_images": len(datamodule.scan.train), "num_classes": datamodule.num_classes}
    if kind == "finetune":
        decision["backbone_lr_mult"] = auto.backbone_lr_mult
    log.info("strategy auto -> %s: %s", kind, reason)
    return recipe.model_copy(update={"strategy": strategy}), decision
