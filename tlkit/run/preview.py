"""preview_augment: what the model sees after augmentation and batch mixing, as a labelled PNG grid."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from tlkit.recipe import Recipe
from tlkit.run.build import build_datamodule, resolve_preprocessing

log = logging.getLogger(__name__)


def preview_augment(recipe: Recipe, *, n: int = 16, out: str | Path | None = None) -> Path:
    """PNG grid of `n` training samples exactly as the model sees them: after augmentation and batch mixing."""
    import numpy as np

    from tlkit.model.mixing import BatchMixer
    from tlkit.plots import save_image_grid

    if n < 1:
        raise ValueError(f"--n must be at least 1; got {n}.")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    pre = resolve_preprocessing(recipe)
    datamodule = build_datamodule(recipe).replace(preprocessing=pre, cache=False)
    datamodule.setup("fit")
    dataset = datamodule.train_set
    order = torch.randperm(len(dataset))[:n].tolist()
    images, labels = zip(*(dataset[i] for i in order))
    multi = datamodule.multi_label  # targets are multi-hot rows already
    batch, targets = torch.stack(images), (torch.stack(labels) if multi else torch.tensor(labels))
    if recipe.mixing.enabled:
        mixer = BatchMixer(recipe.mixing, datamodule.num_classes, recipe.optim.label_smoothing, multi_label=multi)
        batch, soft = mixer(batch, targets)
    else:
        soft = targets if multi else torch.nn.functional.one_hot(targets, datamodule.num_classes).float()
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    pixels = ((batch * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    title = _label_set_title if multi else _soft_label_title
    titles = [title(row, datamodule.classes) for row in soft]
    out = Path(out) if out is not None else Path(recipe.output.runs_dir) / recipe.name / "augment_preview.png"
    note = f"{recipe.name}: augment={recipe.augment.preset}"
    if recipe.mixing.enabled:
        note += f", mixup={recipe.mixing.mixup_alpha}, cutmix={recipe.mixing.cutmix_alpha}"
    if recipe.optim.label_smoothing:
        note += f", label smoothing={recipe.optim.label_smoothing}"
    return save_image_grid(list(np.asarray(pixels)), titles, out, suptitle=note)


def _soft_label_title(weights, classes: list[str]) -> str:
    """'ants 0.62 / bees 0.38' for a mixed target; just 'ants' for a clean one."""
    ranked = sorted(((float(w), c) for w, c in zip(weights, classes)), reverse=True)
    if ranked[0][0] >= 0.995:
        return ranked[0][1]
    return " / ".join(f"{c} {w:.2f}" for w, c in ranked[:2] if w >= 0.01)


def _label_set_title(weights, classes: list[str]) -> str:
    """'cat + dog' for a clean multi-label target ('(none)' when empty); 'cat 1.00 / dog 0.70' for a mixed one."""
    present = sorted(((float(w), c) for w, c in zip(weights, classes) if w >= 0.01), reverse=True)
    if all(w >= 0.995 for w, _ in present):
        return " + ".join(c for w, c in zip(weights, classes) if w >= 0.995) or "(none)"
    return " / ".join(f"{c} {w:.2f}" for w, c in present)
