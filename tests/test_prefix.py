"""finetune_top: the backbone cut at a layer-group boundary, the frozen prefix's activations cached once (float16),
the top groups + head trained on them, and a checkpoint that still predicts from images."""

from __future__ import annotations

import csv
import logging

import lightning as L
import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.cache import CachedActivations
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.errors import BackboneError, DataError, RecipeError
from tlkit.model.module import TransferModule
from tlkit.model.prefix import split_backbone
from tlkit.recipe import validate_recipe

CLASSES = ["blue", "green", "red"]


def top_module(arch: str = "test_efficientnet", **strategy) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule({"name": arch, "weights": "none", "input_size": 32}, CLASSES,
                          strategy={"kind": "finetune_top", **strategy}, optim={"lr": 0.05})


def datamodule(root, tmp_path, **cache) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, batch_size=4, num_workers=0, seed=0,
                                 cache={"dir": str(tmp_path / "cache"), **cache})


@pytest.mark.parametrize("arch,train_top,last_frozen,first_trained", [
    ("test_efficientnet", 1, "blocks.3", "blocks.4"),
    ("test_efficientnet", 3, "blocks.1", "blocks.2"),
    ("test_resnet", 2, "layer2", "layer3"),
])
def test_the_cut_falls_on_the_group_boundary_and_the_chain_is_the_backbone(arch, train_top, last_frozen, first_trained):
    module = top_module(arch, train_top=train_top)
    split = module.prefix_split
    assert (split.prefix_names[-1], split.top_names[0]) == (last_frozen, first_trained)
    trained = {n for s in module.group_specs if s.unfreeze_epoch is not None for n in s.params}
    in_top = {f"backbone.{m}.{p}" for m, mod in zip(split.top_names, split.top_modules) for p, _ in mod.named_parameters()}
    assert in_top == {n for n in trained if n.startswith("backbone.")}
    module.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(images), module.head(split.run_top(split.prefix()(images))), atol=1e-6)


def test_frozen_parameters_above_trained_ones_cannot_be_cut():
    backbone = top_module().backbone
    frozen = [n for n, _ in backbone.named_parameters() if not n.startswith(("blocks.4", "conv_head", "bn2"))]
    frozen += [n for n, _ in backbone.named_parameters() if n.startswith("blocks.4.0.conv_pw")]  # inside block 4.0
    with pytest.raises(BackboneError, match="not the top of its forward chain"):
        split_backbone(backbone, frozen, input_size=32)


def test_train_top_must_leave_a_frozen_group():
    with pytest.raises(RecipeError, match=r"train_top: 6, but EfficientNet has 6 coarse layer groups.*1 to 5"):
        top_module(train_top=6)


def test_a_backbone_that_is_not_a_chain_of_its_modules_is_refused():
    with pytest.raises(BackboneError, match="cannot be cut into a frozen prefix"):
        TransferModule({"name": "test_vit", "weights": "none"}, CLASSES, strategy={"kind": "finetune_top"})


def test_the_cache_holds_float16_activations_per_view_and_val(tmp_path, caplog):
    root = write_colour_classes(tmp_path / "colours")
    module = top_module(train_top=2)
    dm = datamodule(root, tmp_path, views=3)
    with caplog.at_level(logging.INFO):
        dm.setup_for(module, stage="fit", epochs=2)
    assert isinstance(dm.train_set, CachedActivations) and isinstance(dm.val_set, CachedActivations)
    shape = module.prefix_split.output_shape(32)
    assert dm.train_set.views.shape == (3, len(dm.scan.train), *shape)
    assert dm.val_set.views.shape == (1, len(dm.scan.val), *shape)
    assert dm.train_set.views.dtype == torch.float16
    assert "prefix cache: 24 images x 3 view(s) + 12 val x " + "x".join(map(str, shape)) + " fp16" in caplog.text
    inputs, _ = dm.train_set[0]
    assert set(inputs) == {"activations"} and inputs["activations"].shape == shape


def test_a_cache_above_max_gb_is_refused_before_any_extraction(tmp_path):
    root = write_colour_classes(tmp_path / "colours")
    dm = datamodule(root, tmp_path, max_gb=1e-6)
    with pytest.raises(DataError, match=r"above cache.max_gb: 1e-06; lower cache.views"):
        dm.setup_for(top_module(), stage="fit", epochs=2)
    assert not (tmp_path / "cache").exists()


def test_a_step_from_the_cache_gives_the_loss_of_the_images_through_the_whole_model(tmp_path):
    """Deterministic input: the cached view is the image's eval transform, so the cached path (float16 activations
    -> top -> head) must give the loss that the same module computes from the images, within float16 rounding."""
    root = write_colour_classes(tmp_path / "colours")
    module = top_module(train_top=2)
    module.train()
    module.set_phase(0)
    cached = datamodule(root, tmp_path, views=1).replace(augment="none")
    cached.setup_for(module, stage="fit", epochs=1)
    images = cached.replace(cache=False)
    images.setup_for(module, stage="fit", epochs=1)
    assert isinstance(images.train_set, torch.utils.data.Dataset) and not isinstance(images.train_set, CachedActivations)
    batch = [cached.train_set[i] for i in range(8)]
    activations = torch.stack([a["activations"] for a, _ in batch])
    labels = torch.stack([torch.as_tensor(y) for _, y in batch])
    pictures = torch.stack([images.train_set[i][0] for i in range(8)])
    torch.manual_seed(1)
    from_cache = module.training_step(({"activations": activations}, labels), 0)
    torch.manual_seed(1)
    from_images = module.training_step((pictures, labels), 0)
    assert from_cache.item() == pytest.approx(from_images.item(), rel=2e-3, abs=2e-3)
    assert from_cache.requires_grad
    trained = {n for n, p in module.classifier.named_parameters() if p.requires_grad}
    assert trained == {n for s in module.group_specs if s.unfreeze_epoch is not None for n in s.params}
    assert all(not m.training for m in module.prefix_split.prefix_modules)  # frozen BatchNorm keeps its statistics


