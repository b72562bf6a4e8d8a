"""Training on the messy zoo: bad files are skipped and listed; data.on_bad_image decides mid-run failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_recipe_dict, write_colour_classes
from zoo import write_zoo

from tlkit.data.datamodule import scan_folder
from tlkit.errors import DataError
from tlkit.recipe import validate_recipe
from tlkit.run import fit

SKIPPED_AT_SCAN = ("empty.png", "notes.txt", "corrupt.jpg", "bomb.png", "link_out.png")


def _zoo_recipe(root: Path, kind: str = "finetune", **data):
    # finetune decodes images every epoch; linear_probe decodes once into cached features (both paths must skip)
    return validate_recipe(tiny_recipe_dict(
        root, strategy={"kind": kind}, trainer={"epochs": 1}, data={"batch_size": 4, **data}, cache={"disk": False}))


def test_scan_skips_and_lists_the_zoo_bad_files(tmp_path):
    root = write_zoo(tmp_path / "zoo", val_only_class=False)
    scan = scan_folder(root)
    skipped = {Path(p).name: why for p, why in scan.skipped}
    assert set(SKIPPED_AT_SCAN) <= set(skipped)
    assert "not followed" in skipped["link_out.png"] and "decompression bomb" in skipped["bomb.png"]
    used = {Path(p).name for p, _ in scan.train + scan.val}
    assert ".DS_Store" not in used and "link_out.png" not in used
    assert {"grey_L.png", "cmyk.jpg", "deep_I16.png", "palette_P.png", "rotated.jpg", "tiny.png"} <= used


@pytest.mark.parametrize("kind", ["finetune", "linear_probe"])
def test_training_on_the_zoo_skips_and_lists_bad_files(tmp_path, kind):
    root = write_zoo(tmp_path / "zoo", val_only_class=False)
    metrics = fit(_zoo_recipe(root, kind), run_dir=tmp_path / "run")
    assert metrics["epochs"] == 1
    listed = (tmp_path / "run" / "skipped.txt").read_text()
    for name in SKIPPED_AT_SCAN:
        assert name in listed
    # the truncated JPEG passes the header scan and fails to decode mid-run: dropped from its batch and listed
    assert "truncated.jpg" in (tmp_path / "run" / "skipped_mid_run.txt").read_text()
    # the doctor's cheap pass ran first: its warnings are in metrics.json
    assert any("leakage" in line for line in metrics["data_warnings"])


@pytest.mark.parametrize("kind", ["finetune", "linear_probe"])
def test_on_bad_image_error_stops_naming_the_file(tmp_path, kind):
    root = write_zoo(tmp_path / "zoo", val_only_class=False)
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        fit(_zoo_recipe(root, kind, on_bad_image="error"), run_dir=tmp_path / "run")


def test_file_deleted_after_the_scan_is_skipped(tmp_path, monkeypatch):
    root = write_colour_classes(tmp_path / "colours")
    recipe = _zoo_recipe(root)
    victim = root / "train" / "red" / "red_00.png"

    import tlkit.data.datamodule as data
    original = data.ImageFolderDataModule.setup

    def setup_then_delete(self, stage=None):  # the file disappears between the scan and the first epoch
        original(self, stage)
        victim.unlink(missing_ok=True)

    monkeypatch.setattr(data.ImageFolderDataModule, "setup", setup_then_delete)
    fit(recipe, run_dir=tmp_path / "run")
    assert "red_00.png" in (tmp_path / "run" / "skipped_mid_run.txt").read_text()
