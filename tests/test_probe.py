"""Closed-form probe: the softmax layer written into the head reproduces scikit-learn's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tlkit.model.probe import _as_softmax_layer, fit_logistic_head


@pytest.mark.parametrize("num_classes", [2, 4])
def test_softmax_layer_matches_sklearn_probabilities(num_classes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    y = np.arange(80) % num_classes
    x[:, 0] += y  # learnable
    model = LogisticRegression(max_iter=500).fit(x, y)
    weight, bias = _as_softmax_layer(model, num_classes)
    probs = torch.softmax(torch.from_numpy(x).float() @ weight.T + bias, dim=-1).numpy()
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-5)


def test_regularisation_is_chosen_on_held_out_training_data():
    rng = np.random.default_rng(1)
    labels = torch.arange(60) % 3
    features = torch.from_numpy(rng.normal(size=(60, 8))).float() + labels[:, None].float()
    weight, bias, info = fit_logistic_head(features, labels, num_classes=3, seed=0)
    assert weight.shape == (3, 8) and bias.shape == (3,)
    assert info["C"] in info["holdout_acc"] and info["holdout_acc"][info["C"]] == max(info["holdout_acc"].values())


def test_too_few_images_per_class_falls_back_to_default_c_instead_of_crashing():
    labels = torch.tensor([0, 1, 2, 2])  # classes 0 and 1 have one image each
    weight, _, info = fit_logistic_head(torch.randn(2, 4, 6), labels, num_classes=3, seed=0)
    assert info["C"] == 1.0 and info["holdout_acc"] == {}
    assert weight.shape == (3, 6)
