"""Labels in a table: CSV files and DataFrames, single- and multi-label, scanned into the folder scan's FolderScan."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import write_colour_classes, write_image

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.scan import scan_folder
from tlkit.data.settings import DataConfig
from tlkit.data.table import parse_table, read_csv_table, scan_dataframe, scan_table
from tlkit.errors import DataError, DataNotFoundError


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def read_rows(path: Path, *, named: bool = False) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f) if named else csv.reader(f))


def colour_table(tmp_path: Path, *, split: bool = False) -> Path:
    """The colour classes as one folder plus labels.csv listing every image (with a split column when asked)."""
    root = write_colour_classes(tmp_path / "colours", split=False)
    rows = [["path", "label", *(["split"] if split else [])]]
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        rows.append([path.relative_to(root).as_posix(), path.parent.name, *(["val" if i % 4 == 0 else "train"]
                                                                              if split else [])])
    write_csv(root / "labels.csv", rows)
    return root


def multi_label_root(tmp_path: Path) -> Path:
    """images/0..11.png labelled with a;b style sets over classes cat, dog, fox (row 5 has none)."""
    root = tmp_path / "tags"
    labels = ["cat", "dog", "cat;dog", "fox", "dog;fox", "", "cat;fox", "cat", "dog", "fox", "cat;dog;fox", "dog"]
    rows = [["path", "label", "split"]]
    for i, label in enumerate(labels):
        write_image(root / "images" / f"{i}.png", seed=i)
        rows.append([f"images/{i}.png", label, "val" if i >= 8 else "train"])
    write_csv(root / "labels.csv", rows)
    return root


# -- single-label CSV ---------------------------------------------------------------------------------------------------

def test_csv_without_split_column_splits_as_the_folder_scan(tmp_path):
    root = colour_table(tmp_path)
    table, folder = scan_table(root, "labels.csv", seed=3), scan_folder(root, seed=3)
    assert table.classes == folder.classes == ["blue", "green", "red"]
    assert (table.train, table.val) == (folder.train, folder.val)
    assert table.layout == "table" and table.multi_label is False


def test_split_column_gives_exactly_those_splits(tmp_path):
    root = colour_table(tmp_path, split=True)
    scan = scan_table(root, "labels.csv", test_fraction=0.3)  # a test column value is absent, so test is carved
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    expected_val = sorted(str(root / r["path"]) for r in rows if r["split"] == "val")
    assert [p for p, _ in scan.val] == expected_val
    assert {p for p, _ in scan.train} | {p for p, _ in scan.test} == {str(root / r["path"]) for r in rows
                                                                       if r["split"] == "train"}
    assert scan.test and not {p for p, _ in scan.test} & {p for p, _ in scan.train}
    assert all(Path(p).parent.name == scan.classes[y] for p, y in scan.train + scan.val)


def test_split_synonyms_and_case(tmp_path):
    root = tmp_path / "d"
    rows = [["Path", "Label", "Split"]]
    for i, (label, split) in enumerate([("a", "Train"), ("b", "TRAIN"), ("a", "valid"), ("b", "validation"),
                                        ("a", "test")]):
        write_image(root / f"{i}.png", seed=i)
        rows.append([f"{i}.png", label, split])
    write_csv(root / "labels.csv", rows)
    scan = scan_table(root)
    assert (len(scan.train), len(scan.val), len(scan.test)) == (2, 2, 1)


def test_paths_are_relative_to_the_tables_folder(tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        write_image(root / "meta" / "img" / f"{i}.png", seed=i)
    write_csv(root / "meta" / "labels.csv", [["path", "label"], *[[f"img/{i}.png", "ab"[i % 2]] for i in range(6)]])
    scan = scan_table(root, "meta/labels.csv", val_fraction=0.4)
    assert all(Path(p).parent == root / "meta" / "img" for p, _ in scan.train + scan.val)


@pytest.mark.parametrize("written", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_paths_leaving_the_root_are_refused_with_their_line(tmp_path, written):
    root = colour_table(tmp_path)
    outside = write_image(tmp_path / "outside.png")
    rows = read_rows(root / "labels.csv")
    rows.insert(3, [str(outside) if written == "ABSOLUTE" else written, "red"])
    write_csv(root / "labels.csv", rows)
    with pytest.raises(DataError, match=r"leaving the data folder: labels.csv line 4: .*inside data.root"):
        scan_table(root)


def test_a_link_inside_root_to_a_file_outside_is_skipped_and_listed(tmp_path):
    root = colour_table(tmp_path)
    outside = write_image(tmp_path / "outside.png")
    (root / "link.png").symlink_to(outside)
    rows = read_rows(root / "labels.csv") + [["link.png", "red"]]
    write_csv(root / "labels.csv", rows)
    scan = scan_table(root)
    assert (str(root / "link.png"), "symlink leaving the data folder (not followed)") in scan.skipped
    assert str(root / "link.png") not in {p for p, _ in scan.train + scan.val}


def test_missing_and_unreadable_files_are_skipped_and_listed(tmp_path):
    root = colour_table(tmp_path)
    (root / "broken.png").write_bytes(b"not a png")
    rows = read_rows(root / "labels.csv") + [["gone.png", "red"], ["broken.png", "blue"]]
    write_csv(root / "labels.csv", rows)
    scan = scan_table(root)
    reasons = dict(scan.skipped)
    assert reasons[str(root / "gone.png")] == f"missing (listed on labels.csv line {len(rows) - 1})"
    assert reasons[str(root / "broken.png")].startswith("unreadable")
    assert len(scan.train) + len(scan.val) == 36


def test_all_paths_missing_names_the_first_and_the_rule(tmp_path):
    root = tmp_path / "d"
    write_csv(root / "labels.csv", [["path", "label"], ["x/a.png", "a"], ["x/b.png", "b"]])
    with pytest.raises(DataError, match=r"None of the 2 images .* line 2: 'x/a.png' .*relative to the table's folder"):
        scan_table(root)


@pytest.mark.parametrize(("rows", "message"), [
    ([["path", "label"], ["0.png", "a"], ["1.png", "b"], ["0.png", "a"]],
     r"an image listed twice: labels.csv line 4: '0.png' \(first on labels.csv line 2\)"),
    ([["path", "label"], ["0.png", "a"], ["1.png", ""]], r"no label: labels.csv line 3"),
    ([["path", "label", "split"], ["0.png", "a", "train"], ["1.png", "b", "vall"]],
     r"split value .*labels.csv line 3: 'vall' Did you mean 'val'"),
    ([["path", "label"], ["", "a"], ["1.png", "b"]], r"empty path cell: labels.csv line 2"),
    ([["path", "a", "b"], ["0.png", "1", "yes please"]], r"not 0 or 1: labels.csv line 2: b='yes please'"),
])
def test_bad_rows_are_refused_in_one_line(tmp_path, rows, message):
    root = tmp_path / "d"
    for i in range(2):
        write_image(root / f"{i}.png", seed=i)
    write_csv(root / "labels.csv", rows)
    with pytest.raises(DataError, match=message) as info:
        scan_table(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", r"labels.csv is empty; expected a header"),
    ("file,label\na.png,x\n", r"no 'path' column .*'file', 'label'.* Set data.columns: \{path: file\}"),
    ("path,label\n", r"has a header but no rows"),
    ("path,label\na.png,x,extra\n", r"labels.csv line 2: 3 cell\(s\) where the header has 2"),
    ("path\na.png\n", r"only a 'path' column"),
    ("path,label,label\na.png,x,y\n", r"repeats column\(s\) 'label'"),
    ("path,label,cat\na.png,x,1\n", r"a 'label' column and other columns \('cat'\)"),
])
def test_unusable_tables_name_the_file_and_the_fix(tmp_path, text, message):
    root = tmp_path / "d"
    root.mkdir()
    (root / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        scan_table(root)


def test_missing_table_suggests_the_close_name(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "label.csv").write_text("path,label\n")
    with pytest.raises(DataNotFoundError, match=r"does not exist. Did you mean 'label.csv'"):
        scan_table(root, "labels.csv")


def test_non_utf8_table_is_refused(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "labels.csv").write_bytes("path,label\nä.png,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text.*save it as CSV UTF-8"):
        scan_table(root)


def test_data_settings_tie_csv_and_multi_label_to_the_source():
    assert DataConfig(root="x", source="csv").csv == "labels.csv"
    with pytest.raises(ValueError, match="csv is set .* but source is folder"):
        DataConfig(root="x", csv="tags.csv")
    with pytest.raises(ValueError, match="multi_label: true needs labels from a table"):
        DataConfig(root="x", multi_label=True)
    with pytest.raises(ValueError, match="label_delimiter must not contain commas"):
        DataConfig(root="x", source="csv", label_delimiter=",")
    with pytest.raises(ValueError, match="csv is set .* but source is folder"):
        ImageFolderDataModule("x", csv="tags.csv")  # before any scan


# -- DataFrame ----------------------------------------------------------------------------------------------------------

def test_dataframe_scans_exactly_as_its_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    root = colour_table(tmp_path, split=True)
    df = pd.read_csv(root / "labels.csv")
    assert scan_dataframe(df, root) == scan_table(root)
    dm = ImageFolderDataModule.from_dataframe(df, root, num_workers=0)
    assert dm.scan == scan_table(root) and dm.split_info()["source"] == "dataframe"


def test_dataframe_rows_are_checked_like_csv_rows(tmp_path):
    pd = pytest.importorskip("pandas")
    root = tmp_path / "d"
    for i in range(4):
        write_image(root / f"{i}.png", seed=i)
    df = pd.DataFrame({"path": ["0.png", "1.png", "../x.png", "3.png"], "label": ["a", "b", "a", "b"]}, index=[10, 11, 12, 13])
    with pytest.raises(DataError, match="DataFrame row 12: '../x.png'"):
        scan_dataframe(df, root)
    lists = pd.DataFrame({"path": ["0.png", "1.png", "2.png", "3.png"], "label": [["a", "b"], ["a"], ["b"], []],
                          "split": ["train", "train", "val", "val"]})
    scan = scan_dataframe(lists, root)
    assert scan.multi_label and scan.train == [(str(root / "0.png"), (0, 1)), (str(root / "1.png"), (0,))]
    assert scan.val == [(str(root / "2.png"), (1,)), (str(root / "3.png"), ())]


def test_not_a_dataframe_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="Expected a pandas DataFrame .* got list"):
        scan_dataframe([["a.png", "x"]], tmp_path / "d")


# -- multi-label --------------------------------------------------------------------------------------------------------

def test_multi_label_rows_become_sorted_index_tuples(tmp_path):
    root = multi_label_root(tmp_path)
    scan = scan_table(root)
    assert scan.multi_label and scan.classes == ["cat", "dog", "fox"]
    by_name = {Path(p).name: y for p, y in scan.train + scan.val}
    assert by_name["2.png"] == (0, 1) and by_name["4.png"] == (1, 2) and by_name["5.png"] == ()
    assert by_name["10.png"] == (0, 1, 2) and by_name["3.png"] == (2,)


def test_class_columns_equal_the_delimited_form(tmp_path):
    root = multi_label_root(tmp_path)
    rows = read_rows(root / "labels.csv", named=True)
    columns = [["path", "fox", "cat", "dog", "split"]]  # column order does not matter: classes are sorted
    for r in rows:
        names = set(filter(None, r["label"].split(";")))
        columns.append([r["path"], *("1" if c in names else "0" for c in ("fox", "cat", "dog")), r["split"]])
    write_csv(root / "columns.csv", columns)
    assert scan_table(root, "columns.csv") == scan_table(root, "labels.csv")


def test_multi_label_is_decided_from_the_table_or_given(tmp_path):
    root = multi_label_root(tmp_path)
    rows = [["path", "label"], *[[f"images/{i}.png", "ab"[i % 2]] for i in range(8)]]
    write_csv(root / "single.csv", rows)
    assert not scan_table(root, "single.csv").multi_label
    assert scan_table(root, "single.csv", multi_label=True).multi_label
    with pytest.raises(DataError, match=r"no label: labels.csv line 7\. .*\(4 other problem\(s\) too: tlkit doctor"):
        scan_table(root, "labels.csv", multi_label=False)
    parsed = parse_table(read_csv_table(root / "labels.csv"), root, multi_label=False)
    assert parsed.problems["several_labels"][0] == "labels.csv line 4: 'cat;dog'"
    one_hot = [["path", "a", "b"], *[[f"images/{i}.png", str(i % 2), str(1 - i % 2)] for i in range(8)]]
    write_csv(root / "onehot.csv", one_hot)
    scan = scan_table(root, "onehot.csv", multi_label=False)
    assert not scan.multi_label and {y for _, y in scan.train + scan.val} == {0, 1}


def test_custom_delimiter(tmp_path):
    root = multi_label_root(tmp_path)
    text = (root / "labels.csv").read_text().replace(";", "|")
    (root / "pipes.csv").write_text(text)
    assert scan_table(root, "pipes.csv", label_delimiter="|") == scan_table(root)


def test_multi_label_carving_keeps_every_image_once_and_is_seeded(tmp_path):
    root = multi_label_root(tmp_path)
    rows = [r[:2] for r in read_rows(root / "labels.csv")]
    write_csv(root / "nosplit.csv", rows)
    a, b = scan_table(root, "nosplit.csv", seed=1), scan_table(root, "nosplit.csv", seed=1)
    assert a == b and a.val
    assert sorted(a.train + a.val) == sorted(scan_table(root).train + scan_table(root).val)


def test_multi_label_datamodule_yields_multi_hot_float_targets(tmp_path, preprocessing):
    root = multi_label_root(tmp_path)
    dm = ImageFolderDataModule(root, source="csv", preprocessing=preprocessing, batch_size=4, num_workers=0,
                               cache=False)
    assert dm.multi_label and dm.classes == ["cat", "dog", "fox"]
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape[0] == 4 and targets.dtype == torch.float32 and targets.shape == (4, 3)
    expected = {"8.png": [0, 1, 0], "9.png": [0, 0, 1], "10.png": [1, 1, 1], "11.png": [0, 1, 0]}
    assert targets.tolist() == [expected[Path(p).name] for p, _ in dm.scan.val]
    train_targets = torch.cat([t for _, t in dm.train_dataloader()])
    assert train_targets.shape[1] == 3 and train_targets.dtype == torch.float32
    assert dm.split_info()["source"] == "csv" and dm.split_info()["multi_label"] is True


def test_multi_label_balance(tmp_path):
    root = multi_label_root(tmp_path)
    dm = ImageFolderDataModule(root, source="csv", num_workers=0, balance="sampler")
    train = dict(dm.scan.train)
    # training images: cat x4 (0,2,6,7), dog x3 (1,2,4), fox x3 (3,4,6), none x1 (5)
    weights = dict(zip((Path(p).name for p, _ in dm.scan.train), dm.sample_weights))
    assert weights["0.png"] == pytest.approx(1 / 4) and weights["2.png"] == pytest.approx(1 / 3)
    assert weights["5.png"] == 1.0 and len(train) == 8
    # pos_weight = negatives / positives per class over the 8 training images
    assert dm.class_weights == pytest.approx([4 / 4, 5 / 3, 5 / 3])


def test_single_label_csv_class_weights_match_folders(tmp_path):
    root = colour_table(tmp_path)
    table = ImageFolderDataModule(root, source="csv", num_workers=0)
    folder = ImageFolderDataModule(root, num_workers=0)
    assert table.class_weights == folder.class_weights and not table.multi_label


def test_parse_lists_every_problem_for_the_doctor(tmp_path):
    root = tmp_path / "d"
    write_image(root / "0.png")
    write_csv(root / "labels.csv", [["path", "label", "split"], ["0.png", "a", "train"], ["0.png", "a", "train"],
                                    ["../x.png", "b", "val"], ["1.png", "", "val"], ["2.png", "b", "tst"]])
    parsed = parse_table(read_csv_table(root / "labels.csv"), root)
    assert set(parsed.problems) == {"duplicate_path", "path_outside_root", "empty_label", "bad_split",
                                    "class_with_one_image"}
    assert parsed.problems["bad_split"] == ["labels.csv line 6: 'tst' Did you mean 'test'?"]


# -- end to end ---------------------------------------------------------------------------------------------------------

def test_train_and_evaluate_on_a_csv(tmp_path, capsys):
    """`tlkit train` on a single-label CSV with test_resnet learns, saves the table in the checkpoint's split, and
    `tlkit evaluate` re-reads the same table and val split from it."""
    import json

    import yaml
    from conftest import tiny_recipe_dict

    from tlkit.cli.main import main

    root = colour_table(tmp_path)
    recipe = tiny_recipe_dict(root, backbone={"name": "test_resnet"}, optim={"name": "adamw", "lr": 0.3},
                              data={"source": "csv", "csv": "labels.csv", "test_fraction": 0.2}, trainer={"epochs": 3})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["train", "--recipe", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The colours are learnt from the table's labels: all 6 val images right (chance is 1/3)
    assert metrics["num_val"] == 6 and metrics["num_test"] == 6 and metrics["best_val_acc"] == 1.0, metrics
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "ev"),
                 "--tta", "none"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["layout"] == "table" and report["num_images"] == 6
    assert report["policies"]["none"]["accuracy"] == metrics["best_val_acc"]  # the same val images, the same weights
    from tlkit.infer.checkpoint import read_checkpoint, saved_split

    split = saved_split(read_checkpoint(checkpoint))
    assert (split["source"], split["csv"], split["seed"], split["test_fraction"]) == ("csv", "labels.csv", 0, 0.2)


def test_cached_features_of_multi_label_data_carry_multi_hot_targets(tmp_path, preprocessing):
    """The feature cache stores features keyed by file only; targets come from the scan, so (N, C) float rows."""
    from tlkit.data.augment import TrainAugment
    from tlkit.data.features import Extraction, extract_splits
    from tlkit.data.protocol import CachePlan
    from tlkit.data.settings import CacheConfig
    from tlkit.model.backbones import create_backbone

    root = multi_label_root(tmp_path)
    scan = scan_table(root)
    backbone, _, _ = create_backbone("test_resnet", "none")
    splits = extract_splits(scan, CachePlan(1, network=backbone, name="test_resnet"), preprocessing,
                            augment=TrainAugment(preset="none"), cache=CacheConfig(dir=str(tmp_path / "cache")),
                            seed=0, run=Extraction(device=torch.device("cpu"), eval_batch_size=4, num_workers=0,
                                                   progress=False))
    views, targets = splits.train.usable()
    assert views.shape[:2] == (1, 8) and targets.dtype == torch.float32 and targets.shape == (8, 3)
    assert targets[2].tolist() == [1, 1, 0] and targets[5].tolist() == [0, 0, 0]  # rows follow scan.train
    feature, target = splits.val[(0, 0)]  # val is sorted by path: images/10.png first
    assert target.tolist() == [1, 1, 1] and feature.ndim == 1


def test_cli_table_mistakes_are_one_line(tmp_path, capsys):
    import yaml
    from conftest import tiny_recipe_dict

    from tlkit.cli.main import EXIT_RECIPE_ERROR, main

    root = colour_table(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, data={"source": "csv", "csv": "tags.csv"})))
    assert main(["train", "--recipe", str(path)]) == 1
    err = capsys.readouterr().err
    assert "tags.csv' does not exist" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["train", "--recipe", str(path), "--set", "data.source=folder"]) == EXIT_RECIPE_ERROR
    assert "csv is set ('tags.csv') but source is folder" in capsys.readouterr().err
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "../../x.png,red\n")
    assert main(["train", "--recipe", str(path), "--set", "data.csv=labels.csv"]) == 1
    err = capsys.readouterr().err
    assert "path leaving the data folder: labels.csv line 38: '../../x.png'" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_preview_shows_label_sets_of_multi_label_data(tmp_path):
    import yaml
    from conftest import tiny_recipe_dict

    from tlkit.cli.main import main
    from tlkit.run.preview import _label_set_title

    root = multi_label_root(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, data={"source": "csv"})))
    assert main(["preview", "--recipe", str(path), "--n", "4", "--out", str(tmp_path / "p.png")]) == 0
    assert main(["preview", "--recipe", str(path), "--n", "4", "--out", str(tmp_path / "m.png"),
                 "--set", "mixing.mixup_alpha=0.4"]) == 0
    assert (tmp_path / "p.png").is_file() and (tmp_path / "m.png").is_file()
    classes = ["cat", "dog", "fox"]
    assert _label_set_title(torch.tensor([1.0, 0.0, 1.0]), classes) == "cat + fox"
    assert _label_set_title(torch.zeros(3), classes) == "(none)"
    assert _label_set_title(torch.tensor([0.7, 1.0, 0.3]), classes) == "dog 1.00 / cat 0.70 / fox 0.30"


# ---------------------------------------------------------------------------------------------------------------------
# Big tables: compact rows, and the paths alone read one at a time (tlkit predict TABLE.csv)


def test_rows_share_their_label_cells_and_label_sets_so_a_big_table_stays_small(tmp_path):
    rows = [["path", "label"]] + [[f"img/{i}.png", f"class_{i % 3}"] for i in range(9)]
    parsed = parse_table(read_csv_table(write_csv(tmp_path / "labels.csv", rows)), tmp_path)
    first, fourth = parsed.rows[0], parsed.rows[3]
    assert first.labels == fourth.labels == ("class_0",) and first.labels is fourth.labels  # one tuple per label set
    assert first.place == "labels.csv line 2" and fourth.place == "labels.csv line 5"  # built when asked


def test_a_duplicate_path_still_names_the_line_that_listed_it_first(tmp_path):
    rows = [["path", "label"], ["a.png", "x"], ["b.png", "y"], ["./a.png", "x"]]
    parsed = parse_table(read_csv_table(write_csv(tmp_path / "labels.csv", rows)), tmp_path)
    assert parsed.problems["duplicate_path"] == ["labels.csv line 4: './a.png' (first on labels.csv line 2)"]


def test_table_paths_are_read_one_at_a_time_relative_to_the_table(tmp_path):
    from tlkit.data.table import iter_table_paths

    table = write_csv(tmp_path / "sub" / "todo.csv", [["ID", "Path"], ["1", "a.png"], ["2", ""], ["3", "/abs/b.jpg"]])
    paths = iter_table_paths(table)
    assert next(paths) == (str(tmp_path / "sub" / "a.png"), "todo.csv line 2")  # a generator: nothing read ahead
    assert list(paths) == [(None, "todo.csv line 3"), ("/abs/b.jpg", "todo.csv line 4")]
    with pytest.raises(DataError, match=r"no 'path' column .* Is 'file' the image path"):
        list(iter_table_paths(write_csv(tmp_path / "other.csv", [["file", "tags"], ["x.png", "a"]])))
