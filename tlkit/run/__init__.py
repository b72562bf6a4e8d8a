"""The only code that turns a Recipe into objects: fit(recipe) -> metrics dict, the augmentation
preview, and the checkpoint-driven evaluate / predict / export, which need nothing but the checkpoint."""

from tlkit.run.build import (
    build_datamodule,
    build_module,
    default_run_dir,
    resolve_preprocessing,
)
from tlkit.run.checkpoints import (
    evaluate_checkpoint,
    export_checkpoint,
    predict_checkpoint,
)
from tlkit.run.features import choose_training_inputs
from tlkit.run.fit import fit
from tlkit.run.preview import preview_augment

__all__ = [
    "build_datamodule",
    "build_module",
    "choose_training_inputs",
    "default_run_dir",
    "evaluate_checkpoint",
    "export_checkpoint",
    "fit",
    "predict_checkpoint",
    "preview_augment",
    "resolve_preprocessing",
]
