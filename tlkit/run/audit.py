"""`tlkit audit --recipe`: the recipe's data (with its columns, exclude and relabel) audited with its backbone,
weights and eval size."""

from __future__ import annotations

from pathlib import Path

from tlkit.audit import AuditResult, AuditSettings, audit
from tlkit.data.table import scan_data
from tlkit.recipe import Recipe


def audit_recipe(recipe: Recipe, *, settings: AuditSettings | None = None, out: str | Path | None = None,
                 num_workers: int = 0, progress: bool = True) -> AuditResult:
    d = recipe.data
    scan = scan_data(d.root, source=d.source, csv=d.csv, multi_label=d.multi_label, label_delimiter=d.label_delimiter,
                     val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=recipe.seed, columns=d.columns,
                     exclude=d.exclude, relabel=d.relabel)
    return audit(scan, out=out or Path(recipe.output.runs_dir) / "audit" / recipe.name,
                 backbone=recipe.backbone.name, weights=recipe.backbone.weights,
                 input_size=recipe.backbone.input_size, settings=settings, num_workers=num_workers,
                 cache_dir=recipe.cache.dir, progress=progress)
