"""A NaN/inf loss stops the run naming the step and the likely cause; the last good checkpoint survives."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.cli.main import main
from tlkit.errors import TrainingDivergedError
from tlkit.model.module import TransferModule
from tlkit.recipe import validate_recipe
from tlkit.run import fit


def _recipe(root, **optim):
    return validate_recipe(tiny_recipe_dict(root, strategy={"kind": "finetune"}, trainer={"epochs": 3},
                                            optim=optim, schedule={"kind": "constant"}))


def test_absurd_lr_stops_naming_the_step_and_the_lr(tmp_path):
    root = write_colour_classes(tmp_path / "colours")
    with pytest.raises(TrainingDivergedError, match=r"global step \d+ .*learning rate too high \(optim.lr=1e\+30\)"):
        fit(_recipe(root, lr=1e30), run_dir=tmp_path / "run")


def test_nan_after_a_good_epoch_keeps_that_checkpoint(tmp_path, monkeypatch):
    root = write_colour_classes(tmp_path / "colours")
    original = TransferModule.training_step

    def nan_in_second_epoch(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(TransferModule, "training_step", nan_in_second_epoch)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1"):
        fit(_recipe(root, lr=0.01), run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_cli_exits_non_zero_on_divergence(tmp_path, capsys):
    root = write_colour_classes(tmp_path / "colours")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(tiny_recipe_dict(root, strategy={"kind": "finetune"}, trainer={"epochs": 1})))
    code = main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run"), "--set", "optim.lr=1e30"])
    assert code == 1
    assert "global step" in capsys.readouterr().err
