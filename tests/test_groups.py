"""Layer groups: timm's group_matcher, stem first, every parameter once; a fallback for models without a matcher."""

from __future__ import annotations

import logging

import pytest
import timm
from torch import nn

from tlkit.cli.main import main
from tlkit.model.groups import group_name, layer_groups


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet", "test_vit"])
@pytest.mark.parametrize("coarse", [True, False])
def test_groups_cover_every_parameter_once_in_forward_order(arch, coarse):
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    groups = layer_groups(model, coarse=coarse)
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert [g.index for g in groups] == list(range(len(groups)))
    order = [n for n, _ in model.named_parameters()]
    first = [order.index(g.param_names[0]) for g in groups]
    assert first == sorted(first), "groups are not in stem-to-top order"
    assert len(groups) >= 3


def test_fine_groups_split_stages_into_blocks():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    coarse, fine = layer_groups(model, coarse=True), layer_groups(model, coarse=False)
    assert [g.name for g in coarse] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]
    assert len(fine) == 1 + 2 * 4 and fine[1].name == "layer1.0"


def test_model_without_group_matcher_falls_back_to_child_modules(caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3))
    with caplog.at_level(logging.WARNING):
        groups = layer_groups(model)
    assert [g.param_names for g in groups] == [("0.weight", "0.bias"), ("1.weight", "1.bias"), ("3.weight", "3.bias")]
    assert "group_matcher" in caplog.text


def test_group_name_uses_common_prefix_per_top_module():
    assert group_name(["blocks.6.0.conv.weight", "blocks.6.0.bn.bias", "conv_head.weight", "bn2.weight"]) == (
        "blocks.6.0+conv_head+bn2")


def test_cli_groups_prints_stem_to_head(capsys):
    assert main(["groups", "test_resnet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[3:]]
    assert rows[0][:2] == ["0", "conv1+bn1"] and rows[-1][1] == "head"
    assert [int(r[0]) for r in rows] == list(range(len(rows)))


def test_cli_groups_unknown_backbone_is_a_one_line_error(capsys):
    assert main(["groups", "resnt18"]) == 1
    assert "Did you mean 'resnet18'" in capsys.readouterr().err
