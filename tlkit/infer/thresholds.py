"""Multi-label decisions and scores, where the inference layer's callers have always found them; one definition, in
tlkit.model.thresholds (the model tunes its thresholds with them)."""

from tlkit.model.thresholds import (  # noqa: F401  (re-exported)
    DEFAULT_THRESHOLD,
    best_f1_threshold,
    decide,
    multilabel_metrics,
    tune_thresholds,
)
