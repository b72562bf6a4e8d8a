"""TransferModule: frozen means frozen, fine-tune LR groups, initial loss, schedules."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.module import TransferModule
from tlkit.model.schedules import LRMultiplier

CLASSES = ["blue", "green", "red"]


def tiny_module(strategy: str | dict = "linear_probe", **kwargs) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(
        {"name": "test_efficientnet", "input_size": 32}, CLASSES, weights="none", strategy=strategy, **kwargs
    )


def quick_fit(module: TransferModule, root, epochs: int = 2) -> None:
    # cache=False: these tests check the image path (a frozen backbone's BatchNorm under train mode)
    dm = ImageFolderDataModule(root, batch_size=8, num_workers=0, preprocessing=module.preprocessing, cache=False)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_keeps_weights_and_bn_stats_after_fit(colour_folder):
    module = tiny_module("linear_probe")
    backbone_before, head_before = snapshot(module.backbone), snapshot(module.head)
    quick_fit(module, colour_folder)
    for key, value in module.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), f"frozen backbone tensor {key} moved"
    assert any(not torch.equal(v, head_before[k]) for k, v in module.head.state_dict().items()), "head did not train"


def test_frozen_backbone_stays_in_eval_mode_when_module_trains():
    module = tiny_module("linear_probe")
    module.train()
    assert module.training and module.head.training
    assert not any(m.training for m in module.backbone.modules())


def test_frozen_backbone_train_mode_forward_equals_eval_mode_forward():
    module = tiny_module("linear_probe")
    x = torch.randn(4, 3, 32, 32)
    module.train()
    train_features = module.features(x)
    module.eval()
    assert torch.equal(train_features, module.features(x))


def test_frozen_backbone_builds_no_autograd_graph():
    module = tiny_module("linear_probe").train()
    features = module.features(torch.randn(2, 3, 32, 32))
    assert not features.requires_grad
    assert all(not p.requires_grad for p in module.backbone.parameters())


def test_linear_probe_optimizes_only_the_head():
    module = tiny_module("linear_probe", optim={"lr": 0.1, "weight_decay": 1e-4})
    groups = module.optimizer_groups()
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in module.head.parameters()}


def test_finetune_backbone_lr_is_head_lr_times_mult_and_norms_biases_skip_decay():
    module = tiny_module({"kind": "finetune", "backbone_lr_mult": 0.1}, optim={"lr": 0.1, "weight_decay": 1e-4})
    groups = module.optimizer_groups()
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["backbone_no_decay"]["lr"] == pytest.approx(0.01)
    for g in groups:
        expected_wd = 0.0 if g["name"].endswith("no_decay") else 1e-4
        assert g["weight_decay"] == expected_wd
        assert all((p.ndim <= 1) == g["name"].endswith("no_decay") for p in g["params"])
    all_params = {id(p) for p in module.parameters()}
    assert {id(p) for g in groups for p in g["params"]} == all_params


def test_finetune_trains_backbone_and_updates_bn_stats(colour_folder):
    module = tiny_module("finetune")
    before = snapshot(module.backbone)
    quick_fit(module, colour_folder, epochs=1)
    after = module.backbone.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("running_mean"))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("weight"))


def test_initial_loss_is_ln_num_classes_with_zero_final_layer():
    module = tiny_module("linear_probe").eval()
    logits = module(torch.randn(6, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert loss.item() == pytest.approx(math.log(len(CLASSES)), abs=1e-6)


def test_channels_last_gives_the_same_outputs_as_contiguous():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    nhwc = tiny_module("finetune", channels_last=True, head={"final_init": "normal"}).eval()
    nchw = tiny_module("finetune", channels_last=False, head={"final_init": "normal"}).eval()
    nchw.load_state_dict(nhwc.state_dict())
    assert torch.allclose(nhwc(x), nchw(x), atol=1e-5)


def test_l1_penalty_is_added_to_the_training_loss():
    module = tiny_module("linear_probe", optim={"l1": 0.5}, head={"final_init": "normal"})
    weights = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    expected = 0.5 * sum(p.abs().sum() for p in weights)
    assert float(module._l1_penalty()) == pytest.approx(float(expected))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "fine_tune"}, "Did you mean 'finetune'"),
        ({"optim": {"name": "adam"}}, "Did you mean 'adamw'"),
        ({"schedule": "cosin"}, "Did you mean 'cosine'"),
    ],
)
def test_bad_choices_name_the_value_and_suggest(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransferModule("test_efficientnet", CLASSES, weights="none", **kwargs)


def test_module_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 class names"):
        TransferModule("test_efficientnet", ["only"], weights="none")


def test_warmup_then_cosine_reaches_zero():
    f = LRMultiplier("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_decays_by_gamma_every_step_size():
    f = LRMultiplier("step", total_steps=100, step_size=10, gamma=0.5)
    assert [f(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_own_lightning_trainer_without_a_recipe(colour_folder):
    """The library path: datamodule gives class names; it serves the preprocessing of the model being fitted (asked at
    every setup, never stored over the user's own setting)."""
    from tlkit import ImageFolderDataModule as DM
    from tlkit import TransferModule as TM

    dm = DM(colour_folder, batch_size=8, num_workers=0)
    model = TM({"name": "test_resnet", "input_size": 32}, dm.classes, weights="none", optim={"name": "adamw", "lr": 0.3})
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.preprocessing is None and dm.input_size == model.preprocessing.input_size == 32
    assert trainer.callback_metrics["val_acc"] >= 0.9
