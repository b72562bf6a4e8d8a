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


def imbalanced_folder(root, *, drop: int = 6, drop_val: int = 0):
    """3 classes, 'red' with `drop` fewer training images (and `drop_val` fewer val images) than the others."""
    write_colour_classes(root, per_class=12)
    for split, n in (("train", drop), ("val", drop_val)):
        for path in sorted((root / split / "red").iterdir())[:n]:
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
    """The logged val_balanced_acc / val_macro_f1 are sklearn's balanced_accuracy_score / macro f1_score of the
    checkpoint's predictions on the (imbalanced: 4/4/1) val images, in metrics.json and in metrics.csv."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from tlkit.infer.predictor import Predictor

    root = imbalanced_folder(tmp_path / "data", drop_val=3)
    recipe = validate_recipe(tiny_recipe_dict(root, data={"balance": balance}, trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert metrics["balance"] == balance
    files = sorted((root / "val").rglob("*.png"))
    predictor = Predictor.from_checkpoint(metrics["last_checkpoint"], tta="none")  # one epoch: the logged weights
    truth = [predictor.classes.index(f.parent.name) for f in files]
    predicted = predictor.probabilities(files).argmax(axis=1)
    expected = {"val_acc": accuracy_score(truth, predicted),
                "val_balanced_acc": balanced_accuracy_score(truth, predicted),
                "val_macro_f1": f1_score(truth, predicted, average="macro", labels=[0, 1, 2], zero_division=0)}
    assert len({round(v, 6) for v in expected.values()}) == 3, expected  # the three averages are told apart here
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    logged = next(row for row in rows if row.get("val_macro_f1"))
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), (name, metrics[name], expected)
        assert float(logged[name]) == pytest.approx(value, abs=1e-6), name
    module = load_checkpoint(metrics["last_checkpoint"])  # weights_only load: the weights are plain floats
    if balance == "loss_weights":
        weights = module.hparams.class_weights
        assert weights[module.classes.index("red")] > weights[module.classes.index("blue")]
    else:
        assert module.hparams.class_weights is None


def test_loss_weights_with_mixup_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="loss_weights weights hard labels"):
        validate_recipe(tiny_recipe_dict(tmp_path, data={"balance": "loss_weights"}, mixing={"mixup_alpha": 0.2}))
