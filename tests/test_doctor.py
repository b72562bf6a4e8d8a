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


def test_doctor_refuses_a_train_folder_linked_outside_in_one_line(tmp_path, capsys):
    from conftest import write_class_folders

    root = tmp_path / "data"
    write_class_folders(tmp_path / "elsewhere", {"a": 1, "b": 1})
    root.mkdir()
    (root / "train").symlink_to(tmp_path / "elsewhere")
    code = main(["doctor", str(root), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "symlink leaving the data folder" in err
