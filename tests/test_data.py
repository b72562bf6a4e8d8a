"""Image-folder scanning, the seeded stratified split, decoding errors, and the DataModule's loaders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from tlkit.data.augment import build_eval_transform
from tlkit.data.datamodule import ImageDataset, ImageFolderDataModule, scan_folder
from tlkit.errors import DataError, DataNotFoundError


@pytest.fixture
def split_root(tmp_path, make_class_folders) -> Path:
    root = tmp_path / "images"
    make_class_folders(root / "train", {"cat": 3, "dog": 4})
    make_class_folders(root / "val", {"cat": 1, "dog": 2})
    return root


@pytest.fixture
def single_root(tmp_path, make_class_folders) -> Path:
    root = tmp_path / "images"
    make_class_folders(root, {"ant": 10, "bee": 10, "wasp": 10})
    return root


def labels_of(samples) -> Counter:
    return Counter(label for _, label in samples)


# ---------------------------------------------------------------------------------------------------------------------
# Layouts


def test_split_layout_reads_train_and_val_folders(split_root):
    scan = scan_folder(split_root)
    assert scan.layout == "split"
    assert scan.classes == ["cat", "dog"]
    assert labels_of(scan.train) == {0: 3, 1: 4}
    assert labels_of(scan.val) == {0: 1, 1: 2}
    assert all(Path(p).parent.name == scan.classes[label] for p, label in scan.train + scan.val)


@pytest.mark.parametrize("val_name", ["valid", "validation", "test"])
def test_split_layout_accepts_other_validation_folder_names(tmp_path, make_class_folders, val_name):
    make_class_folders(tmp_path / "train", {"cat": 2, "dog": 2})
    make_class_folders(tmp_path / val_name, {"cat": 1, "dog": 1})
    scan = scan_folder(tmp_path)
    assert scan.layout == "split"
    assert all(f"/{val_name}/" in Path(p).as_posix() for p, _ in scan.val)


def test_classes_are_sorted_and_labels_follow_them(tmp_path, make_class_folders):
    make_class_folders(tmp_path, {"zebra": 2, "apple": 2, "mango": 2})
    scan = scan_folder(tmp_path, val_fraction=0.5)
    assert scan.classes == ["apple", "mango", "zebra"]
    assert all(Path(p).parent.name == scan.classes[label] for p, label in scan.train + scan.val)


@pytest.mark.parametrize(("val_fraction", "per_class"), [(0.2, 2), (0.5, 5)])
def test_single_folder_layout_is_split_by_val_fraction(single_root, val_fraction, per_class):
    scan = scan_folder(single_root, val_fraction=val_fraction, seed=0)
    assert scan.layout == "single"
    assert labels_of(scan.val) == {0: per_class, 1: per_class, 2: per_class}  # stratified: the fraction of each class
    assert labels_of(scan.train) == {0: 10 - per_class, 1: 10 - per_class, 2: 10 - per_class}


def test_single_folder_split_is_disjoint_and_complete(single_root):
    scan = scan_folder(single_root, val_fraction=0.3, seed=0)
    train, val = {p for p, _ in scan.train}, {p for p, _ in scan.val}
    assert not train & val
    assert len(train | val) == 30


def test_single_folder_split_is_the_same_for_the_same_seed(single_root):
    assert scan_folder(single_root, seed=7).val == scan_folder(single_root, seed=7).val


def test_single_folder_split_changes_with_the_seed(single_root):
    assert scan_folder(single_root, seed=0).val != scan_folder(single_root, seed=1).val


@pytest.mark.parametrize("val_fraction", [0.05, 0.5, 0.9])
def test_single_folder_split_keeps_every_class_on_both_sides(single_root, val_fraction):
    scan = scan_folder(single_root, val_fraction=val_fraction, seed=3)
    assert set(labels_of(scan.train)) == {0, 1, 2}
    assert set(labels_of(scan.val)) == {0, 1, 2}


def test_imbalanced_single_folder_split_keeps_a_small_class_in_val(tmp_path, make_class_folders):
    make_class_folders(tmp_path, {"rare": 2, "common_a": 10, "common_b": 10})
    scan = scan_folder(tmp_path, val_fraction=0.2, seed=0)
    assert set(labels_of(scan.val)) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------------------
# Folder errors


def test_missing_root_is_data_not_found_with_did_you_mean(split_root):
    with pytest.raises(DataNotFoundError, match=r"does not exist\. Did you mean 'images'\?"):
        scan_folder(split_root.parent / "imagse")


def test_data_not_found_error_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "nothing_here")


def test_a_single_class_is_a_data_error(tmp_path, make_class_folders):
    make_class_folders(tmp_path, {"only": 4})
    with pytest.raises(DataError, match=r"at least 2 class subfolders \(found only 'only'\)"):
        scan_folder(tmp_path)


def test_no_class_folders_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"found none"):
        scan_folder(tmp_path)


def test_val_class_missing_from_train_is_a_data_error(split_root, make_class_folders):
    make_class_folders(split_root / "val", {"fox": 1})
    with pytest.raises(DataError, match=r"classes missing from .*train: fox"):
        scan_folder(split_root)


def test_train_folder_without_val_folder_is_a_data_error(tmp_path, make_class_folders):
    make_class_folders(tmp_path / "train", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match=r"has train/ but no validation folder"):
        scan_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Skipped and hidden files


def test_non_image_file_is_skipped_and_listed(split_root):
    notes = split_root / "train" / "cat" / "notes.txt"
    notes.write_text("not a picture")
    scan = scan_folder(split_root)
    assert (str(notes), "not an image file extension") in scan.skipped
    assert str(notes) not in {p for p, _ in scan.train}


def test_zero_byte_jpeg_is_skipped_and_listed(split_root):
    empty = split_root / "train" / "dog" / "empty.jpg"
    empty.write_bytes(b"")
    scan = scan_folder(split_root)
    assert [path for path, reason in scan.skipped if reason.startswith("unreadable")] == [str(empty)]
    assert str(empty) not in {p for p, _ in scan.train}


def test_hidden_files_are_ignored_without_being_listed(split_root, make_image):
    (split_root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    make_image(split_root / "train" / "cat" / "._photo.jpg")  # macOS resource-fork twin
    scan = scan_folder(split_root)
    assert scan.skipped == []
    assert not any(Path(p).name.startswith(".") for p, _ in scan.train)
    assert labels_of(scan.train) == {0: 3, 1: 4}


def test_hidden_folders_are_not_classes(split_root, make_class_folders):
    make_class_folders(split_root / "train", {".thumbnails": 2})
    assert scan_folder(split_root).classes == ["cat", "dog"]


# ---------------------------------------------------------------------------------------------------------------------
# Decoding


def test_dataset_returns_the_transformed_image_and_its_label(split_root, preprocessing):
    scan = scan_folder(split_root)
    image, label = ImageDataset(scan.val, build_eval_transform(preprocessing))[2]
    assert image.shape == (3, 32, 32)
    assert label == scan.val[2][1] == 1


def test_truncated_jpeg_raises_data_error_naming_the_file(split_root, make_image, preprocessing):
    broken = make_image(split_root / "train" / "cat" / "broken.jpg", size=(40, 40), seed=9)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    scan = scan_folder(split_root)  # the header still parses, so the scan keeps it
    index = [p for p, _ in scan.train].index(str(broken))
    dataset = ImageDataset(scan.train, build_eval_transform(preprocessing))
    with pytest.raises(DataError, match=r"Cannot decode .*broken\.jpg"):
        dataset[index]


# ---------------------------------------------------------------------------------------------------------------------
# DataModule


def test_datamodule_knows_its_classes_before_setup(split_root):
    dm = ImageFolderDataModule(split_root, num_workers=0)
    assert dm.classes == ["cat", "dog"]
    assert dm.num_classes == 2


def test_datamodule_train_batches_have_the_input_shape(split_root, preprocessing):
    dm = ImageFolderDataModule(split_root, preprocessing=preprocessing, batch_size=3, num_workers=0)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 32, 32)
    assert images.dtype == torch.float32
    assert labels.shape == (3,) and labels.dtype == torch.int64


def test_datamodule_val_batches_use_twice_the_batch_size(split_root, preprocessing):
    dm = ImageFolderDataModule(split_root, preprocessing=preprocessing, batch_size=1, num_workers=0)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32)
    assert labels.tolist() == [0, 1]  # val is not shuffled


def test_datamodule_without_preprocessing_or_model_asks_for_one(split_root):
    dm = ImageFolderDataModule(split_root, num_workers=0)
    with pytest.raises(ValueError, match=r"needs preprocessing"):
        dm.setup("fit")
