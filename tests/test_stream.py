"""Streaming data on LitData: a folder optimized into chunks keeps its split, classes and counts, trains like the
folder through a plain Lightning Trainer, and bad inputs are refused in one line."""

from __future__ import annotations

import io
import json

import lightning as L
import pytest
from conftest import write_colour_classes
from PIL import Image

pytest.importorskip("litdata")

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.stream import MANIFEST, StreamDataModule, optimize_data, read_manifest
from tlkit.errors import DataError
from tlkit.model.module import TransferModule

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def folder_and_stream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    root = write_colour_classes(tmp / "colours")
    optimize_data(root, tmp / "stream", num_workers=2, progress=False, max_side=64)  # 36-44 px kept
    return root, tmp / "stream"


def tiny_module() -> TransferModule:
    return TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES,
                          strategy={"kind": "linear_probe"}, optim={"name": "adamw", "lr": 0.05})


def train_and_validate(datamodule: L.LightningDataModule) -> dict:
    L.seed_everything(0, verbose=False)
    module = tiny_module()
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    seen = {"train_batches": trainer.num_training_batches}
    return {**seen, **{k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}}


def test_optimize_keeps_the_folder_split_classes_and_counts(folder_and_stream):
    root, stream = folder_and_stream
    folder = ImageFolderDataModule(root, num_workers=0)
    manifest = read_manifest(stream)
    assert manifest["classes"] == folder.classes == CLASSES
    assert manifest["splits"]["train"]["images"] == len(folder.scan.train) == 24
    assert manifest["splits"]["val"]["images"] == len(folder.scan.val) == 12
    assert manifest["splits"]["val"]["per_class"] == {"blue": 4, "green": 4, "red": 4}
    assert "test" not in manifest["splits"]


def test_optimize_stores_jpegs_no_larger_than_max_side(folder_and_stream, tmp_path):
    from litdata import StreamingDataset

    root, _ = folder_and_stream
    optimize_data(root, tmp_path / "small", num_workers=1, progress=False, max_side=24)
    sample = StreamingDataset(str(tmp_path / "small" / "train"))[0]
    image = Image.open(io.BytesIO(sample["image"]))
    assert image.format == "JPEG" and max(image.size) <= 24  # the 36-44 px originals were scaled down
    assert sample["label"] in (0, 1, 2)


def test_stream_trains_like_the_folder(folder_and_stream):
    root, stream = folder_and_stream
    from_folder = train_and_validate(ImageFolderDataModule(root, batch_size=8, num_workers=0, cache=False, seed=0))
    from_stream = train_and_validate(StreamDataModule(stream, batch_size=8, num_workers=0, seed=0))
    assert from_stream["train_batches"] == from_folder["train_batches"] == 3
    assert from_folder["val_acc"] > 0.6  # the colours are separable: both runs learn them...
    assert abs(from_stream["val_acc"] - from_folder["val_acc"]) <= 1 / 12 + 1e-6  # ...to within one val image


def test_stream_datamodule_knows_its_classes_before_setup(folder_and_stream):
    _, stream = folder_and_stream
    dm = StreamDataModule(stream)
    assert dm.classes == CLASSES and dm.num_classes == 3 and not dm.multi_label
    assert dm.class_weights == pytest.approx([1.0, 1.0, 1.0])


def test_optimize_refuses_a_non_empty_output(folder_and_stream, tmp_path):
    root, _ = folder_and_stream
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty; choose a new folder or pass --overwrite"):
        optimize_data(root, tmp_path, progress=False)
    with pytest.raises(DataError, match="holds no tlkit stream"):
        optimize_data(root, tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"  # nothing a user gave is lost


def test_optimize_overwrites_an_earlier_stream_when_asked(folder_and_stream, tmp_path):
    root, _ = folder_and_stream
    optimize_data(root, tmp_path / "s", num_workers=1, progress=False, max_side=16)
    manifest = optimize_data(root, tmp_path / "s", num_workers=1, progress=False, max_side=20, overwrite=True)
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["encoding"]["max_side"] == 20 == \
        manifest["encoding"]["max_side"]


def test_a_folder_that_is_not_a_stream_is_refused_with_the_fix(folder_and_stream):
    root, _ = folder_and_stream
    with pytest.raises(DataError, match="is not a tlkit stream .* tlkit data optimize") as info:
        StreamDataModule(root)
    assert "\n" not in str(info.value)


def test_cli_optimize_writes_a_stream_and_refuses_a_missing_output(folder_and_stream, tmp_path, capsys):
    from tlkit.cli.main import main

    root, _ = folder_and_stream
    assert main(["data", "optimize", str(root), str(tmp_path / "out"), "--workers", "1", "--max-side", "24"]) == 0
    assert read_manifest(tmp_path / "out")["splits"]["train"]["images"] == 24
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "optimize", str(root)])
    assert exit_info.value.code == 2
    assert "OUT" in capsys.readouterr().err
