"""The doctor's cheap pass at training start: scan facts, imbalance advice, duplicates read only on size collisions."""

from __future__ import annotations

from conftest import write_class_folders
from zoo import write_zoo

import tlkit.data.preflight as preflight_module
from tlkit.data.datamodule import scan_folder
from tlkit.data.preflight import exact_duplicates, preflight


def test_zoo_warnings_name_leakage_copies_unvalidated_classes_and_skips(tmp_path):
    report = preflight(scan_folder(write_zoo(tmp_path / "zoo", val_only_class=False)))
    text = "\n".join(report["warnings"])
    assert (report["duplicates_across"], report["duplicates_within"]) == (1, 1)
    assert "leak_b1.png" in text and "leakage" in text
    assert "a0_copy.png" in text
    assert "no validation images for c" in text
    assert "skipped at scan" in text


def test_imbalance_suggests_balance_only_when_it_is_off(tmp_path):
    write_class_folders(tmp_path / "d", {"common": 12, "rare": 3})
    scan = scan_folder(tmp_path / "d", val_fraction=0.34)
    off = preflight(scan)["warnings"]
    assert any("class imbalance" in w and "data.balance: sampler" in w for w in off), off
    on = preflight(scan, balance="loss_weights")["warnings"]
    assert any("data.balance: loss_weights is on" in w for w in on), on


def test_clean_folder_has_no_warnings(colour_folder):
    assert preflight(scan_folder(colour_folder))["warnings"] == []


def test_only_files_with_colliding_sizes_are_hashed(tmp_path, monkeypatch):
    paths = []
    for i, size in enumerate([10, 20, 20, 30]):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i]) * size)
        paths.append(str(path))
    hashed = []
    real = preflight_module.file_sha256
    monkeypatch.setattr(preflight_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert exact_duplicates({"train": paths[:2], "val": paths[2:]}) == []  # same size, different bytes
    assert sorted(hashed) == sorted(paths[1:3])
    (tmp_path / "f2.bin").write_bytes((tmp_path / "f1.bin").read_bytes())
    assert exact_duplicates({"train": paths[:2], "val": paths[2:]}) == [[("train", paths[1]), ("val", paths[2])]]


def test_images_smaller_than_the_input_are_counted_from_the_scan_headers(colour_folder):
    scan = scan_folder(colour_folder)  # 36 px tall images
    report = preflight(scan, crop_size=40)
    assert report["smaller_than_crop"] == len(scan.train) + len(scan.val)
    assert any("shorter than the 40 px input" in w for w in report["warnings"])
    assert preflight(scan, crop_size=32)["smaller_than_crop"] == 0


def test_multi_label_scans_count_every_label_of_an_image(tmp_path):
    """Per-class counts of multi-label data count images carrying the class; a class in val is validated."""
    from conftest import write_image

    from tlkit.data.scan import FolderScan

    paths = [str(write_image(tmp_path / f"{i}.png", size=(20 + i, 30), seed=i)) for i in range(8)]
    scan = FolderScan(classes=["cat", "dog", "fox"], layout="table", multi_label=True,
                      train=[(paths[0], (0, 1)), (paths[1], (0,)), (paths[2], (0, 2)), (paths[3], (0,)),
                             (paths[4], (0,)), (paths[5], (1,))],
                      val=[(paths[6], (0, 1, 2)), (paths[7], ())])
    report = preflight(scan)
    assert report["imbalance_ratio"] == 5.0  # cat on 5 training images, fox on 1
    assert not any("no validation images" in w for w in report["warnings"])
    scan.val = [(paths[6], (1,)), (paths[7], ())]
    assert any("no validation images for cat, fox" in w for w in preflight(scan)["warnings"])
