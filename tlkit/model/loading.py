"""Load a Classifier (or a TransferModule to train on) safely from a `.ckpt`, a `model.safetensors` or an export
folder: torch.load(weights_only=True) or safetensors, rebuilt from the file's own metadata.

A file is untrusted input: its bytes may be anything, and its metadata (backbone, input size, TTA scales) is validated
by the same settings models a recipe goes through before any model or image buffer is allocated. Every failure is one
CheckpointError line.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tlkit.errors import CheckpointError, TlkitError
from tlkit.model.classifier import CHECKPOINT_FORMAT, Classifier, create_classifier
from tlkit.model.tasks import task_of

if TYPE_CHECKING:
    from tlkit.model.module import TransferModule

_FROM_A_RUN = "pass a .ckpt from a run's checkpoints/ folder"
WEIGHTS_NAME = "model.safetensors"  # an export folder's weights (tlkit.infer.export writes them)
SIDECAR_NAME = "model.json"  # and its description
CLASSIFIER_KEYS = ("backbone", "stage_pooling", "head", "thresholds")  # the state-dict roots a Classifier owns


def load_classifier(path: str | Path, *, map_location: str | torch.device = "cpu") -> Classifier:
    """A Classifier in eval mode from a run's `.ckpt`, an exported `model.safetensors` or an export folder (no
    recipe, no weight download, no arbitrary unpickling)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        classifier = _exported_classifier(path)
    else:
        checkpoint = read_checkpoint(path)
        hparams = _checked_hparams(path, checkpoint)
        classifier = _validated(path, lambda: classifier_from_hparams(hparams), hparams)
        load_weights(path, classifier, classifier_state(checkpoint["state_dict"]))
    return classifier.to(map_location).eval()


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> TransferModule | Classifier:
    """A TransferModule in eval mode (to train on, or to test with Lightning), rebuilt from a `.ckpt` alone; an
    export (`model.safetensors` or its folder) carries no training settings and gives its Classifier."""
    from tlkit.model.module import TransferModule

    if Path(path).is_dir() or Path(path).suffix == ".safetensors":
        return load_classifier(path, map_location=map_location)
    checkpoint = read_checkpoint(path)
    hparams = _checked_hparams(path, checkpoint)
    module = _validated(path, lambda: TransferModule(**hparams), hparams)
    load_weights(path, module, checkpoint["state_dict"])
    return module.to(map_location).eval()


def classifier_from_hparams(hparams: Mapping[str, Any]) -> Classifier:
    """A Classifier (random weights) from a checkpoint's hyper-parameters (TransferModule's arguments)."""
    from tlkit.model.strategies import strategy_from

    strategy = strategy_from(hparams.get("strategy") or "linear_probe")
    return create_classifier(hparams["backbone"], hparams.get("classes"), head=hparams.get("head"),
                             tta=hparams.get("tta"), multi_label=bool(hparams.get("multi_label", False)),
                             channels_last=bool(hparams.get("channels_last", True)), **strategy.embedding())


def classifier_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The Classifier's tensors of a TransferModule state dict (the training module's other keys dropped)."""
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in CLASSIFIER_KEYS}


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


def _checked_hparams(path: str | Path, checkpoint: dict) -> dict:
    """The checkpoint's hyper-parameters (format 2), with backbone weights 'none' (the state dict holds them all)."""
    # A user's subclass saves its own __init__ arguments as hyper_parameters and tlkit's settings here
    hparams = checkpoint["tlkit"].get("settings") or checkpoint.get("hyper_parameters")
    version = checkpoint["tlkit"].get("format", 1)
    if not isinstance(version, int) or not isinstance(hparams, dict):
        raise CheckpointError(f"{path} has no readable tlkit metadata (format {version!r}); {_FROM_A_RUN}.")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by a newer tlkit (checkpoint format {version}, this one reads "
                              f"{CHECKPOINT_FORMAT}); upgrade tlkit to load it.")
    if version < CHECKPOINT_FORMAT or not isinstance(hparams.get("backbone"), dict):
        raise CheckpointError(f"{path} was written by an older tlkit (checkpoint format 1); evaluate or export it "
                              "with tlkit 0.1.0, or retrain it with this version.")
    return {**hparams, "backbone": {**hparams["backbone"], "weights": "none"}}


