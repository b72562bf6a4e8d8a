"""Load a self-describing checkpoint safely: torch.load(weights_only=True), rebuilt from its own metadata.

A checkpoint is untrusted input: its bytes may be anything, and its metadata (backbone, input size, TTA scales) is
validated by the same settings models a recipe goes through before any model or image buffer is allocated. Every
failure is one CheckpointError line.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tlkit.errors import CheckpointError, TlkitError
from tlkit.model.module import CHECKPOINT_FORMAT, TransferModule

_FROM_A_RUN = "pass a .ckpt from a run's checkpoints/ folder"


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; refuses anything that needs arbitrary unpickling, and files that are not checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; {_FROM_A_RUN}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL \S+|is blocked", str(exc)):  # torch's weights-only unpickler met a class or function
            raise CheckpointError(
                f"Refusing to load {path}: it contains objects other than tensors and plain data, which could run "
                "code when unpickled. Only load checkpoints written by tlkit or other trusted sources."
            ) from None
        # Not a pickle the weights-only unpickler accepts: corrupt bytes, or opcodes it refuses (a hand-made pickle).
        raise CheckpointError(f"Refusing to load {path}: not a checkpoint tlkit can read safely (corrupt, not written "
                              f"by torch.save, or a hand-made pickle); {_FROM_A_RUN}.") from None
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path} ({exc.strerror or type(exc).__name__}).") from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways (KeyError...)
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: the file is truncated, "
                              f"corrupt or not a checkpoint); {_FROM_A_RUN}.") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("tlkit"), dict) \
            or not isinstance(checkpoint.get("state_dict"), dict):
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
    hparams = checkpoint.get("hyper_parameters")
    version = checkpoint["tlkit"].get("format", 1)
    if not isinstance(version, int) or not isinstance(hparams, dict):
        raise CheckpointError(f"{path} has no readable tlkit metadata (format {version!r}); {_FROM_A_RUN}.")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by a newer tlkit (checkpoint format {version}, this one reads "
                              f"{CHECKPOINT_FORMAT}); upgrade tlkit to load it.")
    if version < CHECKPOINT_FORMAT or not isinstance(hparams.get("backbone"), dict):
        raise CheckpointError(f"{path} was written by an older tlkit (checkpoint format 1); evaluate or export it "
                              "with tlkit 0.1.0, or retrain it with this version.")
    module = module_from_metadata(path, {**hparams, "backbone": {**hparams["backbone"], "weights": "none"}})
    load_weights(path, module, checkpoint["state_dict"])
    return module.to(map_location).eval()


def module_from_metadata(path: str | Path, hparams: Mapping[str, Any]) -> TransferModule:
    """A TransferModule (random weights) from a checkpoint's or export's description, validated first.

    The backbone section goes through BackboneConfig (known timm name, input size bounds), the head through
    HeadConfig and the TTA policy through normalize_spec (scale bounds), so a hostile file cannot make tlkit
    allocate a 12000 px view or build an unknown model.
    """
    from pydantic import ValidationError

    from tlkit.config import describe_error
    from tlkit.infer.tta import normalize_spec
    from tlkit.model.settings import BackboneConfig, HeadConfig

    classes = hparams.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: its metadata has no list of class names; {_FROM_A_RUN}.")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: its metadata lists {len(classes)} class(es) {classes[:5]!r}; a classifier "
                              "needs at least 2 distinct classes. The file was edited or not written by tlkit.")
    try:
        BackboneConfig.model_validate(hparams.get("backbone"))
        HeadConfig.model_validate(hparams.get("head") or {})
        normalize_spec(hparams.get("tta"))
    except ValidationError as exc:
        section = BackboneConfig if exc.title == BackboneConfig.__name__ else HeadConfig
        prefix = "backbone" if section is BackboneConfig else "head"
        raise CheckpointError(f"{path}: invalid metadata, {prefix}.{describe_error(exc.errors()[0], section)}; "
                              "the file was edited or not written by this tlkit.") from None
    except TlkitError as exc:
        raise CheckpointError(f"{path}: invalid metadata, {exc}") from None
    try:
        return TransferModule(**hparams)
    except (TlkitError, ValueError, TypeError) as exc:  # the other settings, or keys this version does not know
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: invalid metadata ({detail}); the file was edited or not written by this "
                              "tlkit.") from None


def load_weights(path: str | Path, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """load_state_dict(strict=True) with a one-line error when the weights do not fit the described model."""
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: its weights do not fit the model its metadata describes ({first[:200]}); "
                              "the file was edited, truncated or mixes two models.") from None


def saved_split(checkpoint: dict) -> dict:
    """The data split a checkpoint's run used ({} if unknown): Lightning stores the datamodule's state_dict under its
    class name, and tlkit's datamodules put the split there."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("split"), dict):
            return dict(value["split"])
    return {}
