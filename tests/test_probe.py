"""Closed-form probe: warm-started L-BFGS on standardised features, folded back into a head on raw features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from tlkit.model.probe import C_GRID, _solve, _standardised_rows, fit_logistic_head
from tlkit.model.tasks import SingleLabel


def _blobs(n: int, d: int, k: int, seed: int, shift: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative, correlated features (like pooled ReLU activations) whose classes overlap: accuracy < 100%."""
    fixed = np.random.default_rng(0)
    means, proj = fixed.normal(size=(k, 16)), fixed.normal(size=(16, d)) / 4
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.maximum((means[y] * shift + rng.normal(size=(n, 16))) @ proj + 0.3 * rng.normal(size=(n, d)), 0)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def _sklearn_probe_accuracy(x, y, test_x, test_y) -> float:
    """The previous protocol: sklearn LogisticRegression on raw features per C, best on 20% held out, refit."""
    fit_idx, held_idx = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y.numpy(), random_state=0)
    xd, yn = x.double().numpy(), y.numpy()
    scores = {c: LogisticRegression(C=c, max_iter=2000).fit(xd[fit_idx], yn[fit_idx]).score(xd[held_idx], yn[held_idx])
              for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -abs(np.log10(c))))
    return LogisticRegression(C=best, max_iter=2000).fit(xd, yn).score(test_x.double().numpy(), test_y.numpy())


def test_accuracy_matches_the_sklearn_probe_within_a_point():
    x, y = _blobs(600, 64, 5, seed=1, shift=0.6)
    test_x, test_y = _blobs(1000, 64, 5, seed=2, shift=0.6)
    weight, bias, _ = fit_logistic_head(x, y, num_classes=5, seed=0)
    ours = float(((test_x @ weight.T + bias).argmax(1) == test_y).float().mean())
    theirs = _sklearn_probe_accuracy(x, y, test_x, test_y)
    assert 0.6 < theirs < 0.99  # a problem where the choice of C matters, not a trivially separable one
    assert ours >= theirs - 0.01, (ours, theirs)


@pytest.mark.parametrize("c", [1e-2, 1e2])
def test_each_solve_reaches_sklearns_optimum_on_standardised_features(c):
    x, y = _blobs(300, 24, 4, seed=3)
    xs, ys, _ = _standardised_rows(x[None], y, torch.arange(len(y)))
    weight, bias = _solve(xs, ys, c, 4, SingleLabel(), None)
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(xs.double().numpy(), ys.numpy())
    ours = torch.softmax(xs @ weight.T + bias, dim=-1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(xs.double().numpy()), atol=2e-3)


def test_the_head_takes_raw_features_with_the_standardisation_folded_in():
    x, y = _blobs(200, 16, 3, seed=4, shift=1.5)
    x[:, 0] = 5.0  # a constant feature must not blow up the scaling
    x = x * torch.linspace(0.01, 100, 16)  # wildly different feature scales
    weight, bias, _ = fit_logistic_head(x, y, num_classes=3, seed=0)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    assert float(((x @ weight.T + bias).argmax(1) == y).float().mean()) > 0.8


def test_regularisation_is_chosen_on_held_out_training_data():
    rng = np.random.default_rng(1)
    labels = torch.arange(60) % 3
    features = torch.from_numpy(rng.normal(size=(60, 8))).float() + labels[:, None].float()
    weight, bias, info = fit_logistic_head(features, labels, num_classes=3, seed=0)
    assert weight.shape == (3, 8) and bias.shape == (3,)
    assert info["C"] in info["holdout_acc"] and info["holdout_acc"][info["C"]] == max(info["holdout_acc"].values())