def _validated(path: str | Path, build, hparams: Mapping[str, Any]):
    """build() after the metadata went through the settings models (known timm name, input size bounds, head, TTA
    scale bounds), so a hostile file cannot make tlkit allocate a 12000 px view or build an unknown model."""
    from pydantic import ValidationError

    from tlkit.config import describe_error
    from tlkit.model.settings import BackboneConfig, HeadConfig, normalize_tta_spec

    classes = hparams.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: its metadata has no list of class names; {_FROM_A_RUN}.")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: its metadata lists {len(classes)} class(es) {classes[:5]!r}; a classifier "
                              "needs at least 2 distinct classes. The file was edited or not written by tlkit.")
    try:
        BackboneConfig.model_validate(hparams.get("backbone"))
        HeadConfig.model_validate(hparams.get("head") or {})
        normalize_tta_spec(hparams.get("tta"))
    except ValidationError as exc:
        section = BackboneConfig if exc.title == BackboneConfig.__name__ else HeadConfig
        prefix = "backbone" if section is BackboneConfig else "head"
        raise CheckpointError(f"{path}: invalid metadata, {prefix}.{describe_error(exc.errors()[0], section)}; "
                              "the file was edited or not written by this tlkit.") from None
    except TlkitError as exc:
        raise CheckpointError(f"{path}: invalid metadata, {exc}") from None
    try:
        return build()
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


# ---------------------------------------------------------------------------------------------------------------------
# Exports


def read_exported(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(description, tensors) of an exported model.safetensors; the description is its embedded metadata, else the
    model.json beside it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Exported model {str(path)!r} does not exist; write one with `tlkit export`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get("tlkit")
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read {path} as safetensors ({type(exc).__name__}); the file may be truncated.") from exc
    sidecar = path.with_name(SIDECAR_NAME)
    if embedded is None and not sidecar.is_file():
        raise CheckpointError(f"{path} has no tlkit description and no {SIDECAR_NAME} beside it; export it with tlkit.")
    try:
        meta = json.loads(embedded) if embedded is not None else json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its tlkit description is not readable JSON ({type(exc).__name__}); "
                              "export the model again with `tlkit export`.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("preprocessing"), dict):
        raise CheckpointError(f"{path}: its tlkit description has no preprocessing; export it again with `tlkit export`.")
    return meta, state


def _exported_classifier(path: Path) -> Classifier:
    meta, state = read_exported(path)
    features = meta.get("features", "last")
    hparams = {
        "backbone": {"name": meta.get("backbone"), **meta["preprocessing"], "weights": "none"},  # weights: the file
        "classes": meta.get("classes"),
        "head": meta.get("head"),
        "tta": meta.get("tta"),
    }
    task = task_of(meta)

    def build() -> Classifier:
        from tlkit.model.strategies import LinearProbe

        # features/stage_grid go through LinearProbe's checks; an export from before stage_grid was stated
        # carries its grid in the stage-choice buffer ([-grid, stages...]).
        stages = state.get("stage_pooling.feature_stages", state.get("backbone.feature_stages"))
        grid = meta.get("stage_grid", int(-stages[0]) if stages is not None else None)
        probe = LinearProbe.model_validate({"features": features, **({"stage_grid": grid} if grid else {})})
        return create_classifier(hparams["backbone"], hparams["classes"], head=hparams["head"], tta=hparams["tta"],
                                 multi_label=task.has_thresholds, features=probe.features,
                                 stage_grid=probe.stage_grid)

    classifier = _validated(path, build, hparams)
    if task.has_thresholds:  # the thresholds are part of the description, not of the exported tensors
        state = {**state, "thresholds": torch.tensor(read_thresholds(path, meta, classifier.num_classes))}
    load_weights(path, classifier, state)
    return classifier


def read_thresholds(path: str | Path, meta: dict, num_classes: int) -> list[float]:
    """A multi-label export's per-class thresholds, checked (one number in [0, 1] per class)."""
    values = meta.get("thresholds")
    if (not isinstance(values, list) or len(values) != num_classes
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)):
        raise CheckpointError(f"{path}: a multi-label export needs 'thresholds', one number in [0, 1] per class "
                              f"({num_classes}); export the model again with `tlkit export`.")
    return [float(v) for v in values]


def saved_split(checkpoint: dict) -> dict:
    """The data split a checkpoint's run used ({} if unknown): Lightning stores the datamodule's state_dict under its
    class name, and tlkit's datamodules put the split there."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("split"), dict):
            return dict(value["split"])
    return {}


__all__ = ["load_checkpoint", "load_classifier", "read_checkpoint", "read_exported", "saved_split"]
