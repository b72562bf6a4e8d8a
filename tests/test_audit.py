"""Label audit and acting on it: data.columns, data.exclude, data.relabel; tlkit audit's findings (label issues,
near-duplicates across splits, outliers) on generated colour folders with planted problems."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.table import scan_data
from tlkit.errors import DataError


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _kaggle_table(root: Path) -> Path:
    """A table as Kaggle ships them: its own column names (image_name, tags), images beside it."""
    write_colour_classes(root, split=False, per_class=6)
    rows = [["image_name", "tags"]] + [[p.relative_to(root).as_posix(), p.parent.name]
                                       for p in sorted(root.rglob("*.png"))]
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_columns_load_a_table_with_its_own_column_names(tmp_path):
    root = _kaggle_table(tmp_path / "kaggle")
    scan = scan_data(root, source="csv", csv="train.csv", columns={"path": "image_name", "label": "tags"})
    assert scan.classes == ["blue", "green", "red"] and len(scan.train) + len(scan.val) == 18
    assert all(Path(p).parent.name == scan.classes[y] for p, y in scan.train)


def test_columns_naming_a_missing_column_says_which_ones_exist(tmp_path):
    root = _kaggle_table(tmp_path / "kaggle")
    with pytest.raises(DataError, match="'image_nam'.*Did you mean 'image_name'"):
        scan_data(root, source="csv", csv="train.csv", columns={"path": "image_nam", "label": "tags"})


def test_exclude_leaves_listed_images_out_of_training_only(colour_folder):
    plain = scan_data(colour_folder)
    listed = [plain.train[0][0], plain.val[0][0]]
    paths_file = colour_folder.parent / "exclude.txt"
    paths_file.write_text("".join(Path(p).relative_to(colour_folder).as_posix() + "\n" for p in listed))
    scan = scan_data(colour_folder, exclude=str(paths_file))
    assert [s for s in plain.train if s[0] != listed[0]] == scan.train
    assert scan.val == plain.val  # val keeps its images, so scores stay comparable
    assert scan.curation["exclude"]["left_out_of_training"] == 1


def test_exclude_reads_a_findings_csv_and_refuses_paths_that_are_not_in_the_data(colour_folder):
    plain = scan_data(colour_folder)
    findings = colour_folder.parent / "findings.csv"
    findings.write_text("path,finding\n" + Path(plain.train[1][0]).relative_to(colour_folder).as_posix() + ",label\n")
    assert len(scan_data(colour_folder, exclude=str(findings)).train) == len(plain.train) - 1
    findings.write_text("path,finding\ntrain/blue/nope.png,label\n")
    with pytest.raises(DataError, match="not images of this data.*nope.png"):
        scan_data(colour_folder, exclude=str(findings))


def test_relabel_overrides_labels_in_every_split_without_touching_files(colour_folder):
    before = _tree_digest(colour_folder)
    plain = scan_data(colour_folder)
    path, label = plain.train[0]
    fixes = colour_folder.parent / "fixes.csv"
    new = "red" if plain.classes[label] != "red" else "blue"
    fixes.write_text(f"path,label\n{Path(path).relative_to(colour_folder).as_posix()},{new}\n")
    scan = scan_data(colour_folder, relabel=str(fixes))
    assert dict(scan.train)[path] == plain.classes.index(new)
    assert scan.curation["relabel"]["changed"] == 1
    assert _tree_digest(colour_folder) == before
    fixes.write_text(f"path,label\n{Path(path).relative_to(colour_folder).as_posix()},gren\n")
    with pytest.raises(DataError, match="not a class.*Did you mean 'green'"):
        scan_data(colour_folder, relabel=str(fixes))


def test_exclude_and_relabel_show_in_provenance_and_the_data_fingerprint(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "colours")
    first = scan_data(root).train[0][0]
    listed = tmp_path / "exclude.txt"
    listed.write_text(Path(first).relative_to(root).as_posix() + "\n")
    runs = {}
    for name, data in (("plain", {}), ("excluded", {"exclude": str(listed)})):
        recipe = validate_recipe(tiny_recipe_dict(root, data=data, trainer={"epochs": 1}, name=name))
        fit(recipe, run_dir=tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "provenance.json").read_text())["data"]
    assert runs["excluded"]["files"] == runs["plain"]["files"] - 1
    assert runs["excluded"]["content_sha256"] != runs["plain"]["content_sha256"]
    assert runs["excluded"]["curation"]["exclude"]["left_out_of_training"] == 1
    assert "curation" not in runs["plain"]
