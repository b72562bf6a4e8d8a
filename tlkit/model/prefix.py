"""A backbone cut in two at a layer-group boundary: a frozen prefix (run once per image, its output cached) and the
trained top (run every step from the cached activations).

timm's conv nets run their top-level modules in registration order (timm's own FeatureListNet relies on it), and
nn.Sequential runs its children in order, so the backbone is the chain of its children with any Sequential that
straddles the cut opened up. The cut is accepted only when that chain reproduces the backbone's output on a probe
input; a backbone whose forward does more than chain its children (a ViT's class token, an attention pool) is refused
with a clear message instead of being split wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tlkit.errors import BackboneError


@dataclass(frozen=True)
class PrefixSplit:
    """The backbone's modules in forward order, cut after `prefix_names`; plain references to the backbone's own
    submodules (not registered again, so the state dict and checkpoints hold each weight once)."""

    prefix_names: tuple[str, ...]
    top_names: tuple[str, ...]
    prefix_modules: tuple[nn.Module, ...]
    top_modules: tuple[nn.Module, ...]

    def prefix(self) -> nn.Sequential:
        """The frozen part as one module (for extraction and its weights fingerprint)."""
        return nn.Sequential(*self.prefix_modules)

    def run_top(self, activations: torch.Tensor) -> torch.Tensor:
        """Prefix activations -> the backbone's pooled features."""
        x = activations
        for module in self.top_modules:
            x = module(x)
        return x

    def output_shape(self, input_size: int, in_chans: int = 3) -> tuple[int, ...]:
        """Shape of one image's prefix activations at `input_size` px (a zero image through the prefix)."""
        prefix = self.prefix()
        was_training = [m.training for m in self.prefix_modules]
        prefix.eval()
        device = next(prefix.parameters()).device
        with torch.no_grad():
            shape = tuple(prefix(torch.zeros(1, in_chans, input_size, input_size, device=device)).shape[1:])
        for module, mode in zip(self.prefix_modules, was_training):
            module.train(mode)
        return shape


def split_backbone(backbone: nn.Module, frozen: Iterable[str], *, input_size: int, in_chans: int = 3) -> PrefixSplit:
    """Cut `backbone` so the prefix holds exactly the parameters named in `frozen` (backbone-relative names).

    Raises BackboneError when the frozen parameters are not a bottom part of the forward chain, or when the chain of
    modules does not reproduce the backbone's output (its forward is more than its children in order).
    """
    frozen = set(frozen)
    name = type(backbone).__name__
    if not frozen:
        raise BackboneError(f"{name}: nothing is frozen, so there is no prefix to cache.")
    chain = _chain(backbone, frozen)
    last_frozen = max(i for i, (_, m) in enumerate(chain) if _param_names(m, frozen, _prefix_of(chain[i][0])))
    prefix, top = chain[: last_frozen + 1], chain[last_frozen + 1:]
    trained_in_prefix = [f"{n}.{p}" for n, m in prefix for p, _ in m.named_parameters() if f"{n}.{p}" not in frozen]
    if trained_in_prefix or not top:
        raise BackboneError(f"{name}: the trained layer groups are not the top of its forward chain (e.g. "
                            f"{(trained_in_prefix or ['nothing after the frozen part'])[0]}); choose another "
                            "strategy.train_top, or strategy kind gradual / finetune (they train on images).")
    split = PrefixSplit(tuple(n for n, _ in prefix), tuple(n for n, _ in top),
                        tuple(m for _, m in prefix), tuple(m for _, m in top))
    _check_reproduces(backbone, split, input_size, in_chans)
    return split


def _prefix_of(name: str) -> str:
    return f"{name}." if name else ""


def _param_names(module: nn.Module, names: set[str], prefix: str) -> set[str]:
    """Which of `module`'s parameters (full names with `prefix`) are in `names`."""
    return {prefix + p for p, _ in module.named_parameters()} & names


def _chain(backbone: nn.Module, frozen: set[str]) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) in forward order; a Sequential holding both frozen and trained parameters is opened
    into its children (recursively), so the cut can fall inside a stage."""
    out: list[tuple[str, nn.Module]] = []
    for child_name, child in backbone.named_children():
        out.extend(_open(child_name, child, frozen))
    return out


def _open(name: str, module: nn.Module, frozen: set[str]) -> list[tuple[str, nn.Module]]:
    own = {f"{name}.{p}" for p, _ in module.named_parameters()}
    straddles = bool(own & frozen) and bool(own - frozen)
    if straddles and isinstance(module, nn.Sequential):
        return [item for child_name, child in module.named_children()
                for item in _open(f"{name}.{child_name}", child, frozen)]
    return [(name, module)]


def _check_reproduces(backbone: nn.Module, split: PrefixSplit, input_size: int, in_chans: int) -> None:
    """The prefix-then-top chain must give the backbone's own output (eval mode, a random probe image)."""
    was_training = backbone.training
    backbone.eval()
    param = next(backbone.parameters())
    probe = torch.randn(2, in_chans, input_size, input_size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(param.device)
    try:
        with torch.no_grad():
            expected = backbone(probe)
            got = split.run_top(split.prefix()(probe))
        same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    except Exception as exc:  # noqa: BLE001 - any failure of the chain means the split is not the backbone
        same, expected = False, exc
    finally:
        backbone.train(was_training)
    if not same:
        raise BackboneError(f"{type(backbone).__name__} cannot be cut into a frozen prefix and a trained top: its "
                            "forward is more than its modules in order. Use strategy kind gradual with "
                            "unfreeze_epochs (it trains on images), or a conv backbone such as an EfficientNet, "
                            "MobileNet or ResNet.")
