"""data.balance: class-balanced sampling or loss weights, and imbalance-aware validation metrics."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.datamodule import (
    balanced_class_weights,
    balanced_sample_weights,
    make_loader,
)
from tlkit.errors import RecipeError
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import fit


def imbalanced_folder(root, *, drop: int = 6):
    """3 classes, 'red' with `drop` fewer training images than the others."""
    write_colour_classes(root, per_class=12)
    for path in sorted((root / "train" / "red").iterdir())[:drop]:
        path.unlink()
    return root


def test_balanced_weights_follow_the_class_counts():
    labels = [0, 0, 0, 1]
    assert balanced_class_weights(labels, 3) == [pytest.approx(4 / 9), pytest.approx(4 / 3), 0.0]
    assert balanced_sample_weights(labels, 2) == [pytest.approx(1 / 3)] * 3 + [1.0]


def test_sampler_draws_classes_about_equally_and_is_seeded():
    labels = [0] * 90 + [1] * 10
    dataset = torch.utils.data.TensorDataset(torch.zeros(100, 1), torch.tensor(labels))
    weights = balanced_sample_weights(labels, 2)

    def draw(seed):
        loader = make_loader(dataset, batch_size=10, shuffle=True, num_workers=0, sample_weights=weights, seed=seed)
        return [int(y) for epoch in range(20) for _, ys in loader for y in ys]

    drawn = draw(0)
    share = Counter(drawn)[1] / len(drawn)
    assert 0.4 < share < 0.6  # plain shuffling would give 0.10
    assert draw(0) == drawn and draw(1) != drawn


@pytest.mark.parametrize("balance", ["sampler", "loss_weights"])
def test_balanced_runs_train_and_log_balanced_accuracy_and_macro_f1(tmp_path, balance):
    root = imbalanced_folder(tmp_path / "data")
    recipe = validate_recipe(tiny_recipe_dict(root, data={"balance": balance}, trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert metrics["balance"] == balance
    assert 0.0 <= metrics["val_balanced_acc"] <= 1.0 and 0.0 <= metrics["val_macro_f1"] <= 1.0
    header = next(csv.reader((tmp_path / "run" / "metrics.csv").open()))
    assert {"val_balanced_acc", "val_macro_f1"} <= set(header)
    module = load_checkpoint(metrics["last_checkpoint"])  # weights_only load: the weights are plain floats
    if balance == "loss_weights":
        weights = module.hparams.class_weights
        assert weights[module.classes.index("red")] > weights[module.classes.index("blue")]
    else:
        assert module.hparams.class_weights is None


def test_loss_weights_with_mixup_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="loss_weights weights hard labels"):
        validate_recipe(tiny_recipe_dict(tmp_path, data={"balance": "loss_weights"}, mixing={"mixup_alpha": 0.2}))
