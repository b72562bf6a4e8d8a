"""Streaming data on LitData: a folder optimized into chunks keeps its split, classes and counts, trains like the
folder through a plain Lightning Trainer and through a recipe (data.source: litdata: cached features, strategy auto,
preflight and provenance without image files, exact resume, DDP), and bad inputs are refused in one line."""

from __future__ import annotations

import io
import json

import lightning as L
import pytest
import torch
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
    optimize_data(root, tmp / "stream", num_workers=2, progress=False, short_side=64)  # 36 px kept
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
    # Training images are stored in a seeded random order, not class by class: LitData gives each loader worker a
    # contiguous part of a chunk, and a class-sorted stream would fill each worker's batches with one or two classes.
    labels = manifest["splits"]["train"]["labels"]
    assert sorted(labels) == sorted(y for _, y in folder.scan.train)
    assert set(labels[:12]) == set(labels[12:]) == {0, 1, 2}
    # A run lists them in the folder's order again, so cached features are drawn in the folder run's batches.
    scan = StreamDataModule(stream).scan
    assert [y for _, y in scan.train] == [y for _, y in folder.scan.train]
    assert sorted(int(i.rsplit("#", 1)[1]) for i, _ in scan.train) == list(range(24))


def test_optimize_stores_jpegs_with_the_shorter_side_bounded(folder_and_stream, tmp_path):
    from litdata import StreamingDataset

    root, _ = folder_and_stream
    optimize_data(root, tmp_path / "small", num_workers=1, progress=False, short_side=24)
    sample = StreamingDataset(str(tmp_path / "small" / "train"))[0]
    image = Image.open(io.BytesIO(sample["image"]))
    assert image.format == "JPEG" and min(image.size) == 24  # 36 x 36-44 px originals, scaled down...
    assert max(image.size) < 36  # ...keeping their shape
    assert sample["label"] in (0, 1, 2)


def test_stream_trains_like_the_folder(folder_and_stream):
    root, stream = folder_and_stream
    from_folder = train_and_validate(ImageFolderDataModule(root, batch_size=8, num_workers=0, cache=False, seed=0))
    from_stream = train_and_validate(StreamDataModule(stream, batch_size=8, num_workers=0, seed=0, cache=False))
    assert from_stream["train_batches"] == from_folder["train_batches"] == 3
    assert from_folder["val_acc"] > 0.6  # the colours are separable: both runs learn them...
    assert abs(from_stream["val_acc"] - from_folder["val_acc"]) <= 1 / 12 + 1e-6  # ...to within one val image


def test_a_linear_probe_on_a_plain_trainer_reads_cached_stream_features(folder_and_stream, tmp_path):
    _, stream = folder_and_stream
    data = StreamDataModule(stream, batch_size=8, num_workers=0, seed=0, cache={"dir": str(tmp_path)})
    result = train_and_validate(data)
    assert data.cache_info["used"] and data.cache_info["extracted"] == 24 + 12
    assert result["val_acc"] > 0.6 and result["train_batches"] == 3


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
    optimize_data(root, tmp_path / "s", num_workers=1, progress=False, short_side=16)
    manifest = optimize_data(root, tmp_path / "s", num_workers=1, progress=False, short_side=20, overwrite=True)
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["encoding"]["short_side"] == 20 == \
        manifest["encoding"]["short_side"]


def test_a_folder_that_is_not_a_stream_is_refused_with_the_fix(folder_and_stream):
    root, _ = folder_and_stream
    with pytest.raises(DataError, match="is not a tlkit stream .* tlkit data optimize") as info:
        StreamDataModule(root)
    assert "\n" not in str(info.value)


def test_cli_optimize_writes_a_stream_and_refuses_a_missing_output(folder_and_stream, tmp_path, capsys):
    from tlkit.cli.main import main

    root, _ = folder_and_stream
    assert main(["data", "optimize", str(root), str(tmp_path / "out"), "--workers", "1", "--short-side", "24"]) == 0
    assert read_manifest(tmp_path / "out")["splits"]["train"]["images"] == 24
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "optimize", str(root)])
    assert exit_info.value.code == 2
    assert "OUT" in capsys.readouterr().err


