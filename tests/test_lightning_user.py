"""tlkit as an experienced Lightning user meets it: their usual tools (SWA, the Tuner, LightningCLI, torch.compile,
fast_dev_run, their own optimizer, DataLoader and hook overrides) either work as they expect or say why not in one
line, and none of them silently gives a different model. Tiny random test_resnet on generated colour images."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import write_colour_classes
from PIL import Image

from tlkit.data.augment import build_eval_transform
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.module import TransferModule

CLASSES = ["blue", "green", "red"]


def tiny_module(strategy="linear_probe", size: int = 32, cls=TransferModule, **kwargs) -> TransferModule:
    return cls({"name": "test_resnet", "weights": "none", "input_size": size}, CLASSES, strategy=strategy,
               optim={"name": "adamw", "lr": 0.05}, **kwargs)


def plain_trainer(epochs: int = 1, **kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0, **kwargs}
    return L.Trainer(max_epochs=epochs, **options)


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, **{"batch_size": 8, "num_workers": 0, "seed": 0, "augment": "none", **kwargs})


def pretend_pretrained(module: TransferModule, seed: int = 0) -> None:
    """Give the random backbone's BatchNorm layers non-default running statistics, as pretrained weights have (a
    reset to mean 0 / variance 1 must show)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in batch_norms(module.backbone):
            bn.running_mean.copy_(torch.rand(bn.running_mean.shape, generator=generator) - 0.5)
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=generator))


def batch_norms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def bn_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for bn in batch_norms(module) for t in (bn.running_mean, bn.running_var)]


def image_accuracy(module: TransferModule, root: Path) -> float:
    """val accuracy on images (not cached features): what the saved model does on new photos."""
    result = plain_trainer().validate(module, datamodule=datamodule(root, cache=False), verbose=False)
    return float(result[0]["val_acc"])


class InputSizes(L.Callback):
    """The spatial size of every image batch that reaches the module's backbone."""

    def __init__(self, module: TransferModule):
        self.sizes: set[int] = set()
        module.backbone.register_forward_pre_hook(lambda _m, args: self.sizes.add(int(args[0].shape[-1])))


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return write_colour_classes(tmp_path / "colours", per_class=12)


# -- SWA, EMA and the frozen backbone ------------------------------------------------------------------------------


def _fit_probe(root: Path, callbacks: list) -> TransferModule:
    L.seed_everything(0, verbose=False)
    module = tiny_module()
    pretend_pretrained(module)
    plain_trainer(6, callbacks=callbacks).fit(module, datamodule=datamodule(root))
    return module


def test_swa_on_a_probe_ends_within_one_image_of_the_same_run_without_swa(colours):
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    plain = image_accuracy(_fit_probe(colours, []), colours)
    swa = image_accuracy(_fit_probe(colours, [StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3)]), colours)
    val_images = 12  # 4 per class; with the backbone's statistics reset, SWA's model scores 0.42 here
    assert plain >= 0.75
    assert abs(swa - plain) <= 1 / val_images + 1e-6


def test_swa_keeps_the_frozen_backbones_batchnorm_statistics(colours):
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    L.seed_everything(0, verbose=False)
    module = tiny_module()
    pretend_pretrained(module)
    before = bn_buffers(module)
    plain_trainer(3, callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)]).fit(
        module, datamodule=datamodule(colours))
    assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(module)))


