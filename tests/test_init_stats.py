"""tlkit init-stats: the 000_ seed's observation, Xavier + ReLU shrinks activations through depth, He keeps them."""

from __future__ import annotations

import pytest

from tlkit.errors import RecipeError
from tlkit.tune.init_stats import format_table, init_statistics


def test_xavier_relu_shrinks_and_he_keeps_activation_std_at_depth_10():
    xavier = init_statistics("xavier_normal", "relu", depth=10, width=256, batch=256)
    he = init_statistics("he_normal", "relu", depth=10, width=256, batch=256)
    # Xavier halves ReLU's variance per layer: std falls ~sqrt(2) per layer, ~2^-4.5 over 9 more layers
    assert xavier[-1].act_std < xavier[0].act_std / 10
    # He keeps it within a factor ~2 of the first layer
    assert 0.5 < he[-1].act_std / he[0].act_std < 2.0
    assert he[-1].act_std > 10 * xavier[-1].act_std
    assert all(s.grad_std > 0 for s in xavier + he)


def test_xavier_with_activation_gain_matches_he_for_relu():
    corrected = init_statistics("xavier_normal", "relu", depth=10, width=256, batch=256, xavier_gain="activation")
    assert 0.5 < corrected[-1].act_std / corrected[0].act_std < 2.0


def test_xavier_keeps_tanh_from_exploding():
    tanh = init_statistics("xavier_normal", "tanh", depth=10, width=256, batch=256)
    assert all(0.1 < s.act_std < 1.0 for s in tanh)


def test_table_has_a_row_per_layer():
    table = format_table({"he_normal": init_statistics("he_normal", depth=3, width=16, batch=32)})
    assert len(table.splitlines()) == 2 + 3


@pytest.mark.parametrize("init,activation", [("hee_normal", "relu"), ("he_normal", "rleu")])
def test_unknown_names_are_recipe_errors(init, activation):
    with pytest.raises(RecipeError):
        init_statistics(init, activation, depth=2, width=8, batch=4)


def test_cli_init_stats_writes_table_and_png(tmp_path, capsys):
    from PIL import Image

    from tlkit.cli.main import main

    out = tmp_path / "init.png"
    assert main(["init-stats", "--depth", "4", "--width", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "xavier_normal act std" in text and "he_normal act std" in text
    assert Image.open(out).size[0] > 500
