"""Safe checkpoint loading, where the inference layer's callers have always found it: one definition, in
tlkit.model.loading (torch.load(weights_only=True) or safetensors, metadata validated before any model is built)."""

from tlkit.model.loading import (  # noqa: F401  (re-exported)
    load_checkpoint,
    load_classifier,
    load_weights,
    read_checkpoint,
    saved_split,
)
