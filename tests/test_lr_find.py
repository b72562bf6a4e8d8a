"""tlkit lr-find: Lightning's LR range test on the recipe's trainable part, a PNG, and --write to a recipe copy."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.conftest import tiny_recipe_dict, write_colour_classes


def test_cli_lr_find_suggests_within_range_and_writes_a_copy(tmp_path, capsys):
    from PIL import Image

    from tlkit.cli.main import main
    from tlkit.recipe import load_recipe

    root = write_colour_classes(tmp_path / "colours")
    source = tmp_path / "recipes" / "tiny.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"})))
    before = source.read_text()
    png, copy = tmp_path / "lr.png", tmp_path / "tuned" / "tiny_lr.yaml"
    code = main(["lr-find", str(source), "--steps", "30", "--min-lr", "1e-4", "--max-lr", "10", "--out", str(png),
                 "--write", str(copy)])
    assert code == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out
    assert Image.open(png).size[0] > 500
    assert source.read_text() == before  # the user's recipe is untouched
    written = load_recipe(copy)
    assert 1e-4 <= written.optim.lr <= 10
    assert written.optim.lr != 0.05
    assert written.data.root == str(root)
    assert f"{written.optim.lr:.3g}" in out


def test_lr_find_refuses_to_overwrite_the_source(tmp_path):
    from tlkit.errors import TlkitError
    from tlkit.run.tuning import write_recipe_copy

    source = tmp_path / "r.yaml"
    source.write_text("version: 1\n")
    with pytest.raises(TlkitError):
        write_recipe_copy(source, ["optim.lr=0.1"], source, data_root=str(tmp_path))


def test_lr_find_rejects_an_empty_range(tmp_path):
    from tlkit.errors import TlkitError
    from tlkit.recipe import validate_recipe
    from tlkit.run.tuning import lr_find

    recipe = validate_recipe(tiny_recipe_dict(write_colour_classes(tmp_path / "c")))
    with pytest.raises(TlkitError):
        lr_find(recipe, min_lr=1.0, max_lr=0.1)


def test_lr_find_curve_starts_at_ln_c_and_is_hooked_on_the_module(tmp_path):
    """The zero-initialised head's first loss is exactly ln(C): the re-smoothed curve must start there (Lightning's
    own smoothing starts at about half of it), and the hooks are removed from the module afterwards."""
    from tlkit.recipe import validate_recipe
    from tlkit.run.tuning import lr_find

    recipe = validate_recipe(tiny_recipe_dict(write_colour_classes(tmp_path / "c"), backbone={"name": "test_resnet"}))
    result = lr_find(recipe, out=tmp_path / "lr.png", min_lr=1e-6, max_lr=1.0, num_training=20)
    assert result["steps"] == 20
    assert result["losses"][0] == pytest.approx(math.log(3), rel=1e-4)


def test_steepest_descent_is_per_decade():
    from tlkit.run.tuning import steepest_descent

    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # a logistic fall centred at 1e-2 in log lr: Lightning's d/d lr would pick the smallest LRs instead
    losses = [1.0 / (1 + math.exp(3 * (math.log10(lr) + 2))) for lr in lrs]
    assert steepest_descent(lrs, losses) == pytest.approx(1e-2, rel=0.15)
    assert steepest_descent(lrs, [1.0] * 100) is None  # nothing falls: no suggestion
    assert steepest_descent(lrs[:5], losses[:5]) is None


def test_sweep_hooks_keep_the_backbone_ratio_and_record_losses():
    from types import SimpleNamespace

    import torch

    from tlkit.run.tuning import _SweepHooks

    groups = [{"lr": 0.5}, {"lr": 0.5}]
    scheduler = SimpleNamespace(get_last_lr=lambda: [0.5, 0.5])
    module = SimpleNamespace(trainer=SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
                                                     optimizers=[SimpleNamespace(param_groups=groups)]))
    with _SweepHooks(module, [0.1, 1.0]) as hooks:
        module.on_train_batch_start(None, 0)
        module.on_train_batch_end({"loss": torch.tensor(0.7)}, None, 0)
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.5])
    assert hooks.losses == pytest.approx([0.7])
    assert not hasattr(module, "on_train_batch_start")


@pytest.mark.parametrize("strategy", [{"kind": "layer_decay", "decay": 0.5, "groups": "coarse"},
                                      {"kind": "gradual", "unfreeze_every": 1, "groups": "coarse"}])
def test_check_and_lr_find_apply_the_group_lr_ratios_training_applies(tmp_path, monkeypatch, strategy):
    """One optimizer builder: the ratios of each group's LR to the head's in training's first step are the ones
    lr-find sweeps with and check overfits with (layer_decay: decay^depth; gradual: 0 for still-frozen groups)."""
    import lightning as L

    from tlkit.recipe import validate_recipe
    from tlkit.run import build_datamodule, build_module, tuning
    from tlkit.tune import sanity

    def ratios(groups) -> list[float]:
        lrs = [g["lr"] for g in groups]
        return [lr / lrs[0] for lr in lrs]  # the head's group comes first

    recipe = validate_recipe(tiny_recipe_dict(write_colour_classes(tmp_path / "c"), backbone={"name": "test_resnet"},
                                              strategy=strategy, trainer={"epochs": 3}, cache={"features": False}))
    trained: list[list[float]] = []

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            trained.append(ratios(trainer.optimizers[0].param_groups))

    dm = build_datamodule(recipe)
    module = build_module(recipe, dm.classes)
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[FirstStep()]).fit(module, datamodule=dm)
    if strategy["kind"] == "layer_decay":
        assert sorted(set(trained[0]), reverse=True)[:3] == pytest.approx([1.0, 0.5, 0.25])
    else:
        assert 0.0 in trained[0] and trained[0][0] == 1.0

    swept: list[list[float]] = []
    sweep_step = tuning._SweepHooks.on_train_batch_start

    def record_sweep(self, batch, batch_idx):
        sweep_step(self, batch, batch_idx)
        swept.append(ratios(self.module.trainer.optimizers[0].param_groups))

    monkeypatch.setattr(tuning._SweepHooks, "on_train_batch_start", record_sweep)
    tuning.lr_find(recipe, out=tmp_path / "lr.png", num_training=3)
    assert swept and all(r == pytest.approx(trained[0]) for r in swept)

    checked: list[list[float]] = []
    overfit = sanity.overfit

    def record_check(module, optimizer, *args, **kwargs):
        checked.append(ratios(optimizer.param_groups))
        return overfit(module, optimizer, *args, **kwargs)

    monkeypatch.setattr(sanity, "overfit", record_check)
    tuning.check(recipe, steps=2)
    assert checked == [pytest.approx(trained[0])]
