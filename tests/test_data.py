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


@pytest.mark.parametrize("val_name", ["valid", "validation"])
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


def test_val_or_test_folder_without_train_folder_is_a_data_error(tmp_path, make_class_folders):
    make_class_folders(tmp_path / "test", {"cat": 2, "dog": 2})
    with pytest.raises(DataError, match=r"has test/ but no train/ folder"):
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


# ---------------------------------------------------------------------------------------------------------------------
# Honest splits: val chooses checkpoints, test is never used for selection


def _paths(samples) -> set[str]:
    return {p for p, _ in samples}


def test_split_layout_with_a_test_folder_keeps_test_out_of_train_and_val(split_root, make_class_folders):
    make_class_folders(split_root / "test", {"cat": 2, "dog": 1})
    scan = scan_folder(split_root)
    assert scan.layout == "split"
    assert all("/val/" in p for p in _paths(scan.val))
    assert all("/test/" in p for p in _paths(scan.test)) and labels_of(scan.test) == {0: 2, 1: 1}
    assert not any("/test/" in p for p in _paths(scan.train) | _paths(scan.val))


def test_train_and_test_folders_carve_val_from_train_seeded_and_stratified(tmp_path, make_class_folders):
    make_class_folders(tmp_path / "train", {"cat": 10, "dog": 5})
    make_class_folders(tmp_path / "test", {"cat": 3, "dog": 3})
    scan = scan_folder(tmp_path, val_fraction=0.2, seed=1)
    assert scan.layout == "carved"
    assert labels_of(scan.val) == {0: 2, 1: 1}  # per class
    assert all("/train/" in p for p in _paths(scan.train) | _paths(scan.val))
    assert not _paths(scan.train) & _paths(scan.val)
    assert all("/test/" in p for p in _paths(scan.test)) and len(scan.test) == 6
    assert scan_folder(tmp_path, val_fraction=0.2, seed=1).val == scan.val
    assert scan_folder(tmp_path, val_fraction=0.2, seed=2).val != scan.val


def test_train_folder_alone_carves_val_from_it(tmp_path, make_class_folders):
    make_class_folders(tmp_path / "train", {"cat": 4, "dog": 4})
    scan = scan_folder(tmp_path, val_fraction=0.25)
    assert scan.layout == "carved" and labels_of(scan.val) == {0: 1, 1: 1} and scan.test == []


def test_flat_folder_has_no_test_split_by_default(single_root):
    assert scan_folder(single_root).test == []


def test_flat_folder_test_fraction_carves_a_disjoint_stratified_test_split(single_root):
    scan = scan_folder(single_root, val_fraction=0.2, test_fraction=0.3, seed=4)
    assert labels_of(scan.val) == {0: 2, 1: 2, 2: 2} and labels_of(scan.test) == {0: 3, 1: 3, 2: 3}
    train, val, test = _paths(scan.train), _paths(scan.val), _paths(scan.test)
    assert not (train & val or train & test or val & test) and len(train | val | test) == 30
    # val does not depend on test_fraction: a checkpoint's val split is re-created from (val_fraction, seed)
    assert scan_folder(single_root, val_fraction=0.2, seed=4).val == scan.val


def test_a_class_too_small_for_a_test_image_keeps_its_train_and_val(tmp_path, make_class_folders):
    make_class_folders(tmp_path, {"cat": 2, "dog": 10})
    scan = scan_folder(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert labels_of(scan.train)[0] == 1 and labels_of(scan.val)[0] == 1 and labels_of(scan.test) == {1: 2}


def test_test_class_missing_from_train_is_a_data_error(split_root, make_class_folders):
    make_class_folders(split_root / "test", {"fox": 1})
    with pytest.raises(DataError, match=r"test has classes missing from .*train: fox"):
        scan_folder(split_root)


def test_fractions_are_validated_by_data_config(single_root):
    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match="val_fraction \\+ test_fraction must be below 1"):
        ImageFolderDataModule(single_root, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(RecipeError, match="batch_size"):
        ImageFolderDataModule(single_root, batch_size=0)


def test_datamodule_defaults_are_the_recipe_defaults(single_root):
    import inspect

    from tlkit.recipe import validate_recipe
    from tlkit.recipe.sections import Recipe

    params = inspect.signature(ImageFolderDataModule).parameters
    recipe = validate_recipe({"data": {"root": str(single_root)}})
    for name in recipe.data.model_fields:
        if name in params and name != "root":
            assert params[name].default == getattr(recipe.data, name), name
    assert params["seed"].default == Recipe.model_fields["seed"].default
    dm = ImageFolderDataModule(single_root)
    assert dm.cache == recipe.cache and dm.augment == recipe.augment


def test_replace_reuses_the_scan_unless_the_split_changes(single_root):
    dm = ImageFolderDataModule(single_root, num_workers=0, seed=3)
    same = dm.replace(first_epoch=2, bad_log="x.txt", balance="sampler")
    assert same.scan is dm.scan and same.first_epoch == 2 and same.sample_weights is not None
    other = dm.replace(seed=4)
    assert other.scan is not dm.scan and other.scan.val != dm.scan.val
    with pytest.raises(TypeError, match="unknown argument"):
        dm.replace(colour="red")


# ---------------------------------------------------------------------------------------------------------------------
# Symlinks


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_folder_linked_outside_the_root_is_refused(tmp_path, make_class_folders, split):
    root = tmp_path / "data"
    for name in {"train", "val", "test"} - {split}:
        make_class_folders(root / name, {"cat": 2, "dog": 2})
    make_class_folders(tmp_path / "elsewhere", {"cat": 2, "dog": 2})
    (root / split).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=rf"{split} is a symlink to .*elsewhere, outside the data folder"):
        scan_folder(root)


def test_a_split_folder_linked_inside_the_root_is_followed(tmp_path, make_class_folders):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"cat": 2, "dog": 2})
    make_class_folders(root / "versions" / "val_v2", {"cat": 1, "dog": 1})
    (root / "val").symlink_to(root / "versions" / "val_v2")
    assert len(scan_folder(root).val) == 2


def test_symlink_loops_and_broken_links_are_skipped_and_listed(split_root):
    folder = split_root / "train" / "cat"
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder / "sub")  # a directory loop: never walked into
    scan = scan_folder(split_root)
    skipped = {Path(p).name: why for p, why in scan.skipped}
    assert skipped["loop_a.png"] == skipped["loop_b.png"] == "symlink loop (never reaches a file)"
    assert skipped["gone.png"] == "broken symlink (target missing)"
    assert labels_of(scan.train) == {0: 3, 1: 4}


def test_a_class_of_one_image_in_a_folder_to_split_is_named_in_the_error(tmp_path):
    from conftest import write_class_folders

    from tlkit.data.scan import scan_folder
    from tlkit.errors import DataError

    write_class_folders(tmp_path / "data", {"ants": 4, "bees": 1})
    with pytest.raises(DataError, match=r"fewer than 2 images into train and val \(bees\)"):
        scan_folder(tmp_path / "data")
