"""Load a self-describing checkpoint safely: torch.load(weights_only=True), rebuilt from its own metadata."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from tlkit.errors import CheckpointError
from tlkit.model.module import CHECKPOINT_FORMAT, TransferModule


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; refuses anything that needs arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; pass a .ckpt from a run's checkpoints/ folder.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refusing to load {path}: it contains objects other than tensors and plain data, which could run code "
            "when unpickled. Only load checkpoints written by tlkit or other trusted sources."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"Cannot read checkpoint {path} ({type(exc).__name__}); the file may be truncated.") from exc
    if not isinstance(checkpoint, dict) or "tlkit" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a tlkit checkpoint (no 'tlkit' metadata); train it with tlkit first.")
    return checkpoint


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> TransferModule:
    """A TransferModule in eval mode, rebuilt from the checkpoint alone (no recipe, no weight download).

    Also takes an exported `model.safetensors` (tlkit.infer.export), so evaluate/predict work on exports too.
    """
    if Path(path).suffix == ".safetensors":
        from tlkit.infer.export import load_exported

        return load_exported(path, map_location=map_location)
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if checkpoint["tlkit"].get("format", 1) < CHECKPOINT_FORMAT or not isinstance(hparams.get("backbone"), dict):
        raise CheckpointError(f"{path} was written by an older tlkit (checkpoint format 1); evaluate or export it "
                              "with tlkit 0.1.0, or retrain it with this version.")
    hparams["backbone"] = {**hparams["backbone"], "weights": "none"}  # every weight comes from the state dict
    module = TransferModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module.to(map_location).eval()


def saved_split(checkpoint: dict) -> dict:
    """The data split a checkpoint's run used ({} if unknown): Lightning stores the datamodule's state_dict under its
    class name, and tlkit's datamodules put the split there."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("split"), dict):
            return dict(value["split"])
    return {}
