"""Label audit and acting on it: data.columns, data.exclude, data.relabel; tlkit audit's findings (label issues,
near-duplicates across splits, outliers) on generated colour folders with planted problems."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image

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


def test_a_space_delimiter_reads_kaggle_tags_from_a_recipe(tmp_path):
    from tlkit.recipe import validate_recipe

    root = write_colour_classes(tmp_path / "tags", split=False, per_class=4)
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    tags = ["red blue", "blue", "green red", "red"]
    (root / "train.csv").write_text("image_name,tags\n" + "".join(f"{p},{tags[i % 4]}\n" for i, p in enumerate(images)))
    data = validate_recipe({"data": {"root": str(root), "source": "csv", "csv": "train.csv", "label_delimiter": " ",
                                     "columns": {"path": "image_name", "label": "tags"}}}).data
    scan = scan_data(data.root, source=data.source, csv=data.csv, label_delimiter=data.label_delimiter,
                     columns=data.columns)
    assert scan.multi_label and scan.classes == ["blue", "green", "red"]
    assert sorted(len(y) for _, y in scan.train + scan.val) == sorted(len(tags[i % 4].split()) for i in range(12))


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


def test_evaluate_gives_the_runs_data_its_relabelled_labels_and_other_data_its_own(tmp_path):
    import shutil

    from tlkit.recipe import validate_recipe
    from tlkit.run import evaluate_checkpoint, fit

    root = write_colour_classes(tmp_path / "colours")
    val_blue = min(p for p, _ in scan_data(root).val if Path(p).parent.name == "blue")
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"path,label\n{Path(val_blue).relative_to(root).as_posix()},red\n")
    recipe = validate_recipe(tiny_recipe_dict(root, data={"relabel": str(fixes)}, trainer={"epochs": 1}))
    fit(recipe, run_dir=tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)

    def support(data) -> dict[str, int]:
        report = evaluate_checkpoint(checkpoint, data, tta=["none"], out=tmp_path / "ev" / Path(data).name)
        return {row["class"]: row["support"] for row in report["policies"]["none"]["per_class"]}

    given = {c: sum(Path(p).parent.name == c for p, _ in scan_data(root).val) for c in ("blue", "red")}
    relabelled = support(root)
    assert (relabelled["blue"], relabelled["red"]) == (given["blue"] - 1, given["red"] + 1)
    assert {c: support(copy)[c] for c in given} == given  # other data: the labels its folders give
    fixes.unlink()
    with pytest.raises(OSError, match="no longer exists"):
        support(root)


# -- tlkit audit on a generated folder with planted problems (real lite0 features at 64 px: a few seconds) ---------

PLANTED_MISLABELS = {"train/blue/odd_red.png": "red", "train/red/odd_green.png": "green"}
PLANTED_TWINS = {"val/green/twin_03.jpg": "train/green/green_03.png", "val/red/twin_05.jpg": "train/red/red_05.png",
                 "val/blue/twin_07.jpg": "train/blue/blue_07.png"}
PLANTED_OUTLIER = "train/green/screenshot.png"
COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}


def _patterned(rgb: tuple[int, int, int], seed: int) -> Image.Image:
    """A class colour with a random coarse pattern, so images of one class differ from each other."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(-70, 71, (4, 4, 3)), np.ones((10, 10, 1)))
    return Image.fromarray(np.clip(np.array(rgb) + blocks + rng.integers(-10, 11, (40, 40, 3)), 0, 255)
                           .astype(np.uint8))


