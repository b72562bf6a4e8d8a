"""Recipe -> objects: the run directory, the datamodule, the module and their preprocessing."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.generate import generate
from tlkit.model.backbones import Preprocessing, create_backbone
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
    if d.source == "litdata":  # a stream written by tlkit data optimize (LitData is an optional install)
        from tlkit.data.stream import StreamDataModule

        return StreamDataModule(d.root, augment=recipe.augment, batch_size=d.batch_size,
                                eval_batch_size=d.eval_batch_size, num_workers=d.num_workers, seed=recipe.seed,
                                cache=recipe.cache, balance=d.balance, on_bad_image=d.on_bad_image)
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
        test_fraction=d.test_fraction,
        seed=recipe.seed,
        on_bad_image=d.on_bad_image,
        balance=d.balance,
        cache=recipe.cache,
        source=d.source,
        csv=d.csv,
        multi_label=d.multi_label,
        label_delimiter=d.label_delimiter,
        columns=d.columns,
        exclude=d.exclude,
        relabel=d.relabel,
    )


def build_module(recipe: Recipe, classes: list[str], *, class_weights: list[float] | None = None,
                 multi_label: bool = False) -> TransferModule:
    """The recipe's sections are TransferModule's settings, passed as they are."""
    return TransferModule(
        recipe.backbone,
        classes,
        strategy=recipe.strategy,
        head=recipe.head,
        optim=recipe.optim,
        schedule=recipe.schedule,
        mixing=recipe.mixing,
        tta=recipe.tta.model_dump(),
        class_weights=class_weights,
        multi_label=multi_label,
    )


def build_module_for(recipe: Recipe, datamodule: ImageFolderDataModule) -> TransferModule:
    """The recipe's module for `datamodule`'s classes and kind of labels, with its balanced loss weights when
    data.balance is loss_weights (multi-label: each class's negatives / positives ratio)."""
    weights = datamodule.class_weights if recipe.data.balance == "loss_weights" else None
    return build_module(recipe, datamodule.classes, class_weights=weights,
                        multi_label=datamodule.multi_label)


def resolve_preprocessing(recipe: Recipe) -> Preprocessing:
    """The preprocessing a run of `recipe` will use, without loading any weights."""
    model, pretrained, _ = create_backbone(recipe.backbone.name, "none")
    del model
    return pretrained.replace(**recipe.backbone.preprocessing_overrides())