def test_weight_ema_and_early_stopping_compose_with_the_phases(colours):
    from lightning.pytorch.callbacks import EarlyStopping

    from tlkit.model.ema import WeightEMA

    module = tiny_module({"kind": "gradual", "unfreeze_every": 1})
    pretend_pretrained(module)
    frozen_until_epoch_2 = [m for name, m in module.named_modules() if name.startswith("backbone.")
                            and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)][:2]  # the stem: last to thaw
    before = [t.clone() for bn in frozen_until_epoch_2 for t in (bn.running_mean, bn.running_var)]
    trainer = plain_trainer(2, callbacks=[WeightEMA(0.9), EarlyStopping("val_acc", mode="max", patience=5)])
    trainer.fit(module, datamodule=datamodule(colours, cache=False))
    after = [t for bn in frozen_until_epoch_2 for t in (bn.running_mean, bn.running_var)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert trainer.current_epoch == 2


# -- hooks a user overrides ----------------------------------------------------------------------------------------


class NoSuperEpochStart(TransferModule):
    """A user's own on_train_epoch_start that forgets super()."""

    def on_train_epoch_start(self) -> None:
        self.started = self.current_epoch


def test_an_override_of_on_train_epoch_start_without_super_cannot_unfreeze_batchnorm(colours):
    module = tiny_module({"kind": "gradual", "unfreeze_every": 2}, cls=NoSuperEpochStart)  # epochs 0-1: head only
    pretend_pretrained(module)
    before = bn_buffers(module.backbone)
    plain_trainer(1).fit(module, datamodule=datamodule(colours, cache=False))
    assert module.started == 0
    assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(module.backbone)))
    assert not any(p.requires_grad for p in module.backbone.parameters())


class SeesItsBatches(TransferModule):
    def training_step(self, batch, batch_idx):
        self.shapes = getattr(self, "shapes", []) + [tuple(batch[0].shape)]
        return super().training_step(batch, batch_idx)


def test_a_probes_training_step_receives_pooled_features_as_documented(colours):
    module = tiny_module(cls=SeesItsBatches)
    plain_trainer(1).fit(module, datamodule=datamodule(colours))
    assert {s[1:] for s in module.shapes} == {(module.backbone.num_features,)}
    page = (Path(__file__).resolve().parents[1] / "docs" / "lightning.md").read_text(encoding="utf-8")
    assert "training_step" in page and "num_features" in page


# -- data and model meet through a declared interface ----------------------------------------------------------------


def test_a_reused_datamodule_serves_each_model_its_own_input_size(colours, tmp_path):
    dm = datamodule(colours, cache=False)
    plain_trainer(1, limit_train_batches=1, limit_val_batches=1).fit(tiny_module("finetune", 32), datamodule=dm)
    second = tiny_module("finetune", 48)
    sizes = InputSizes(second)
    trainer = plain_trainer(1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(second, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "second.ckpt")
    saved = torch.load(tmp_path / "second.ckpt", weights_only=True)["tlkit"]["preprocessing"]["input_size"]
    assert sizes.sizes == {48} and saved == 48


def test_a_datamodule_given_its_own_preprocessing_refuses_a_model_of_another_size(colours):
    from tlkit.data.preprocessing import Preprocessing

    pre = Preprocessing(input_size=40, crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    dm = datamodule(colours, cache=False, preprocessing=pre)
    with pytest.raises(ValueError, match="40 px.*32 px"):
        plain_trainer(1, limit_train_batches=1).fit(tiny_module("finetune", 32), datamodule=dm)


def test_a_model_without_the_interface_is_refused_in_one_line(colours):
    class Plain(L.LightningModule):
        pass

    with pytest.raises(ValueError, match="preprocessing") as error:
        datamodule(colours).setup_for(Plain(), stage="fit")
    assert "\n" not in str(error.value)


# -- Lightning's tools: Tuner, compile, fast_dev_run, torchscript ----------------------------------------------------


class RecordsGroupLRs(TransferModule):
    """Records every training step's LR per group (the finder replaces the trainer's callbacks, not the hooks)."""

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs = getattr(self, "lrs", []) + [{g["name"]: g["lr"] for g in self.optimizers().param_groups}]


def test_tuner_lr_find_sets_lr_and_keeps_the_backbone_head_ratio(colours):
    from lightning.pytorch.tuner import Tuner

    module = tiny_module("finetune", cls=RecordsGroupLRs)
    trainer = plain_trainer(10)  # the finder stops after num_training steps
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule(colours, cache=False), min_lr=1e-4, max_lr=1.0,
                                    num_training=20, early_stop_threshold=None)
    assert finder.suggestion() is not None and module.lr == pytest.approx(finder.suggestion())
    swept = module.lrs[1:]  # the first batch runs before the finder's first step
    assert len({round(lr["head"], 12) for lr in swept}) > 5  # a sweep
    assert all(lr["backbone"] == pytest.approx(0.1 * lr["head"]) for lr in swept)
    groups = {g["name"]: g["lr"] for g in module.optimizer_groups()}
    assert groups["head"] == pytest.approx(module.lr) and groups["backbone"] == pytest.approx(0.1 * module.lr)


@pytest.mark.slow  # dynamo traces every step function: about a minute on 2 CPU cores
def test_torch_compile_of_the_module_fits(colours):
    module = tiny_module()
    compiled = torch.compile(module)
    trainer = plain_trainer(1)
    trainer.fit(compiled, datamodule=datamodule(colours))
    assert "val_acc" in trainer.callback_metrics


def test_fast_dev_run_extracts_features_of_only_the_batches_it_uses(colours):
    module = tiny_module()
    counter = InputSizes(module)
    images = []
    module.backbone.register_forward_pre_hook(lambda _m, args: images.append(len(args[0])))
    dm = datamodule(colours, eval_batch_size=8)
    L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, datamodule=dm)
    assert counter.sizes == {32}
    assert sum(images) <= 8 + 8  # one training batch and one validation batch, not all 36 images


