"""EMA of weights: validated and checkpointed in place of the raw weights; raw ones carried for resume."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.ema import WeightEMA
from tlkit.model.module import TransferModule


def test_ema_weights_are_validated_and_saved_raw_ones_kept_for_resume(colour_folder, tmp_path):
    torch.manual_seed(0)
    module = TransferModule({"name": "test_resnet", "input_size": 32}, ["blue", "green", "red"], weights="none",
                            strategy="finetune", optim={"lr": 0.1})
    ema = WeightEMA(decay=0.9)
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    dm = ImageFolderDataModule(colour_folder, batch_size=8, num_workers=0, preprocessing=module.preprocessing)
    L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[ema, last],
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(module, datamodule=dm)

    averaged = ema.ema.module.state_dict()
    for key, value in module.state_dict().items():  # the module ends with the EMA weights
        name = key.removeprefix("backbone.").removeprefix("head.")
        prefix = "backbone." if key.startswith("backbone.") else "head."
        assert torch.equal(value, averaged[prefix + name]), key
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    raw = next(state for name, state in saved["callbacks"].items() if "WeightEMA" in name)["raw"]
    assert torch.equal(saved["state_dict"]["head.0.weight"], averaged["head.0.weight"])
    assert not torch.equal(raw["head.0.weight"], averaged["head.0.weight"]), "EMA equals the raw weights"

    # resume: training continues from the raw weights, the EMA from the saved (averaged) ones
    resumed = TransferModule({"name": "test_resnet", "input_size": 32}, ["blue", "green", "red"], weights="none",
                             strategy="finetune", optim={"lr": 0.1})
    ema2 = WeightEMA(decay=0.9)
    seen = {}

    class Peek(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("raw", pl_module.head[0].weight.detach().clone())
            seen.setdefault("ema", ema2.ema.module["head"][0].weight.detach().clone())

    L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, callbacks=[ema2, Peek()],
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0).fit(resumed, datamodule=dm, ckpt_path=str(tmp_path / "last.ckpt"))
    assert torch.equal(seen["raw"], raw["head.0.weight"])
    assert torch.equal(seen["ema"], averaged["head.0.weight"])


def test_recipe_ema_decay_turns_the_callback_on(colour_folder, tmp_path):
    from conftest import tiny_recipe_dict

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    recipe = validate_recipe(tiny_recipe_dict(colour_folder, strategy={"kind": "finetune"}, optim={"ema_decay": 0.9},
                                              trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    saved = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    (state,) = [s for name, s in saved["callbacks"].items() if "WeightEMA" in name]
    assert not torch.equal(state["raw"]["head.0.weight"], saved["state_dict"]["head.0.weight"])
