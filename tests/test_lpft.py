"""lp_ft as Kumar et al. 2022 do it (closed-form probe before the first epoch, a small head LR after it, optional
frozen BatchNorm) and training at a smaller input size than evaluation (FixRes)."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.lpft import ClosedFormProbe, ProbeError
from tlkit.model.module import TransferModule
from tlkit.model.schedules import GatedMultiplier, LRMultiplier
from tlkit.recipe import validate_recipe

CLASSES = ["blue", "green", "red"]


def lp_ft_module(**options) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES,
                          strategy={"kind": "lp_ft", **options}, optim={"lr": 0.05})


def trainer(epochs: int, callbacks: list, tmp_path) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     default_root_dir=tmp_path)


def datamodule(root, tmp_path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, batch_size=4, num_workers=0, cache={"dir": str(tmp_path / "cache")}, **kwargs)


class Watch(Callback):
    """The head at the first training step, input shapes of every batch, and what trained in epoch 0."""

    def __init__(self):
        self.head: dict[str, torch.Tensor] = {}
        self.train_shapes: list[tuple[int, ...]] = []
        self.val_shapes: list[tuple[int, ...]] = []
        self.trainable: set[str] = set()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not self.head:
            self.head = {k: v.detach().clone() for k, v in module.head.state_dict().items()}
            self.trainable = {n for n, p in module.classifier.named_parameters() if p.requires_grad}
        self.train_shapes.append(tuple(batch[0].shape[1:]))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.val_shapes.append(tuple(batch[0].shape[1:]))


def test_closed_form_probe_fits_the_head_before_the_first_epoch_on_a_plain_trainer(tmp_path):
    """No tlkit.fit: the module brings the probe callback; the datamodule extracts features for it; every epoch
    fine-tunes (images, backbone trained from epoch 0)."""
    from tlkit.model.probe import fit_logistic_head

    root = write_colour_classes(tmp_path / "c", per_class=9)
    module, dm, watch = lp_ft_module(), datamodule(root, tmp_path), Watch()
    assert all((p == 0).all() for p in module.head.parameters())  # zero-initialised head
    trainer(1, [watch], tmp_path).fit(module, datamodule=dm)

    probe = next(c for c in module.trainer.callbacks if isinstance(c, ClosedFormProbe))
    views, labels = dm.feature_splits().train.usable()
    smoothing = module.optim_config.label_smoothing
    weight, bias, _ = fit_logistic_head(views, labels, num_classes=3, seed=dm.seed,
                                        fine_tune_loss=lambda z, y: module.task.loss(z, y, smoothing=smoothing))
    torch.testing.assert_close(watch.head["0.weight"], weight)
    torch.testing.assert_close(watch.head["0.bias"], bias)
    assert probe.info["val_acc"] == pytest.approx(1.0)  # colours are linearly separable
    losses = probe.info["holdout_fine_tune_loss"]  # C is the one whose head starts the fine-tune at the lowest loss
    assert probe.info["C"] == min(losses, key=losses.get)
    assert {len(s) for s in watch.train_shapes} == {3}  # images, not features: no epoch is spent probing
    assert any(n.startswith("backbone.") for n in watch.trainable)
    assert dm.cache_info["used"] and dm.cache_info["served_epochs"] == 0


def test_the_probe_scores_each_c_with_the_loss_training_minimises(tmp_path, monkeypatch):
    """Label smoothing and class weights (data.balance: loss_weights) included: the held-out loss that picks C is
    the training step's loss."""
    import tlkit.model.probe as probe

    seen = {}
    real = probe.fit_logistic_head

    def spy(*args, **kwargs):
        seen["loss"] = kwargs["fine_tune_loss"]
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "fit_logistic_head", spy)
    root = write_colour_classes(tmp_path / "c", per_class=9)
    torch.manual_seed(0)
    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES,
                            strategy={"kind": "lp_ft"}, optim={"lr": 0.05, "label_smoothing": 0.1},
                            class_weights=[1.0, 2.0, 0.5])
    trainer(1, [], tmp_path).fit(module, datamodule=datamodule(root, tmp_path))
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 0.5]),
                                                 label_smoothing=0.1)
    torch.testing.assert_close(seen["loss"](logits, targets), expected)


def test_closed_form_probe_is_skipped_when_resuming(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=9)
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer(2, [every_epoch], tmp_path).fit(lp_ft_module(), datamodule=datamodule(root, tmp_path))
    saved = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    module, watch = lp_ft_module(), Watch()
    trainer(2, [watch], tmp_path).fit(module, datamodule=datamodule(root, tmp_path),
                                      ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    probe = next(c for c in module.trainer.callbacks if isinstance(c, ClosedFormProbe))
    assert probe.info == {}
    torch.testing.assert_close(watch.head["0.weight"], saved["head.0.weight"])  # the fine-tuned head, not a new probe


def test_closed_form_probe_without_features_says_what_to_do(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)

    class Plain(L.LightningDataModule):  # not tlkit's datamodule: nothing extracts features
        def train_dataloader(self):
            dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache=False,
                                       preprocessing=lp_ft_module().preprocessing)
            dm.setup("fit")
            return dm.train_dataloader()

    with pytest.raises(ProbeError, match="extracted none; fit with tlkit's ImageFolderDataModule, or use probe: sgd"):
        trainer(1, [], tmp_path).fit(lp_ft_module(), datamodule=Plain())