def test_limit_train_batches_extracts_only_the_batches_it_trains_on(colours):
    module = tiny_module()
    images = []
    module.backbone.register_forward_pre_hook(lambda _m, args: images.append(len(args[0])))
    dm = datamodule(colours, eval_batch_size=8)
    plain_trainer(2, limit_train_batches=2, limit_val_batches=1).fit(module, datamodule=dm)
    assert sum(images) <= 2 * 8 + 8


def test_to_torchscript_by_tracing_matches_the_module(colours):
    module = tiny_module().eval()
    x = torch.randn(2, 3, 32, 32)
    traced = module.to_torchscript(method="trace", example_inputs=x)
    assert torch.allclose(traced(x), module(x), atol=1e-5)


def test_to_torchscript_by_scripting_is_refused_in_one_line():
    with pytest.raises(ValueError, match="trace") as error:
        tiny_module().to_torchscript()
    assert "\n" not in str(error.value)


# -- the user's own optimizer ----------------------------------------------------------------------------------------


class OwnSGD(TransferModule):
    def configure_optimizers(self):
        return torch.optim.SGD(self.optimizer_groups(), lr=self.lr, momentum=0.9)


class FlatSGD(TransferModule):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_an_own_optimizer_through_optimizer_groups_keeps_the_groups(colours):
    module = tiny_module("finetune", cls=OwnSGD)
    trainer = plain_trainer(1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule(colours, cache=False))
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"]) and lrs["head"] == pytest.approx(0.05)


def test_an_own_optimizer_that_flattens_the_groups_is_warned_in_one_line(colours):
    module = tiny_module("finetune", cls=FlatSGD)
    with pytest.warns(UserWarning, match="optimizer_groups") as caught:
        plain_trainer(1, limit_train_batches=1, limit_val_batches=1).fit(module, datamodule=datamodule(colours,
                                                                                                      cache=False))
    assert all("\n" not in str(w.message) for w in caught if "optimizer_groups" in str(w.message))


# -- own DataLoader ------------------------------------------------------------------------------------------------


def test_the_eval_transform_takes_pil_images_and_arrays_alike(colours):
    transform = build_eval_transform(tiny_module().preprocessing)
    path = next((colours / "train" / "red").iterdir())
    pil = Image.open(path)
    assert torch.equal(transform(pil), transform(np.asarray(pil.convert("RGB"))))
    assert transform(pil).shape == (3, 32, 32)


def test_an_own_torchvision_dataloader_fits_with_the_modules_transform(colours):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    module = tiny_module("finetune")
    transform = build_eval_transform(module.preprocessing)
    train = DataLoader(ImageFolder(colours / "train", transform=transform), batch_size=8, shuffle=True)
    val = DataLoader(ImageFolder(colours / "val", transform=transform), batch_size=8)
    trainer = plain_trainer(1)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert "val_acc" in trainer.callback_metrics


