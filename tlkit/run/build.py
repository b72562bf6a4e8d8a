"""Recipe -> objects: the run directory, the datamodule, the module and their preprocessing."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from tlkit.model.backbones import Preprocessing, create_backbone
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.generate import generate
from tlkit.model.module import TransferModule
from tlkit.recipe import Recipe

log = logging.getLogger(__name__)


def default_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(recipe.output.runs_dir) / recipe.name / stamp
    run_dir, n = base, 1
    while run_dir.exists():  # two runs in the same second never share a folder
        run_dir, n = base.with_name(f"{stamp}-{n}"), n + 1
    return run_dir


def build_datamodule(recipe: Recipe) -> ImageFolderDataModule:
    d = recipe.data
    if not Path(d.root).exists() and d.generate is not None:
        log.info("writing built-in dataset %r to %s", d.generate, d.root)
        generate(d.generate, d.root)
    return ImageFolderDataModule(
        d.root,
        augment=recipe.augment,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        val_fraction=d.val_fraction,
        seed=recipe.seed,
        on_bad_image=d.on_bad_image,
    )


def build_module(recipe: Recipe, classes: list[str], *, class_weights: list[float] | None = None) -> TransferModule:
    b, o, s = recipe.backbone, recipe.optim, recipe.schedule
    return TransferModule(
        b.name,
        classes,
        weights=b.weights,
        strategy=recipe.strategy.kind,
        head=recipe.head.model_dump(),
        optimizer=o.name,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        backbone_lr_mult=getattr(recipe.strategy, "backbone_lr_mult", 0.1),
        l1=o.l1,
        label_smoothing=o.label_smoothing,
        schedule=s.kind,
        warmup_epochs=s.warmup_epochs,
        step_epochs=s.step_epochs,
        gamma=s.gamma,
        drop_path_rate=b.drop_path_rate,
        mixing=recipe.mixing.model_dump(),
        tta=recipe.tta.model_dump(),
        preprocessing=preprocessing_overrides(recipe),
        strategy_options=strategy_options(recipe),
        class_weights=class_weights,
    )


def strategy_options(recipe: Recipe) -> dict:
    """The strategy section as StrategyConfig fields (see tlkit.model.strategies)."""
    s = recipe.strategy.model_dump()
    options = {k: s[k] for k in ("probe_epochs", "unfreeze_every") if k in s}
    if s.get("unfreeze_epochs"):
        options["unfreeze_epochs"] = list(s["unfreeze_epochs"])
    if "decay" in s:
        options["layer_decay"] = s["decay"]
    if "groups" in s:
        options["coarse"] = s["groups"] == "coarse"
    return options


def preprocessing_overrides(recipe: Recipe) -> dict:
    """The recipe's backbone.* preprocessing fields that are set (they win over the pretrained config)."""
    b = recipe.backbone
    values = {"input_size": b.input_size, "crop_pct": b.crop_pct, "interpolation": b.interpolation,
              "mean": b.mean, "std": b.std}
    return {k: v for k, v in values.items() if v is not None}


def resolve_preprocessing(recipe: Recipe) -> Preprocessing:
    """The preprocessing a run of `recipe` will use, without loading any weights."""
    model, pretrained, _ = create_backbone(recipe.backbone.name, "none")
    del model
    return pretrained.replace(**preprocessing_overrides(recipe))



