"""Classifier heads: shapes, init matched to activation, zero final layer, spec round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlkit.config import settings_from
from tlkit.errors import RecipeError
from tlkit.model.heads import build_head
from tlkit.model.settings import HeadConfig

WIDTH = 512  # 262k weights: the empirical std is within ~0.3% of the true one


def linears(head: nn.Sequential) -> list[nn.Linear]:
    return [m for m in head if isinstance(m, nn.Linear)]


def test_linear_head_is_a_single_linear_layer():
    head = build_head(16, 3)
    assert [tuple(m.weight.shape) for m in linears(head)] == [(3, 16)]
    assert head(torch.randn(5, 16)).shape == (5, 3)


def test_mlp_head_has_the_hidden_widths_in_order():
    head = build_head(16, 3, HeadConfig(hidden=(32, 8), activation="gelu"))
    assert [tuple(m.weight.shape) for m in linears(head)] == [(32, 16), (8, 32), (3, 8)]
    assert sum(isinstance(m, nn.GELU) for m in head) == 2
    assert head(torch.randn(5, 16)).shape == (5, 3)


def test_mlp_head_adds_dropout_after_each_activation():
    head = build_head(16, 3, HeadConfig(hidden=(32, 8), dropout=0.3))
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_zeros_init_is_refused_for_hidden_layers():
    with pytest.raises(RecipeError, match=r"neuron would get the same gradient"):
        build_head(16, 3, settings_from(HeadConfig, {"hidden": [8], "init": "zeros"}))


def test_zeros_init_is_allowed_for_a_linear_head():
    head = build_head(16, 3, HeadConfig(init="zeros"))  # no hidden layers: nothing to refuse
    assert head(torch.randn(2, 16)).shape == (2, 3)


@pytest.mark.parametrize(
    ("activation", "expected_std"),
    [
        ("relu", math.sqrt(2 / WIDTH)),  # he_normal
        ("elu", math.sqrt(2 / WIDTH)),
        ("gelu", math.sqrt(2 / WIDTH)),
        ("leaky_relu", math.sqrt(2 / (1 + 0.01**2) / WIDTH)),
        ("selu", math.sqrt(1 / WIDTH)),  # lecun_normal
        ("tanh", 5 / 3 * math.sqrt(2 / (WIDTH + WIDTH))),  # xavier_normal with tanh gain
    ],
)
def test_default_hidden_init_matches_the_activation(activation, expected_std):
    torch.manual_seed(0)
    weight = linears(build_head(WIDTH, 3, HeadConfig(hidden=(WIDTH,), activation=activation)))[0].weight
    assert weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(weight.mean().item()) < 0.01 * expected_std


def test_explicit_init_overrides_the_activation_default():
    torch.manual_seed(0)
    weight = linears(build_head(WIDTH, 3, HeadConfig(hidden=(WIDTH,), activation="relu", init="lecun_normal")))[0].weight
    assert weight.std().item() == pytest.approx(math.sqrt(1 / WIDTH), rel=0.02)


def test_hidden_biases_start_at_zero():
    head = build_head(16, 3, HeadConfig(hidden=(8,)))
    assert torch.count_nonzero(linears(head)[0].bias) == 0


def test_final_layer_defaults_to_zeros_so_logits_are_equal():
    head = build_head(16, 5, HeadConfig(hidden=(8,)))
    logits = head(torch.randn(4, 16))
    assert torch.equal(logits, torch.zeros(4, 5))


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_initial_cross_entropy_is_ln_num_classes(num_classes):
    torch.manual_seed(0)
    head = build_head(16, num_classes, HeadConfig(hidden=(8,)))
    loss = F.cross_entropy(head(torch.randn(7, 16)), torch.randint(0, num_classes, (7,)))
    assert loss.item() == pytest.approx(math.log(num_classes), rel=1e-6)


def test_non_zero_final_init_gives_unequal_logits():
    torch.manual_seed(0)
    logits = build_head(16, 5, HeadConfig(final_init="normal"))(torch.randn(4, 16))
    assert logits.std() > 0


def test_unknown_activation_gets_did_you_mean():
    with pytest.raises(RecipeError, match=r"HeadConfig.activation: got 'rellu'.*Did you mean 'relu'"):
        settings_from(HeadConfig, {"hidden": [8], "activation": "rellu"})


def test_unknown_init_gets_did_you_mean():
    with pytest.raises(RecipeError, match=r"HeadConfig.init: got 'he_normall'.*Did you mean 'he_normal'"):
        settings_from(HeadConfig, {"hidden": [8], "init": "he_normall"})


def test_head_spec_round_trips_through_a_json_dict():
    spec = HeadConfig(hidden=(64, 32), activation="tanh", dropout=0.25, init="orthogonal", final_init="normal")
    assert HeadConfig.model_validate(json.loads(json.dumps(spec.model_dump()))) == spec


def test_head_spec_from_an_empty_dict_is_the_default():
    assert HeadConfig.model_validate({}) == HeadConfig()
