"""The augmentation preview: a labelled PNG grid of what the model sees."""

from __future__ import annotations

import torch
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image

from tlkit.cli.main import main
from tlkit.recipe import validate_recipe
from tlkit.run import preview_augment
from tlkit.run.preview import _soft_label_title


def test_preview_writes_a_png_grid(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = validate_recipe(tiny_recipe_dict(root, augment="heavy", mixing={"mixup_alpha": 0.4}))
    out = preview_augment(recipe, n=6, out=tmp_path / "grid.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200


def test_mixed_targets_are_titled_with_both_classes_and_weights():
    classes = ["ants", "bees"]
    assert _soft_label_title(torch.tensor([0.6, 0.4]), classes) == "ants 0.60 / bees 0.40"
    assert _soft_label_title(torch.tensor([0.0, 1.0]), classes) == "bees"


def test_preview_command_reports_where_it_wrote(tmp_path, capsys):
    import yaml

    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(root)))
    assert main(["preview", "--recipe", str(recipe), "--n", "4", "--out", str(tmp_path / "p.png")]) == 0
    assert "p.png" in capsys.readouterr().out and (tmp_path / "p.png").is_file()