def test_frozen_batchnorm_keeps_running_statistics_while_its_scale_and_shift_train(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=9)
    module = lp_ft_module(batchnorm="frozen", backbone_lr_mult=1.0)
    before = {k: v.detach().clone() for k, v in module.backbone.state_dict().items()}
    trainer(1, [], tmp_path).fit(module, datamodule=datamodule(root, tmp_path))
    after = module.backbone.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    bn_weights = [k for k in before if k.endswith("bn1.weight")]
    assert bn_weights and any(not torch.equal(before[k], after[k]) for k in bn_weights)

    trained = lp_ft_module(batchnorm="train", backbone_lr_mult=1.0)
    trainer(1, [], tmp_path).fit(trained, datamodule=datamodule(root, tmp_path))
    assert any(not torch.equal(before[k], trained.backbone.state_dict()[k]) for k in stats)


def test_fit_records_the_probe_and_fine_tunes_at_the_small_head_lr(colour_folder, tmp_path):
    import csv

    from tlkit.run import fit

    recipe = validate_recipe(tiny_recipe_dict(colour_folder, backbone={"name": "test_resnet"},
                                              strategy={"kind": "lp_ft", "head_lr_mult": 0.2},
                                              optim={"lr": 0.05}, schedule={"kind": "constant"},
                                              trainer={"epochs": 2}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert set(metrics["probe"]) >= {"C", "holdout_acc", "val_acc"}
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("lr-SGD/head")]
    assert [float(r["lr-SGD/head"]) for r in rows] == pytest.approx([0.05 * 0.2] * 2)
    assert [float(r["lr-SGD/backbone"]) for r in rows] == pytest.approx([0.05 * 0.1] * 2)


def test_sgd_probe_head_lr_drops_to_head_lr_mult_at_the_fine_tune_with_a_fresh_warmup():
    head = GatedMultiplier("cosine", total_steps=20, warmup_steps=2, starts=(0, 8), scales=(1.0, 0.1), restart=True)
    probe = LRMultiplier("cosine", total_steps=8, warmup_steps=2)
    tune = LRMultiplier("cosine", total_steps=12, warmup_steps=2)
    assert [head(s) for s in range(20)] == pytest.approx([probe(s) for s in range(8)]
                                                         + [0.1 * tune(s) for s in range(12)])
    with pytest.raises(ValueError, match="one factor per start"):
        GatedMultiplier("cosine", total_steps=4, starts=(0, 2), scales=(1.0,))


@pytest.mark.parametrize("strategy,epochs,message", [
    ({"kind": "lp_ft", "probe": "sgd", "probe_epochs": 2}, 2, "probe_epochs (2) must be less than trainer.epochs"),
    ({"kind": "lp_ft", "head_lr_mult": 0}, 2, "strategy.head_lr_mult"),
    ({"kind": "lp_ft", "batchnorm": "fixed"}, 2, "strategy.batchnorm"),
])
def test_recipe_rejects_lp_ft_settings_that_cannot_run(tmp_path, strategy, epochs, message):
    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match=re.escape(message)):
        validate_recipe(tiny_recipe_dict(tmp_path, strategy=strategy, trainer={"epochs": epochs}))


def test_recipe_closed_form_probe_needs_a_linear_head_and_no_probe_epochs(tmp_path):
    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match=re.escape("head.hidden must be []")):
        validate_recipe(tiny_recipe_dict(tmp_path, strategy={"kind": "lp_ft"}, head={"hidden": [8]}))
    # closed_form spends no epochs on the probe: probe_epochs is not checked against a 1-epoch run
    validate_recipe(tiny_recipe_dict(tmp_path, strategy={"kind": "lp_ft", "probe_epochs": 3}, trainer={"epochs": 1}))


# -- FixRes: train at one size, evaluate at another ---------------------------------------------------------------


def test_train_input_size_crops_training_images_smaller_while_eval_and_checkpoint_use_input_size(tmp_path):
    from tlkit.infer.checkpoint import load_checkpoint

    root = write_colour_classes(tmp_path / "c", per_class=6, size=48)
    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 40, "train_input_size": 32},
                            CLASSES, strategy="finetune")
    watch = Watch()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer(1, [watch, checkpoint], tmp_path).fit(module, datamodule=datamodule(root, tmp_path, augment="light"))
    assert set(watch.train_shapes) == {(3, 32, 32)}
    assert set(watch.val_shapes) == {(3, 40, 40)}
    assert load_checkpoint(checkpoint.best_model_path).preprocessing.input_size == 40


def test_train_input_size_gives_the_probe_features_of_training_sized_views(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6, size=48)
    same = datamodule(root, tmp_path)
    trainer(1, [], tmp_path).fit(lp_ft_module(), datamodule=same)
    small = datamodule(root, tmp_path)
    torch.manual_seed(0)  # the same random weights as lp_ft_module()'s
    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32, "train_input_size": 24},
                            CLASSES, strategy="lp_ft")
    trainer(1, [], tmp_path).fit(module, datamodule=small)
    assert small.feature_splits().train_preprocessing.input_size == 24
    assert not torch.equal(same.feature_splits().train.views.tensor(), small.feature_splits().train.views.tensor())
    torch.testing.assert_close(same.feature_splits().val.views.tensor(), small.feature_splits().val.views.tensor())
