"""Settings of the inference layer: inference precision and the views-per-forward cap; the TTA policy a model carries
is defined with the model's settings (tlkit.model.settings) and re-exported here."""

from __future__ import annotations

from tlkit.model.settings import (  # noqa: F401  (the TTA section and its bounds, re-exported for callers)
    AGGREGATES,
    CROPS,
    MAX_TTA_SCALE,
    MAX_TTA_SCALES,
    NAMED_FIELDS,
    NAMED_POLICIES,
    POLICIES,
    TTAConfig,
)

DEFAULT_MAX_VIEWS_PER_FORWARD = 64  # memory cap: views per model forward
PRECISIONS = ("auto", "fp32", "bf16")  # inference precision choices (tlkit.infer.precision)
