"""Staged strategies on one mechanism: LR gating per layer group, frozen means frozen, resume continues exactly."""

from __future__ import annotations

import csv
import re

import lightning as L
import pytest
import torch
from conftest import tiny_recipe_dict
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.groups import layer_groups
from tlkit.model.module import TransferModule
from tlkit.model.schedules import GatedMultiplier, LRMultiplier
from tlkit.model.strategies import Finetune, LayerDecay, LinearProbe, LpFt
from tlkit.recipe import validate_recipe

CLASSES = ["blue", "green", "red"]
LR = 0.05


def staged_module(strategy: str, **options) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule({"name": "test_resnet", "input_size": 32}, CLASSES, weights="none",
                          strategy={"kind": strategy, **options}, optim={"lr": LR}, schedule="cosine")


class RecordLR(Callback):
    """LR of every named optimizer group at each training step, and which parameters had requires_grad."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.trainable: dict[int, set[str]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        self.trainable[trainer.current_epoch] = {n for n, p in module.classifier.named_parameters() if p.requires_grad}


def trainer_for(epochs: int, callbacks: list, tmp_path=None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     default_root_dir=tmp_path)


def datamodule(root, module) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, batch_size=8, num_workers=0, preprocessing=module.preprocessing)


# -- groups ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
def test_plan_covers_every_parameter_once_head_first(arch):
    module = TransferModule({"name": arch, "input_size": 32}, CLASSES, weights="none", strategy="gradual")
    specs = module.group_specs
    names = [n for s in specs for n in s.params]
    assert sorted(names) == sorted(n for n, _ in module.classifier.named_parameters())
    assert len(names) == len(set(names))
    assert specs[0].name == "head"
    # from the top down: the group just below the head is the backbone's last one, the stem comes last
    assert specs[-1].params == tuple(f"backbone.{n}" for n in layer_groups(module.backbone)[0].param_names)


def test_gradual_explicit_list_leaves_later_groups_frozen_for_good():
    module = staged_module("gradual", unfreeze_epochs=[1, 3])
    starts = [s.unfreeze_epoch for s in module.group_specs]
    assert starts[:3] == [0, 1, 3] and all(s is None for s in starts[3:])
    never = [n for s in module.group_specs[3:] for n in s.params]
    assert not any(module.classifier.get_parameter(n).requires_grad for n in never)


def test_layer_decay_lr_factor_is_decay_to_the_depth():
    torch.manual_seed(0)
    module = TransferModule({"name": "test_efficientnet", "input_size": 32}, CLASSES, weights="none")
    specs = LayerDecay(decay=0.5, groups="fine").plan(module.backbone, module.head)
    assert [s.lr_mult for s in specs] == [0.5 ** d for d in range(len(specs))]
    assert all(s.unfreeze_epoch == 0 for s in specs)


# -- schedule gate -----------------------------------------------------------------------------------------------


def test_gated_multiplier_is_zero_before_its_start_then_follows_the_schedule():
    base = LRMultiplier("cosine", total_steps=20, warmup_steps=2)
    joined = GatedMultiplier("cosine", total_steps=20, warmup_steps=2, starts=(6,))
    assert [joined(s) for s in range(6)] == [0.0] * 6
    assert [joined(s) for s in range(6, 20)] == [base(s) for s in range(6, 20)]
    restarted = GatedMultiplier("cosine", total_steps=20, warmup_steps=2, starts=(0, 8), restart=True)
    probe = LRMultiplier("cosine", total_steps=8, warmup_steps=2)
    tune = LRMultiplier("cosine", total_steps=12, warmup_steps=2)
    assert [restarted(s) for s in range(20)] == [probe(s) for s in range(8)] + [tune(s) for s in range(12)]


# -- LR of each group per epoch, for every strategy (through fit, as LearningRateMonitor logs it) ------------------


def expected_epoch_lrs(kind: str, epochs: int, groups: int) -> list[dict[str, float]]:
    """Constant schedule: LR = optim.lr x the strategy's factor while a group is unfrozen, else 0."""
    rows = []
    for epoch in range(epochs):
        row = {"head": LR}
        if kind == "finetune":
            row["backbone"] = LR * 0.1
        elif kind == "lp_ft":  # probe: sgd; the fine-tune phase runs the head at the backbone's LR (head_lr_mult)
            row["head"] = LR * 0.1 if epoch >= 2 else LR
            row["backbone"] = LR * 0.1 if epoch >= 2 else 0.0
        elif kind == "lp_ft_closed_form":  # the head was fitted before epoch 0; everything fine-tunes at one LR
            row = {"head": LR * 0.1, "backbone": LR * 0.1}
        for i in range(groups):
            depth = groups - i
            if kind == "gradual":
                row[f"backbone.{i}"] = LR * 0.1 if epoch >= depth else 0.0
            elif kind == "layer_decay":
                row[f"backbone.{i}"] = LR * 0.75 ** depth
        rows.append(row)
    return rows