def test_fit_trains_the_top_from_the_cache_and_the_checkpoint_predicts_from_images(tmp_path):
    from tlkit.infer.checkpoint import load_checkpoint
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "colours")
    # test_resnet: its random features vary with colour (test_efficientnet's top, trained in 9 steps, validates at
    # chance with BatchNorm statistics that few steps cannot settle, with or without the cache)
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                              strategy={"kind": "finetune_top", "train_top": 2},
                                              cache={"dir": str(tmp_path / "cache"), "views": 2},
                                              optim={"name": "adamw", "lr": 0.01}, trainer={"epochs": 3}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    cache = metrics["feature_cache"]
    assert cache["used"] and cache["views"] == 2 and cache["prefix"]["trained_top"][0] == "layer3"
    assert metrics["val_acc"] >= 0.9, metrics  # the top learnt the colours (chance: 1/3)
    best = load_checkpoint(metrics["best_checkpoint"])
    assert best.prefix_split is not None
    # Random init starts every BatchNorm at mean 0 / var 1: the trained top's moved, the frozen prefix's did not.
    state = best.state_dict()
    assert not torch.equal(state["backbone.layer3.0.bn1.running_mean"], torch.zeros_like(
        state["backbone.layer3.0.bn1.running_mean"]))
    for name in ("backbone.bn1.running_mean", "backbone.layer2.0.bn1.running_mean"):
        assert torch.equal(state[name], torch.zeros_like(state[name]))

    # The saved model runs from images: its val accuracy and loss from images match the ones fit logged from float16
    # activations (the loss within float16 rounding; a top that learnt nothing would not reach the accuracy).
    images = ImageFolderDataModule(root, batch_size=8, num_workers=0, cache=False)
    results = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        best, datamodule=images, verbose=False)
    logged = {r["epoch"]: r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r.get("val_loss")}
    at_best = logged[str(torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["epoch"])]
    assert results[0]["val_acc"] == pytest.approx(metrics["best_val_acc"], abs=1e-6) and results[0]["val_acc"] >= 0.9
    assert results[0]["val_loss"] == pytest.approx(float(at_best["val_loss"]), rel=1e-2, abs=1e-3)
    from tlkit.cli.main import main

    assert main(["evaluate", "--checkpoint", metrics["best_checkpoint"], "--data", str(root),
                 "--out", str(tmp_path / "evaluation")]) == 0
    assert main(["predict", "--checkpoint", metrics["best_checkpoint"], str(root / "val"),
                 "--out", str(tmp_path / "predictions.csv")]) == 0
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 1 + 12


def test_tlkit_check_runs_its_overfit_on_cached_activations(tmp_path):
    from tlkit.run.tuning import check

    root = write_colour_classes(tmp_path / "colours")
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                              strategy={"kind": "finetune_top", "train_top": 2},
                                              cache={"dir": str(tmp_path / "cache")}, optim={"name": "adamw", "lr": 0.01}))
    report = check(recipe, steps=15)
    assert report["inputs"] == "cached features"
    (first_loss, _), (last_loss, _) = report["history"][0], report["history"][-1]
    assert last_loss < first_loss  # the top + head learn from the activations


def test_a_plain_lightning_trainer_gets_the_prefix_cache(tmp_path):
    root = write_colour_classes(tmp_path / "colours")
    module = top_module(train_top=1)
    dm = datamodule(root, tmp_path)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(module, datamodule=dm)
    assert isinstance(dm.train_set, CachedActivations)
    assert dm.cache_info["prefix"]["trained_top"][0] == "blocks.4"
    assert "val_acc" in dict(module.trainer.callback_metrics)


def test_the_same_cut_reads_the_disk_cache_and_another_cut_computes_its_own(tmp_path):
    root = write_colour_classes(tmp_path / "colours")
    first = datamodule(root, tmp_path)
    first.setup_for(top_module(train_top=2), stage="fit", epochs=1)
    again = datamodule(root, tmp_path)
    again.setup_for(top_module(train_top=2), stage="fit", epochs=1)
    other = datamodule(root, tmp_path)
    other.setup_for(top_module(train_top=3), stage="fit", epochs=1)
    assert first.cache_info["extracted"] == 36 and first.cache_info["from_disk"] == 0
    assert again.cache_info["from_disk"] == 36 and again.cache_info["extracted"] == 0
    assert torch.equal(again.train_set.views.tensor(), first.train_set.views.tensor())
    assert other.cache_info["extracted"] == 36 and other.train_set.views.shape != first.train_set.views.shape