def test_a_fine_tune_loss_chooses_c_by_its_lowest_held_out_value():
    """LP-FT's probe: C is the one whose head gives the lowest held-out fine-tune loss, whatever the accuracy."""
    features, labels = _blobs(200, 12, 3, seed=2)

    def flattest(logits, targets):  # lowest for the most regularised head
        return logits.abs().mean()

    def sharpest(logits, targets):  # lowest for the least regularised head
        return -logits.abs().mean()

    _, _, flat = fit_logistic_head(features, labels, num_classes=3, seed=0, fine_tune_loss=flattest)
    _, _, sharp = fit_logistic_head(features, labels, num_classes=3, seed=0, fine_tune_loss=sharpest)
    assert flat["C"] == min(C_GRID) and sharp["C"] == max(C_GRID)
    assert flat["holdout_acc"] == sharp["holdout_acc"]  # the same solves, scored the same; only the choice differs

    smoothed = fit_logistic_head(features, labels, num_classes=3, seed=0,
                                 fine_tune_loss=lambda z, y: torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1))[2]
    assert smoothed["C"] == min(smoothed["holdout_fine_tune_loss"], key=smoothed["holdout_fine_tune_loss"].get)


def test_binary_two_class_problem():
    x, y = _blobs(200, 16, 2, seed=5, shift=1.0)
    weight, bias, _ = fit_logistic_head(torch.stack([x, x + 0.01]), y, num_classes=2, seed=0)  # two views
    assert weight.shape == (2, 16) and bias.shape == (2,)
    assert float(((x @ weight.T + bias).argmax(1) == y).float().mean()) > 0.9


def test_multi_label_recovers_planted_labels():
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(800, 20))).float()
    planted = torch.from_numpy(rng.normal(size=(4, 20))).float()
    labels = ((x @ planted.T + torch.tensor([0.0, 1.0, -1.0, 0.5])) > 0).float()  # classes of different frequency
    labels[:, 3] = (x @ planted[3] > 2.0 * planted[3].norm()).float()  # a rare class: about 2% positives
    weight, bias, info = fit_logistic_head(x[:600], labels[:600], num_classes=4, seed=0, task="multi_label")
    assert weight.shape == (4, 20) and info["C"] in info["holdout_map"]
    predicted = (x[600:] @ weight.T + bias > 0).float()
    agreement = (predicted == labels[600:]).float().mean(0)
    assert bool((agreement > 0.93).all()), agreement
    assert info["holdout_map"][info["C"]] > 0.9


def test_multi_label_images_with_no_class_are_allowed():
    x = torch.randn(50, 6)
    labels = torch.zeros(50, 3)
    labels[::2, 0] = 1.0
    weight, bias, _ = fit_logistic_head(x, labels, num_classes=3, seed=0, task="multi_label")
    assert torch.isfinite(weight).all() and (torch.sigmoid(x @ weight.T + bias)[:, 1:] < 0.5).all()


def test_too_few_images_per_class_falls_back_to_default_c_instead_of_crashing():
    labels = torch.tensor([0, 1, 2, 2])  # classes 0 and 1 have one image each
    weight, _, info = fit_logistic_head(torch.randn(2, 4, 6), labels, num_classes=3, seed=0)
    assert info["C"] == 1.0 and info["holdout_acc"] == {}
    assert weight.shape == (3, 6)


def test_a_class_without_training_images_gets_a_row_that_never_wins():
    x, y = _blobs(90, 8, 3, seed=7)
    weight, bias, _ = fit_logistic_head(x, y, num_classes=4, seed=0)
    assert weight.shape == (4, 8) and int((x @ weight.T + bias).argmax(1).max()) <= 2


def test_holdout_scores_are_the_choice_of_c_that_fit_logistic_head_makes():
    from tlkit.model.probe import holdout_scores

    x, y = _blobs(200, 12, 4, seed=3)
    held = holdout_scores(x, y, num_classes=4, seed=0)
    _, _, info = fit_logistic_head(x, y, num_classes=4, seed=0)
    assert (held["fit_images"], held["held_out_images"], held["metric"]) == (160, 40, "accuracy")
    assert held["C"] == info["C"] and held["scores"] == info["holdout_acc"]
    assert held["score"] == max(held["scores"].values()) < 1.0  # overlapping classes: short of perfect


def test_holdout_scores_say_none_when_there_is_too_little_to_hold_out():
    from tlkit.model.probe import holdout_scores

    held = holdout_scores(torch.randn(4, 6), torch.tensor([0, 1, 2, 2]), num_classes=3, seed=0)
    assert held["score"] is None and held["C"] is None and held["held_out_images"] == 0
