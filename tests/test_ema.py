"""EMA of weights: validated and checkpointed in place of the raw weights; raw ones carried for resume."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.ema import WeightEMA
from tlkit.model.module import TransferModule

DECAY = 0.5  # small, so that within 6 steps the warm-up reaches it and the cap applies


class RawWeights(L.Callback):
    """After the EMA callback: the raw head weights each EMA update averaged in, one per training step."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(pl_module.state_dict()["head.0.weight"].detach().clone())


def averaged_by_hand(raw: list[torch.Tensor], decay: float) -> torch.Tensor:
    """ema_k = d_k ema_(k-1) + (1 - d_k) w_k with d_k = min(decay, 1 - k^(-2/3)) (k = 1, 2, ...; d_1 = 0)."""
    ema = torch.zeros_like(raw[0])
    for k, weights in enumerate(raw, start=1):
        d = min(decay, 1 - k ** (-2 / 3))
        ema = d * ema + (1 - d) * weights
    return ema


def test_ema_weights_are_validated_and_saved_raw_ones_kept_for_resume(colour_folder, tmp_path):
    torch.manual_seed(0)
    module = TransferModule({"name": "test_resnet", "input_size": 32}, ["blue", "green", "red"], weights="none",
                            strategy="finetune", optim={"lr": 0.1})
    ema = WeightEMA(decay=DECAY)
    raw_weights = RawWeights()
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    dm = ImageFolderDataModule(colour_folder, batch_size=8, num_workers=0, preprocessing=module.preprocessing)
    L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[ema, raw_weights, last],
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(module, datamodule=dm)

    averaged = ema.ema.module.state_dict()
    assert len(raw_weights.seen) == 6  # 24 training images, batch 8, 2 epochs
    # the averaging formula, with its warm-up (0, 0.37, 0.48) and then the configured decay (0.5, 0.5, 0.5)
    torch.testing.assert_close(averaged["head.0.weight"], averaged_by_hand(raw_weights.seen, DECAY), atol=1e-6,
                               rtol=1e-5)
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
    ema2 = WeightEMA(decay=DECAY)
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
