"""tlkit lr-find: Lightning's LR range test on the recipe's trainable part, a PNG, and --write to a recipe copy."""

from __future__ import annotations

import yaml

from tests.conftest import tiny_recipe_dict, write_colour_classes


def test_cli_lr_find_suggests_within_range_and_writes_a_copy(tmp_path, capsys):
    from PIL import Image

    from tlkit.cli import main
    from tlkit.recipe import load_recipe

    root = write_colour_classes(tmp_path / "colours")
    source = tmp_path / "recipes" / "tiny.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"})))
    before = source.read_text()
    png, copy = tmp_path / "lr.png", tmp_path / "tuned" / "tiny_lr.yaml"
    code = main(["lr-find", str(source), "--steps", "30", "--min-lr", "1e-4", "--max-lr", "10", "--out", str(png),
                 "--write", str(copy)])
    assert code == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out
    assert Image.open(png).size[0] > 500
    assert source.read_text() == before  # the user's recipe is untouched
    written = load_recipe(copy)
    assert 1e-4 <= written.optim.lr <= 10
    assert written.optim.lr != 0.05
    assert written.data.root == str(root)
    assert f"{written.optim.lr:.3g}" in out


def test_lr_find_refuses_to_overwrite_the_source(tmp_path):
    import pytest

    from tlkit.errors import TlkitError
    from tlkit.run.tuning import write_recipe_copy

    source = tmp_path / "r.yaml"
    source.write_text("version: 1\n")
    with pytest.raises(TlkitError):
        write_recipe_copy(source, ["optim.lr=0.1"], source, data_root=str(tmp_path))


def test_lr_find_rejects_an_empty_range(tmp_path):
    import pytest

    from tlkit.errors import TlkitError
    from tlkit.recipe import validate_recipe
    from tlkit.run.tuning import lr_find

    recipe = validate_recipe(tiny_recipe_dict(write_colour_classes(tmp_path / "c")))
    with pytest.raises(TlkitError):
        lr_find(recipe, min_lr=1.0, max_lr=0.1)