def _planted_folder(root: Path) -> Path:
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(14):
            folder = root / ("train" if i < 10 else "val") / name
            folder.mkdir(parents=True, exist_ok=True)
            _patterned(rgb, 100 * c + i).save(folder / f"{name}_{i:02d}.png")
    _patterned(COLOURS["red"], 900).save(root / "train/blue/odd_red.png")
    _patterned(COLOURS["green"], 901).save(root / "train/red/odd_green.png")
    for twin, source in PLANTED_TWINS.items():  # slightly cropped, resized, re-encoded copies in val
        Image.open(root / source).crop((1, 2, 39, 39)).resize((44, 43)).save(root / twin, quality=85)
    board = (np.indices((40, 40)).sum(0) // 5 % 2 * 255).astype(np.uint8)  # a black-and-white screenshot
    Image.fromarray(np.stack([board] * 3, -1)).save(root / PLANTED_OUTLIER)
    return root


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """(data root, digest of the data before the audit, the audit's result)."""
    from tlkit.audit import audit

    tmp = tmp_path_factory.mktemp("audit")
    root = _planted_folder(tmp / "planted")
    before = _tree_digest(root)
    result = audit(scan_data(root, seed=0), out=tmp / "out", backbone="tf_efficientnet_lite0", weights="bundled",
                   input_size=64, progress=False)
    return root, before, result


def _found(result, kind: str) -> dict[str, dict]:
    return {row["path"]: row for row in result.rows if row["finding"] == kind}


def test_audit_flags_planted_mislabels_and_suggests_their_true_class(audited):
    _, _, result = audited
    issues = _found(result, "label_issue")
    for path, true in PLANTED_MISLABELS.items():
        assert issues[path]["suggested"] == true
    worst = list(issues)[:len(PLANTED_MISLABELS) + 1]  # rows come worst first
    assert set(PLANTED_MISLABELS) <= set(worst)


def test_audit_finds_planted_twins_across_splits_and_nothing_else(audited):
    _, _, result = audited
    leaks = _found(result, "leak")
    assert {path: row["other"] for path, row in leaks.items()} == PLANTED_TWINS
    assert result.summary["leaks"]["val_with_twin_in_train"] == len(PLANTED_TWINS)
    assert result.summary["leaks"]["val_images"] == 3 * 4 + len(PLANTED_TWINS)


def test_crop_search_lifts_a_cropped_copy_above_the_threshold_and_leaves_a_lookalike_below(tmp_path):
    from tlkit.audit.pixels import embed, thumbnails, twin_neighbours

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
    photo.save(tmp_path / "photo.png")
    photo.crop((4, 0, 64, 60)).resize((40, 40)).save(tmp_path / "copy.jpg", quality=80)  # 6% cut, smaller, JPEG
    lookalike = np.asarray(photo).astype(int) + np.kron(rng.integers(-60, 61, (4, 4, 3)), np.ones((16, 16, 1)))
    Image.fromarray(np.clip(lookalike, 0, 255).astype(np.uint8)).save(tmp_path / "lookalike.png")
    paths = [str(tmp_path / n) for n in ("photo.png", "copy.jpg", "lookalike.png")]
    plain = embed(thumbnails(paths))[:, 0]
    neighbours, similarities = twin_neighbours(paths, 2)
    assert plain[0] @ plain[1] < 0.95 <= similarities[1][list(neighbours[1]).index(0)]
    assert similarities[2][list(neighbours[2]).index(0)] < 0.95


def test_audit_lists_the_planted_outlier_first(audited):
    _, _, result = audited
    assert next(row["path"] for row in result.rows if row["finding"] == "outlier") == PLANTED_OUTLIER


def test_audit_leaves_the_data_folder_unchanged(audited):
    root, before, _ = audited
    assert _tree_digest(root) == before


def test_audit_page_is_self_contained_with_every_finding_pictured(audited):
    _, _, result = audited
    page = result.files["html"].read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count('data-finding="label_issue"') == len(_found(result, "label_issue"))
    assert 'data-finding="leak"' in page and 'data-finding="outlier"' in page
    assert "data:image/jpeg;base64," in page


def test_findings_csv_leaves_flagged_images_out_of_training(audited):
    root, _, result = audited
    plain = scan_data(root, seed=0)
    curated = scan_data(root, seed=0, exclude=str(result.files["csv"]))
    flagged_train = {row["path"] for row in result.rows if row["split"] == "train"}
    assert len(curated.train) == len(plain.train) - len(flagged_train)
    assert curated.val == plain.val


def test_audit_refuses_to_write_inside_the_data_folder(colour_folder):
    from tlkit.audit import audit

    with pytest.raises(DataError, match="inside the data folder"):
        audit(scan_data(colour_folder), out=colour_folder / "audit", backbone="test_resnet", weights="none",
              input_size=32, progress=False)


def test_multi_label_issues_name_the_missing_class():
    from tlkit.audit.findings import label_issues

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.4).astype(np.float32)
    probs = np.clip(labels * 0.9 + 0.05 + rng.normal(0, 0.02, labels.shape), 0.01, 0.99)
    labels[7] = [1, 0, 0]
    probs[7] = [0.95, 0.97, 0.03]  # the probe is sure image 7 also shows class 1
    issues = label_issues(labels, probs, multi_label=True)
    assert issues[0].index == 7 and issues[0].suggested == (0, 1)


def test_out_of_fold_probabilities_come_from_probes_that_never_saw_the_image():
    from tlkit.audit.findings import out_of_fold_probabilities

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    features = (np.eye(3)[labels] * 4 + rng.normal(0, 1, (60, 3))).astype(np.float32)
    labels[0] = 2  # a flipped label: a probe that saw it would lean towards 2
    probs = out_of_fold_probabilities(features, labels, num_classes=3, folds=5, seed=0)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1)
    assert probs[0].argmax() == 0


def test_cli_audit_writes_findings_and_page_outside_the_folder(tmp_path, capsys):
    from tlkit.cli.main import main

    root = write_colour_classes(tmp_path / "colours")
    assert main(["audit", str(root), "--backbone", "test_resnet", "--weights", "none", "--input-size", "32",
                 "--out", str(tmp_path / "audit"), "--no-progress", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "label issues" in out and (tmp_path / "audit" / "findings.csv").is_file()
    assert (tmp_path / "audit" / "audit.html").is_file()
