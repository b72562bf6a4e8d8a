"""The dataset doctor reports every zoo case, writes its JSON, and never modifies the folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from zoo import ZOO_CASES, write_zoo

from tlkit.cli.main import main
from tlkit.data.doctor import diagnose
from tlkit.errors import DataError, DataNotFoundError


def _tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = "link:" + os.readlink(path)
            elif path.is_file():
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory):
    root = write_zoo(tmp_path_factory.mktemp("zoo") / "zoo")
    before = _tree_hashes(root)
    out = tmp_path_factory.mktemp("reports") / "zoo.json"
    code = main(["doctor", str(root), "--json", str(out)])
    return root, before, code, out


def _case(report: dict, case: str) -> list[str]:
    return report["cases"].get(case, {}).get("items", [])


EXPECTED = [
    ("zero_byte", "train/a/empty.png"), ("non_image", "train/a/notes.txt"), ("hidden", "train/a/.DS_Store"),
    ("corrupt", "train/a/corrupt.jpg"), ("truncated", "train/a/truncated.jpg"),
    ("decompression_bomb", "train/a/bomb.png"), ("symlink_outside_root", "train/a/link_out.png"),
    ("too_small", "train/a/tiny.png"), ("mode_L", "train/b/grey_L.png"), ("mode_LA", "train/b/grey_LA.png"),
    ("mode_RGBA", "train/b/alpha_RGBA.png"), ("mode_P_transparency", "train/b/palette_P.png"),
    ("mode_CMYK", "train/b/cmyk.jpg"), ("mode_I;16", "train/b/deep_I16.png"), ("exif_rotated", "train/b/rotated.jpg"),
    ("placeholder_like", "train/b/imageNotFound.gif"),
    ("empty_class_folder", "val/c"), ("class_only_in_train", "c"), ("class_only_in_val", "d"),
    ("duplicate_within_split", "train/a/a0_copy.png"), ("duplicate_across_splits", "val/b/leak_b1.png"),
]


@pytest.mark.parametrize("case,expected", EXPECTED)
def test_doctor_reports_each_zoo_case(zoo_report, case, expected):
    root, _, code, out = zoo_report
    report = json.loads(out.read_text())
    assert code == 0
    assert any(item.endswith(expected) for item in _case(report, case)), (case, _case(report, case))


def test_zoo_case_list_is_covered_by_the_parametrized_test():
    assert sorted(case for case, _ in EXPECTED) == sorted(ZOO_CASES)


def test_doctor_counts_classes_and_imbalance(zoo_report):
    _, _, _, out = zoo_report
    report = json.loads(out.read_text())
    train = report["class_counts"]["train"]
    assert train["c"] == 6 and train["a"] < train["b"]
    assert report["imbalance_ratio"] == pytest.approx(max(train.values()) / min(train.values()))
    assert "a0.png" not in " ".join(_case(report, "duplicate_across_splits"))  # only real copies are paired


def test_doctor_never_modifies_the_folder(zoo_report):
    root, before, _, _ = zoo_report
    assert _tree_hashes(root) == before


def test_doctor_default_json_path_and_refuses_inside_the_data(tmp_path, monkeypatch, capsys):
    root = write_zoo(tmp_path / "zoo", val_only_class=False)
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", str(root)]) == 0
    assert (tmp_path / "runs" / "doctor" / "zoo.json").is_file()
    assert "decompression_bomb" in capsys.readouterr().out
    assert main(["doctor", str(root), "--json", str(root / "r.json")]) == 1
    assert not (root / "r.json").exists()


def test_doctor_unusable_folders(tmp_path):
    with pytest.raises(DataNotFoundError):
        diagnose(tmp_path / "missing")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2 class"):
        diagnose(tmp_path / "one")
    assert main(["doctor", str(tmp_path / "missing")]) == 1


def test_doctor_writes_a_gallery_of_the_files_worth_a_look_beside_the_json(zoo_report):
    from tlkit.data.doctor import gallery_items

    root, _, _, out = zoo_report
    assert out.with_suffix(".png").stat().st_size > 0
    items = gallery_items(json.loads(out.read_text()))
    captions = "\n".join(caption for _, caption in items)
    assert "placeholder_like (1/1)\nimageNotFound.gif" in captions
    assert "b1.png == leak_b1.png" in captions
    shown = {Path(path).name for path, _ in items}
    assert not shown & {"bomb.png", "link_out.png", "corrupt.jpg", "truncated.jpg", "empty.png"}  # never decoded


def test_doctor_reports_symlink_loops_and_split_folders_linked_outside_in_one_line(tmp_path, capsys):
    from conftest import write_class_folders

    root = tmp_path / "data"
    write_class_folders(root / "train", {"a": 2, "b": 2})
    write_class_folders(tmp_path / "elsewhere", {"a": 1, "b": 1})
    (root / "val").symlink_to(tmp_path / "elsewhere")
    (root / "train" / "a" / "x.png").symlink_to(root / "train" / "a" / "y.png")
    (root / "train" / "a" / "y.png").symlink_to(root / "train" / "a" / "x.png")
    code = main(["doctor", str(root), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err + out.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(Path(p).name for p in _case(report, "symlink_loop")) == ["x.png", "y.png"]
    assert _case(report, "symlink_outside_root") == [str(root / "val")]
    assert "val" not in report["class_counts"]  # never read


def test_doctor_counts_the_images_training_reads_through_class_folders_linked_in_or_out(tmp_path):
    """One link rule for training and the doctor: a class folder linked inside the data folder is read by both; one
    linked outside is read by neither (the doctor reports it; training refuses a class left without images)."""
    from conftest import write_class_folders

    from tlkit.data.scan import scan_folder

    root = tmp_path / "data"
    write_class_folders(root / "train", {"a": 2, "b": 3})
    write_class_folders(root / "val", {"a": 1, "b": 1})
    write_class_folders(root / "spare", {"c": 2})
    (root / "train" / "c").symlink_to(root / "spare" / "c")
    scan = scan_folder(root)
    trained = {c: sum(1 for _, label in scan.train if scan.classes[label] == c) for c in scan.classes}
    assert trained == {"a": 2, "b": 3, "c": 2}
    assert diagnose(root)["class_counts"]["train"] == trained

    write_class_folders(tmp_path / "elsewhere", {"d": 2})
    (root / "train" / "d").symlink_to(tmp_path / "elsewhere" / "d")
    with pytest.raises(DataError, match="No training images for class"):
        scan_folder(root)
    report = diagnose(root)
    assert report["class_counts"]["train"] == trained  # d is never read
    assert _case(report, "symlink_outside_root") == [str(root / "train" / "d")]


def test_doctor_refuses_a_train_folder_linked_outside_in_one_line(tmp_path, capsys):
    from conftest import write_class_folders

    root = tmp_path / "data"
    write_class_folders(tmp_path / "elsewhere", {"a": 1, "b": 1})
    root.mkdir()
    (root / "train").symlink_to(tmp_path / "elsewhere")
    code = main(["doctor", str(root), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "symlink leaving the data folder" in err


# -- label tables (CSV) -------------------------------------------------------------------------------------------------

def _messy_table(tmp_path: Path) -> Path:
    """A table with one row per problem the doctor reports for CSVs, next to good rows for classes a and b."""
    from conftest import write_image

    root = tmp_path / "tab"
    for i in range(6):
        write_image(root / "img" / f"{i}.png", size=(40, 40), seed=i)
    write_image(tmp_path / "outside.png", size=(40, 40), seed=99)
    (root / "img" / "copy.png").write_bytes((root / "img" / "0.png").read_bytes())
    (root / "img" / "empty.png").write_bytes(b"")
    lines = ["path,label,split",
             "img/0.png,a,train", "img/1.png,b,train", "img/2.png,a,val", "img/3.png,b,val",
             "img/4.png,c,val",            # class c: only in val
             "img/0.png,a,train",          # duplicate row
             "../outside.png,a,train",     # escapes the folder
             str(tmp_path / "outside.png") + ",b,train",  # absolute, outside
             "img/gone.png,a,train",       # missing file
             "img/5.png,,train",           # empty label
             ",a,train",                   # empty path
             "img/6.png,b,vaal",           # bad split
             "img/copy.png,b,val",         # same bytes as img/0.png in train: leakage
             "img/empty.png,b,train"]      # zero-byte file
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_doctor_lists_every_table_problem_with_its_line(tmp_path, capsys):
    table = _messy_table(tmp_path)
    before = _tree_hashes(table.parent)
    out = tmp_path / "reports" / "tab.json"
    assert main(["doctor", str(table), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    cases = report["cases"]
    assert report["layout"] == "table" and report["table"] == str(table)
    assert cases["duplicate_path"]["items"] == ["labels.csv line 7: 'img/0.png' (first on labels.csv line 2)"]
    assert [i.split(":")[0] for i in cases["path_outside_root"]["items"]] == ["labels.csv line 8", "labels.csv line 9"]
    assert cases["missing_file"]["items"] == ["labels.csv line 10: 'img/gone.png'"]
    assert cases["empty_label"]["items"] == ["labels.csv line 11"]
    assert cases["empty_path"]["items"] == ["labels.csv line 12"]
    assert cases["bad_split"]["items"] == ["labels.csv line 13: 'vaal' Did you mean 'val' or 'valid'?"]
    assert cases["class_only_in_val"]["items"] == ["c"]
    assert cases["zero_byte"]["items"] == [str(table.parent / "img" / "empty.png")]
    assert cases["duplicate_across_splits"]["count"] == 1
    assert report["class_counts"]["train"] == {"a": 1, "b": 1, "c": 0}
    printed = capsys.readouterr().out
    assert "path_outside_root" in printed and "refused" in printed
    assert _tree_hashes(table.parent) == before  # read-only


def test_doctor_table_via_csv_option_and_default_report_name(tmp_path, monkeypatch):
    table = _messy_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", str(table.parent), "--csv", "labels.csv"]) == 0
    assert (tmp_path / "runs" / "doctor" / "tab-labels.json").is_file()


def test_doctor_reports_a_class_column_without_images(tmp_path):
    from conftest import write_image

    from tlkit.data.doctor import diagnose_table

    root = tmp_path / "cols"
    for i in range(4):
        write_image(root / f"{i}.png", size=(40, 40), seed=i)
    (root / "labels.csv").write_text("path,cat,dog,fox\n0.png,1,0,0\n1.png,1,1,0\n2.png,0,1,0\n3.png,0,0,0\n")
    report = diagnose_table(root / "labels.csv")
    assert report["multi_label"] is True
    assert report["cases"]["class_without_images"]["items"] == ["fox"]
    assert report["cases"]["no_labels"]["items"] == ["labels.csv line 5"]
    assert report["class_counts"] == {"all": {"cat": 2, "dog": 2, "fox": 0}}
    assert report["labels_per_image"] == {"0": 1, "1": 2, "2": 1}


@pytest.mark.parametrize(("text", "message"), [
    ("", "labels.csv is empty"),
    ("image,label\n0.png,a\n", "no 'path' column"),
])
def test_doctor_unusable_table_is_one_line(tmp_path, capsys, text, message):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "labels.csv").write_text(text)
    assert main(["doctor", str(root / "labels.csv"), "--json", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _kaggle_tags(tmp_path) -> Path:
    """A Kaggle-style table: its own column names and space-separated tags (Planet's image_name,tags)."""
    from conftest import write_image

    root = tmp_path / "planet"
    tags = ["haze primary", "clear primary", "clear primary water", "haze primary water", "clear"]
    for i in range(len(tags)):
        write_image(root / f"train_{i}.jpg", size=(40, 40), seed=i)
    (root / "train.csv").write_text("image_name,tags\n" + "".join(f"train_{i}.jpg,{t}\n" for i, t in enumerate(tags)))
    return root / "train.csv"


def test_doctor_reads_a_table_with_its_own_column_names_and_space_separated_tags(tmp_path):
    table = _kaggle_tags(tmp_path)
    out = tmp_path / "r.json"
    assert main(["doctor", str(table), "--columns", "path=image_name,label=tags", "--label-delimiter", " ",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["multi_label"] is True
    assert report["class_counts"] == {"all": {"clear": 3, "haze": 2, "primary": 4, "water": 2}}


def test_space_separated_tags_with_the_default_delimiter_are_a_one_line_error(tmp_path, capsys):
    table = _kaggle_tags(tmp_path)
    assert main(["doctor", str(table), "--columns", "path=image_name,label=tags", "--json",
                 str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "look separated by spaces" in err and "label_delimiter" in err and err.count("\n") == 1


def test_class_names_with_a_space_are_not_mistaken_for_tags(tmp_path):
    from conftest import write_image

    from tlkit.data.doctor import diagnose_table

    root = tmp_path / "dogs"
    names = ["golden retriever", "labrador retriever", "great dane", "pug", "golden retriever", "pug"]
    for i in range(len(names)):
        write_image(root / f"{i}.png", size=(40, 40), seed=i)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{i}.png,{n}\n" for i, n in enumerate(names)))
    report = diagnose_table(root / "labels.csv")
    assert report["multi_label"] is False
    assert report["class_counts"]["all"]["golden retriever"] == 2