# -- tlkit train from a stream (recipe data.source: litdata) ------------------------------------------------------


def stream_recipe(stream, **sections) -> dict:
    from conftest import tiny_recipe_dict

    sections = {"backbone": {"name": "test_resnet"}, "optim": {"name": "adamw", "lr": 0.05}, **sections}
    sections["data"] = {"source": "litdata", **sections.get("data", {})}
    return tiny_recipe_dict(stream, **sections)


@pytest.mark.parametrize(("data", "message"), [
    ({"val_fraction": 0.3}, "val_fraction cannot apply to source: litdata .* tlkit data optimize"),
    ({"csv": "mine.csv", "exclude": ["a.png"]}, "csv, exclude cannot apply to source: litdata"),
    ({"balance": "sampler"}, "balance: sampler cannot draw from a stream .* loss_weights"),
])
def test_a_recipe_cannot_change_what_the_stream_fixed_when_written(tmp_path, data, message):
    from tlkit.errors import RecipeError
    from tlkit.recipe import validate_recipe

    with pytest.raises(RecipeError, match=message) as info:
        validate_recipe(stream_recipe(tmp_path, data=data))
    assert len(str(info.value).strip().splitlines()) == 2  # "recipe: 1 problem(s):" and the problem on one line


@pytest.fixture(scope="module")
def stream_without_images(tmp_path_factory):
    """A folder with one image copied across train and val, its folder run (linear probe on cached features), then
    its stream with the folder deleted: a run from the stream must not need any image file."""
    import shutil

    from conftest import tiny_recipe_dict

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    tmp = tmp_path_factory.mktemp("no_images")
    root = write_colour_classes(tmp / "colours")
    shutil.copy(root / "train" / "red" / "red_00.png", root / "val" / "red" / "copy_of_red_00.png")
    cache = {"dir": str(tmp / "cache")}
    folder = fit(validate_recipe(tiny_recipe_dict(root, **{k: v for k, v in stream_recipe(root).items()
                                                           if k in ("backbone", "optim")}, cache=cache)),
                 run_dir=tmp / "folder_run")
    optimize_data(root, tmp / "stream", num_workers=2, progress=False, short_side=64)
    shutil.rmtree(root)
    return tmp, folder, cache


def test_train_from_a_stream_caches_features_reads_no_image_and_matches_the_folder(stream_without_images):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    tmp, folder, cache = stream_without_images
    recipe = validate_recipe(stream_recipe(tmp / "stream", cache=cache))
    first = fit(recipe, run_dir=tmp / "stream_run")
    assert first["feature_cache"]["used"] and first["feature_cache"]["extracted"] == 24 + 13
    assert (first["num_train"], first["num_val"]) == (folder["num_train"], folder["num_val"]) == (24, 13)
    assert abs(first["val_acc"] - folder["val_acc"]) <= 1 / 13 + 1e-6  # within one val image of the folder run
    assert any("byte-identical across splits" in line for line in first["data_warnings"])  # checked when written
    data = json.loads((tmp / "stream_run" / "provenance.json").read_text())["data"]
    assert data["files"] == 5 and "content_sha256" in data  # manifest + index and chunk of each split
    again = fit(recipe, run_dir=tmp / "stream_run_2")
    assert (again["feature_cache"]["from_disk"], again["feature_cache"]["extracted"]) == (37, 0)
    assert again["val_acc"] == first["val_acc"]


def test_strategy_auto_measures_on_the_stream_items(stream_without_images):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    tmp, _, cache = stream_without_images
    metrics = fit(validate_recipe(stream_recipe(tmp / "stream", strategy={"kind": "auto"}, cache=cache,
                                                trainer={"epochs": 1})), run_dir=tmp / "auto_run")
    decision = metrics["strategy_auto"]
    assert decision["train_images"] == 24 and decision["kind"] == "linear_probe"
    assert decision["holdout"]["last"]["score"] is not None  # measured on features of the stream's items


