"""Checkpoints load without unpickling arbitrary objects."""

from __future__ import annotations

import pickle

import pytest
import torch

from tlkit.errors import CheckpointError
from tlkit.infer.checkpoint import load_checkpoint


class _Exploit:
    """Unpickling this would create a file: the classic pickle code-execution payload, made harmless."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_checkpoint_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump({"tlkit": {}, "state_dict": {}, "payload": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_non_tlkit_checkpoint_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a tlkit checkpoint"):
        load_checkpoint(path)


def test_missing_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.ckpt")
    path = tmp_path / "cut.ckpt"
    torch.save({"tlkit": {}, "state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_load_from_checkpoint_rebuilds_offline_for_any_backbone(tmp_path, monkeypatch):
    """A checkpoint carries every weight: Lightning's own load_from_checkpoint never asks for pretrained weights,
    even when the run was trained from the hub (weights: auto/hub)."""
    import lightning as L

    from tlkit.model import backbones
    from tlkit.model.module import TransferModule

    module = TransferModule({"name": "test_resnet", "input_size": 32}, ["a", "b"], weights="none",
                            strategy="finetune", head={"final_init": "normal"})
    module.hparams["backbone"]["weights"] = "hub"  # as if it had been trained from hub weights
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)

    asked = []
    real = backbones.create_backbone

    def offline_only(name, weights="auto", **kwargs):
        asked.append(weights)
        if weights != "none":
            raise AssertionError(f"reload asked for {weights!r} weights")
        return real(name, weights, **kwargs)

    monkeypatch.setattr("tlkit.model.classifier.create_backbone", offline_only)
    reloaded = TransferModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert asked == ["none"]
    x = torch.rand(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    assert torch.allclose(module(x), reloaded(x))
    assert reloaded.preprocessing == module.preprocessing