@pytest.mark.parametrize("strategy,cached", [
    ({"kind": "linear_probe"}, False), ({"kind": "finetune"}, False), ({"kind": "lp_ft", "probe": "sgd", "probe_epochs": 2}, False),
    ({"kind": "lp_ft", "probe": "sgd", "probe_epochs": 2}, True), ({"kind": "gradual", "unfreeze_every": 1}, False),
    ({"kind": "layer_decay", "decay": 0.75, "groups": "coarse"}, False), ({"kind": "lp_ft"}, False),
])
def test_lr_of_each_group_per_epoch(colour_folder, tmp_path, strategy, cached):
    from tlkit.run import fit

    epochs = 3
    recipe = validate_recipe(tiny_recipe_dict(colour_folder, backbone={"name": "test_resnet"}, strategy=strategy,
                                              optim={"lr": LR}, schedule={"kind": "constant"},
                                              trainer={"epochs": epochs}, cache={"features": cached}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    closed_form = strategy["kind"] == "lp_ft" and "probe" not in strategy  # its probe reads features before epoch 0
    assert metrics["feature_cache"]["used"] is (cached or closed_form)
    with open(tmp_path / "run" / "metrics.csv") as f:
        logged = [{k.removeprefix("lr-SGD/"): float(v) for k, v in row.items() if k.startswith("lr-") and v}
                  for row in csv.DictReader(f)]
    logged = [row for row in logged if row]
    groups = 5  # test_resnet: stem + 4 stages
    expected = expected_epoch_lrs("lp_ft_closed_form" if closed_form else strategy["kind"], epochs, groups)
    assert len(logged) == epochs
    for got, want in zip(logged, expected):
        assert {k for k in got if not k.endswith("_no_decay")} == set(want)
        for name, lr in want.items():
            assert got[name] == pytest.approx(lr), name
            if name + "_no_decay" in got:
                assert got[name + "_no_decay"] == pytest.approx(lr)


# -- frozen means frozen ------------------------------------------------------------------------------------------


def test_frozen_groups_keep_weights_and_bn_stats_while_unfrozen_ones_train(colour_folder):
    module = staged_module("gradual", unfreeze_every=1)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    recorder = RecordLR()
    trainer_for(2, [recorder]).fit(module, datamodule=datamodule(colour_folder, module))
    after = module.state_dict()
    top = module.group_specs[1]  # unfreezes at epoch 1
    top_modules = {n.rsplit(".", 1)[0] for n in top.params}
    for key, value in after.items():
        if not key.startswith("backbone."):
            continue
        in_top = any(key.startswith(m + ".") for m in top_modules)
        if not in_top:
            assert torch.equal(value, before[key]), f"frozen tensor {key} moved"
    moved = [k for k in after if any(k.startswith(m + ".") for m in top_modules) and not torch.equal(after[k], before[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)
    assert not any(n.startswith("backbone.") for n in recorder.trainable[0])
    assert recorder.trainable[1] == set(module.group_specs[0].params) | set(top.params)


# -- resume continues exactly ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,options", [("gradual", {"unfreeze_every": 1}),
                                                    ("lp_ft", {"probe": "sgd", "probe_epochs": 2})])
def test_resume_mid_schedule_gives_the_same_lr_sequence(colour_folder, tmp_path, strategy, options):
    epochs = 4
    full_module = staged_module(strategy, **options)
    full = RecordLR()
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    trainer_for(epochs, [full, every_epoch], tmp_path).fit(full_module, datamodule=datamodule(colour_folder, full_module))

    ckpt = tmp_path / "ckpt" / "epoch=1.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["tlkit"]["phase"]["epoch"] == 1
    resumed_module = staged_module(strategy, **options)
    resumed = RecordLR()
    trainer_for(epochs, [resumed], tmp_path).fit(
        resumed_module, datamodule=datamodule(colour_folder, resumed_module), ckpt_path=str(ckpt)
    )
    per_epoch = len(full.steps) // epochs
    assert resumed.steps == full.steps[2 * per_epoch:]
    assert any(lr > 0 for lr in resumed.steps[-1].values())
    for epoch in (2, 3):
        assert resumed.trainable[epoch] == full.trainable[epoch]


def test_staged_run_checkpoint_loads_for_inference_and_records_its_phase(colour_folder, tmp_path):
    from tlkit.infer.checkpoint import load_checkpoint
    from tlkit.run import fit

    recipe = validate_recipe(tiny_recipe_dict(colour_folder, backbone={"name": "test_resnet"},
                                              strategy={"kind": "gradual", "unfreeze_epochs": [1]},
                                              trainer={"epochs": 2}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    saved = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=True)
    assert saved["tlkit"]["phase"] == {"epoch": 1, "trainable_groups": ["head", "backbone.4"]}
    assert saved["hyper_parameters"]["strategy"]["unfreeze_epochs"] == [1]
    module = load_checkpoint(metrics["last_checkpoint"])
    assert not module.training
    assert torch.equal(module.head[0].weight, saved["state_dict"]["head.0.weight"])


def test_lp_ft_probes_on_cached_features_then_fine_tunes_on_images(colour_folder, tmp_path, monkeypatch):
    """The probe phase reads the feature cache (no image batches, backbone untouched); fine-tuning reads images."""
    from tlkit.model.module import TransferModule as Module
    from tlkit.run import fit

    seen: list[tuple[int, int]] = []  # (epoch, input ndim) of every training batch
    original = Module.training_step

    def spy(self, batch, batch_idx):
        if not seen:
            initial.update({n: p.detach().clone() for n, p in self.backbone.named_parameters()})
        seen.append((self.current_epoch, batch[0].ndim))
        if self.current_epoch == 2 and batch_idx == 0:  # the probe phase left the backbone as it was
            assert all(torch.equal(p, initial[n]) for n, p in self.backbone.named_parameters())
        return original(self, batch, batch_idx)

    initial: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(Module, "training_step", spy)
    recipe = validate_recipe(tiny_recipe_dict(colour_folder, backbone={"name": "test_resnet"},
                                              strategy={"kind": "lp_ft", "probe": "sgd", "probe_epochs": 2},
                                              trainer={"epochs": 3}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert metrics["feature_cache"]["used"] and metrics["epochs"] == 3
    assert {ndim for epoch, ndim in seen if epoch < 2} == {2}  # pooled features
    assert {ndim for epoch, ndim in seen if epoch == 2} == {4}  # images
    assert len([e for e, _ in seen if e == 0]) == len([e for e, _ in seen if e == 2])  # same batches per epoch


@pytest.mark.parametrize("strategy,epochs,message", [
    ({"kind": "lp_ft", "probe": "sgd", "probe_epochs": 3}, 3, "probe_epochs (3) must be less than trainer.epochs"),
    ({"kind": "gradual", "unfreeze_every": 4}, 4, "first group unfreezes at epoch 4"),
    ({"kind": "gradual", "unfreeze_epochs": [2, 1]}, 5, "must not decrease"),
    ({"kind": "layer_decay", "decay": 1.5}, 5, "strategy.decay"),
    ({"kind": "gradual", "groups": "medium"}, 5, "strategy.groups"),
])
def test_recipe_rejects_staged_settings_that_cannot_run(tmp_path, strategy, epochs, message):
    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match=re.escape(message)):
        validate_recipe(tiny_recipe_dict(tmp_path, strategy=strategy, trainer={"epochs": epochs}))


def test_drop_connect_head_drops_weights_in_training_only():
    from tlkit.model.heads import DropConnectLinear, build_head
    from tlkit.model.settings import HeadConfig

    torch.manual_seed(0)
    head = build_head(16, 3, HeadConfig(hidden=(8,), drop_connect=0.5))
    layers = [m for m in head if isinstance(m, DropConnectLinear)]
    assert len(layers) == 2 and all(m.p == 0.5 for m in layers)
    assert HeadConfig.model_validate(HeadConfig(drop_connect=0.5).model_dump()).drop_connect == 0.5
    x = torch.randn(4, 16)
    head.eval()
    plain = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, layers[0].weight, layers[0].bias)),
                                       layers[1].weight, layers[1].bias)
    assert torch.equal(head(x), plain)
    head.train()
    layers[1].weight.data.normal_()
    assert not torch.equal(head(x), head(x))  # a fresh weight mask every forward
    assert set(head.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_each_strategy_names_the_settings_it_needs_and_does_not_get():
    assert "data.balance must be none" in LinearProbe(solver="lbfgs").unmet_needs(balance="sampler")
    assert "cache.features must be true" in LinearProbe(solver="lbfgs").unmet_needs(cache_features=False)
    assert LinearProbe(solver="sgd").unmet_needs(head_hidden=[8], mixing=True, balance="sampler") is None
    assert "head.hidden must be []" in LpFt().unmet_needs(head_hidden=[8])
    assert LpFt(probe="sgd").unmet_needs(head_hidden=[8]) is None
    assert Finetune().unmet_needs(head_hidden=[8], cache_features=False, mixing=True) is None


def test_a_recipe_refuses_a_closed_form_probe_on_an_mlp_head():
    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match="closed_form fits one linear layer"):
        validate_recipe({"data": {"root": "x"}, "strategy": {"kind": "lp_ft"}, "head": {"hidden": [8]}})
