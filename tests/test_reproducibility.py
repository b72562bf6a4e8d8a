"""Same seed, same images, another folder: the same model. Nothing random may depend on where the data folder is."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.scan import FolderScan, relative_name, scan_folder
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import fit
from tlkit.run.provenance import data_fingerprint, differences

LONG_AGO = 1_000_000_000  # 2001: a copy's timestamps, far from the original's


def copy_elsewhere(source: Path, target: Path) -> Path:
    """A copy as another machine would receive it: the same bytes, new timestamps, another absolute path."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for path in target.rglob("*"):
        os.utime(path, (LONG_AGO, LONG_AGO))
    return target


@pytest.fixture
def two_copies(tmp_path: Path) -> tuple[Path, Path]:
    """The same flat class folders (val carved from them) in two places whose names and depths differ."""
    original = write_colour_classes(tmp_path / "original", per_class=8, split=False)
    return (copy_elsewhere(original, tmp_path / "here" / "photos"),
            copy_elsewhere(original, tmp_path / "there" / "deeper" / "pics"))


def train_from(root: Path, run_dir: Path, cache_dir: Path, **sections) -> dict:
    sections = {"backbone": {"name": "test_resnet"}, "optim": {"name": "adamw", "lr": 0.05}, **sections}
    recipe = tiny_recipe_dict(root, **{**sections, "cache": {"dir": str(cache_dir), **sections.get("cache", {})}})
    return fit(validate_recipe(recipe), run_dir=run_dir)


def assert_same_run(a: dict, b: dict) -> None:
    assert (Path(a["run_dir"]) / "metrics.csv").read_text() == (Path(b["run_dir"]) / "metrics.csv").read_text()
    weights_a = load_checkpoint(a["last_checkpoint"]).state_dict()
    weights_b = load_checkpoint(b["last_checkpoint"]).state_dict()
    assert weights_a.keys() == weights_b.keys()
    different = [name for name in weights_a if not torch.equal(weights_a[name], weights_b[name])]
    assert different == []


def test_a_probe_on_augmented_cached_views_trains_the_same_head_from_either_copy(two_copies, tmp_path):
    here, there = two_copies
    cache = tmp_path / "cache"  # one user cache: the second copy's rows are extracted, not read from the first's
    sections = {"augment": "light", "cache": {"views": 2}}
    a = train_from(here, tmp_path / "a", cache, **sections)
    b = train_from(there, tmp_path / "b", cache, **sections)
    assert a["feature_cache"]["views"] == 2
    assert b["feature_cache"]["extracted"] == a["feature_cache"]["extracted"] > 0  # recomputed for the moved files
    assert_same_run(a, b)


def test_a_finetune_trains_the_same_weights_from_either_copy(two_copies, tmp_path):
    here, there = two_copies
    sections = {"strategy": {"kind": "finetune"}, "augment": "light", "trainer": {"epochs": 1}}
    assert_same_run(train_from(here, tmp_path / "a", tmp_path / "cache", **sections),
                    train_from(there, tmp_path / "b", tmp_path / "cache", **sections))


def test_a_carved_split_holds_the_same_files_in_either_copy(two_copies):
    def relative(root: Path, samples: list) -> list:
        return [(os.path.relpath(path, root), label) for path, label in samples]

    here, there = (scan_folder(root, val_fraction=0.3, test_fraction=0.2, seed=7) for root in two_copies)
    for split in ("train", "val", "test"):
        assert relative(two_copies[0], getattr(here, split)) == relative(two_copies[1], getattr(there, split))


def test_a_scan_built_by_hand_names_files_relative_to_the_folder_its_samples_share(tmp_path):
    def by_hand(root: Path) -> FolderScan:
        return FolderScan(classes=["a", "b"], layout="single", train=[(str(root / "a" / "1.png"), 0)],
                          val=[(str(root / "b" / "sub" / "2.png"), 1)])

    for root in (tmp_path / "here", tmp_path / "there" / "deeper"):
        scan = by_hand(root)
        assert [relative_name(p, scan.data_root()) for p, _ in scan.train + scan.val] == ["a/1.png", "b/sub/2.png"]


def fingerprint(root: Path) -> dict:
    return data_fingerprint(root, sorted(str(p) for p in root.rglob("*.png")))


def test_the_data_fingerprint_is_the_same_for_a_copy_with_new_timestamps(tmp_path):
    original = write_colour_classes(tmp_path / "original", per_class=3)
    copy = copy_elsewhere(original, tmp_path / "elsewhere" / "colours")
    assert differences({"data": fingerprint(original)}, {"data": fingerprint(copy)}) == []


def test_the_data_fingerprint_sees_an_edit_that_keeps_size_and_timestamps(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=3)
    before = fingerprint(root)
    victim = next(root.rglob("*.png"))
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF  # one byte flipped inside the image: same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changes = differences({"data": before}, {"data": fingerprint(root)})
    assert len(changes) == 1 and changes[0].startswith("data:")


def test_a_run_recorded_before_content_hashes_is_not_reported_as_changed(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=3)
    now = fingerprint(root)
    old = {"files": now["files"], "sha256": now["sha256"]}  # what provenance.json held before the content hash
    assert differences({"data": old}, {"data": now}) == []


def test_reproduce_says_the_data_is_unchanged_after_the_folder_moved(tmp_path, capsys):
    from tlkit.cli.main import main

    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(json.dumps(tiny_recipe_dict(root, trainer={"epochs": 1})))
    assert main(["train", "--recipe", str(recipe_file), "--run-dir", str(tmp_path / "first")]) == 0
    moved = copy_elsewhere(root, tmp_path / "another" / "machine" / "colours")
    shutil.rmtree(root)
    capsys.readouterr()
    assert main(["train", "--reproduce", str(tmp_path / "first"), "--set", f"data.root={moved}",
                 "--run-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"reproduced {tmp_path / 'first'}" in out
    assert "data:" not in out and "labels:" not in out
    assert "val accuracy" in out  # the comparison ran