# -- LightningCLI and subclasses ---------------------------------------------------------------------------------------


def _cli(args: list[str]):
    from tlkit.cli.lightning import TransferCLI

    return TransferCLI(TransferModule, ImageFolderDataModule, args=args, save_config_callback=None)


def _cli_args(root: Path) -> list[str]:
    return ["--model.backbone", '{"name": "test_resnet", "weights": "none", "input_size": 32}',
            "--data.root", str(root),
            # a short quiet run (not needed by the CLI, only by this test)
            "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu"]


def test_lightning_cli_fits_with_only_backbone_and_root(colours):
    cli = _cli(["fit", *_cli_args(colours)])
    assert cli.model.classes == CLASSES
    assert "val_acc" in cli.trainer.callback_metrics


def test_lightning_cli_print_config_round_trips_through_config(colours, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli(["fit", *_cli_args(colours), "--print_config"])
    printed = capsys.readouterr().out
    assert "root:" in printed and "test_resnet" in printed
    (tmp_path / "config.yaml").write_text(printed, encoding="utf-8")
    with pytest.raises(SystemExit):
        _cli(["fit", "--config", str(tmp_path / "config.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed
    cli = _cli(["fit", "--config", str(tmp_path / "config.yaml")])
    assert cli.model.classes == CLASSES


class Finetuner(TransferModule):
    """A subclass with its own __init__, as a Lightning user writes one."""

    def __init__(self, classes, backbone_lr_mult: float = 0.2, **kwargs):
        super().__init__({"name": "test_resnet", "weights": "none", "input_size": 32}, classes,
                         strategy={"kind": "finetune", "backbone_lr_mult": backbone_lr_mult}, **kwargs)


def test_a_subclass_with_its_own_init_saves_and_reloads(colours, tmp_path):
    module = Finetuner(CLASSES, backbone_lr_mult=0.3, optim={"lr": 0.01})
    trainer = plain_trainer(1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule(colours, cache=False))
    trainer.save_checkpoint(tmp_path / "sub.ckpt")
    reloaded = Finetuner.load_from_checkpoint(tmp_path / "sub.ckpt")
    assert reloaded.strategy.backbone_lr_mult == 0.3 and reloaded.optim_config.lr == 0.01
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(reloaded.eval()(x), module.eval()(x))


def test_no_warning_is_left_unexplained_by_a_plain_probe_fit(colours):
    module = tiny_module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain_trainer(1).fit(module, datamodule=datamodule(colours))
    assert not [w for w in caught if "optimizer_groups" in str(w.message)]


def test_the_datamodule_takes_the_data_settings_as_the_module_takes_its_sections(colours):
    from tlkit.data.settings import DataConfig

    dm = ImageFolderDataModule({"root": str(colours), "batch_size": 4, "num_workers": 0, "val_fraction": 0.25})
    same = ImageFolderDataModule(DataConfig(root=str(colours), batch_size=4, num_workers=0, val_fraction=0.25))
    assert dm.batch_size == same.batch_size == 4 and dm.classes == same.classes == CLASSES
    with pytest.raises(ValueError, match="batch_size given both"):
        ImageFolderDataModule({"root": str(colours)}, batch_size=8)


def test_an_epoch_that_trains_the_backbone_on_cached_features_stops_in_one_line(colours):
    from torch.utils.data import DataLoader

    from tlkit.errors import DataError

    module = tiny_module({"kind": "lp_ft", "probe": "sgd", "probe_epochs": 1})
    dm = datamodule(colours)
    dm.setup_for(module, stage="fit", epochs=2)
    plain = DataLoader(dm.train_set, batch_size=8, shuffle=True)  # a sampler of plain indices: the epoch is lost
    with pytest.raises(DataError, match="epoch 1 trains the backbone") as error:
        plain_trainer(2, limit_val_batches=0).fit(module, train_dataloaders=plain)
    assert "\n" not in str(error.value)