class _Stop(Exception):
    pass


class _StopInSecondEpoch(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise _Stop


def test_a_stream_run_stopped_mid_epoch_resumes_to_the_uninterrupted_run(folder_and_stream, tmp_path):
    """Fine-tuning reads the stream every epoch (random crops and flips): stopped in epoch 2 and resumed from the
    epoch-1 checkpoint, it sees the same batches and augmentations and ends with the same metrics."""
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit
    from tlkit.run.resume import load_run_recipe

    _, stream = folder_and_stream
    recipe = validate_recipe(stream_recipe(stream, strategy={"kind": "finetune"}, augment="light",
                                           data={"batch_size": 4}, trainer={"epochs": 3}))
    whole = fit(recipe, run_dir=tmp_path / "whole")
    with pytest.raises(_Stop):
        fit(recipe, run_dir=tmp_path / "stopped", callbacks=[_StopInSecondEpoch()])
    resumed = fit(load_run_recipe(tmp_path / "stopped"), run_dir=tmp_path / "stopped", resume=True)
    assert resumed["resumed_from_epoch"] == 1
    for key in ("val_acc", "val_loss", "train_acc", "train_loss", "best_val_acc", "epochs"):
        assert resumed[key] == whole[key], key
    assert (tmp_path / "stopped" / "metrics.csv").read_text() == (tmp_path / "whole" / "metrics.csv").read_text()


@pytest.mark.slow  # ~30 s each: two fresh Python processes import torch + Lightning
@pytest.mark.parametrize("kind", ["finetune", "linear_probe"])
def test_two_process_ddp_fit_from_a_stream_trains_in_sync(tmp_path, kind):
    """LitData shards the stream between the two ranks (gloo on CPU); both replicas end with the same weights and
    one run directory is written. A linear probe's stream features are extracted half by each rank."""
    from test_distributed import run_two_ranks

    root = write_colour_classes(tmp_path / "colours")
    optimize_data(root, tmp_path / "stream", num_workers=1, progress=False, short_side=64)
    # eval batch 2: LitData deals a stream to the ranks in whole batches, and 12 val images in batches of 8 (the
    # default, twice batch_size) leave a rank none
    recipe = stream_recipe(tmp_path / "stream", strategy={"kind": kind}, cache={"dir": str(tmp_path / "cache")},
                           data={"batch_size": 4, "eval_batch_size": 2},
                           trainer={"epochs": 2, "devices": 2, "strategy": "ddp"})
    run_dir = run_two_ranks(tmp_path, recipe, "torchrun")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["num_train"] == 24
    rank0, rank1 = (torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"replicas diverged at {key}"
    trained = "head." if kind == "linear_probe" else "backbone."
    assert any(not torch.equal(v, rank0["initial"][k]) for k, v in rank0["final"].items() if k.startswith(trained))
    if kind == "linear_probe":  # rank 0's share of the 36 rows, the rest read from what rank 1 wrote
        assert metrics["feature_cache"]["used"] and metrics["feature_cache"]["extracted"] == 18


def test_folder_commands_given_a_stream_say_what_it_is_in_one_line(tmp_path, capsys):
    """doctor, audit, and evaluate/training with a folder source (both scan the folder) name the stream."""
    from tlkit.cli.main import main
    from tlkit.data.scan import scan_folder
    from tlkit.errors import DataError

    root = write_colour_classes(tmp_path / "colours", per_class=3)
    stream = tmp_path / "stream"
    optimize_data(root, stream, num_workers=1, progress=False, short_side=16)
    said = "is a stream written by tlkit data optimize, not an image folder"
    for args in (["doctor", str(stream)], ["audit", str(stream), "--out", str(tmp_path / "audit")]):
        assert main(args) != 0
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err and "Traceback" not in err
    with pytest.raises(DataError, match=said):
        scan_folder(stream)
