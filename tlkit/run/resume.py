"""Resume a killed run from its run directory: the recipe it saved, its checkpoints/last.ckpt, its metrics.csv.

Exactness comes from tlkit.seeding (nothing random depends on how long the process has run); this module finds the
restart point, checks it still fits the data, and keeps the killed run's metric history, which Lightning's CSV logger
would otherwise delete when it starts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger

from tlkit.errors import CheckpointError, RecipeError
from tlkit.recipe import Recipe, load_recipe

# Overrides that cannot change what is trained: anything else would make the resumed run a different run.
RESUME_OVERRIDES = ("trainer.progress_bar", "data.num_workers")


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    epoch: int  # index of the last completed epoch (the checkpoint is written after its validation)
    global_step: int


def load_run_recipe(run_dir: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe a run saved (RUN_DIR/recipe.yaml, fully resolved), with only harmless overrides allowed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"--resume {run_dir}: no such run directory; pass the folder a training run wrote into.")
    if not (run_dir / "recipe.yaml").is_file():
        raise RecipeError(f"--resume {run_dir}: no recipe.yaml there, so it is not a tlkit run directory; "
                          "pass the folder that holds recipe.yaml and checkpoints/.")
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        if key not in RESUME_OVERRIDES:
            raise RecipeError(f"--set {key}: a resumed run keeps its recipe (else it would not continue the same run); "
                              f"only {', '.join(RESUME_OVERRIDES)} may change. Start a new run to change {key}.")
    return load_recipe(run_dir / "recipe.yaml", overrides)


def resume_point(run_dir: Path, classes: list[str]) -> ResumePoint | None:
    """checkpoints/last.ckpt, read safely (weights_only) and checked against the data; None when the run was killed
    before its first epoch ended (it then starts from the beginning)."""
    from tlkit.infer.checkpoint import read_checkpoint

    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    checkpoint = read_checkpoint(path)  # a crafted pickle is refused here, before Lightning loads it
    saved = checkpoint["tlkit"].get("classes")
    if not isinstance(saved, list) or not all(isinstance(checkpoint.get(k), int) for k in ("epoch", "global_step")):
        raise CheckpointError(f"{path} lacks its class list or epoch (edited, or not written by tlkit); start a new "
                              "run, or restore the run's checkpoints/last.ckpt.")
    if saved != list(classes):
        raise CheckpointError(
            f"{path} was trained on {len(saved)} classes ({', '.join(saved)}) but the data folder now has "
            f"{len(classes)} ({', '.join(classes)}); restore the class folders or start a new run."
        )
    return ResumePoint(path, int(checkpoint["epoch"]), int(checkpoint["global_step"]))


@dataclass(frozen=True)
class MetricsHistory:
    columns: list[str]
    rows: list[dict[str, str]]


def history_up_to(path: Path, point: ResumePoint) -> MetricsHistory:
    """metrics.csv rows of the epochs the checkpoint holds. Rows without an epoch (the LR monitor's, logged at each
    epoch start) are kept when logged before the checkpoint's step; the resumed run logs the rest again."""
    if not path.is_file():
        return MetricsHistory([], [])
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    kept = []
    for row in rows:
        epoch = row.get("epoch") or ""
        if epoch != "":
            keep = int(float(epoch)) <= point.epoch
        else:
            keep = int(float(row.get("step") or 0)) < point.global_step
        if keep:
            kept.append(row)
    return MetricsHistory(columns, kept)


def carry_over_metrics(logger: CSVLogger, history: MetricsHistory) -> None:
    """Write the history through the logger before training: creating its writer deletes metrics.csv (the rows were
    read first), and the resumed epochs then append to the same file, so a second kill loses nothing either. The
    original column order is kept, so the finished file is byte-identical to an uninterrupted run's."""
    if not history.rows:
        return
    writer = logger.experiment
    writer.metrics_keys = list(history.columns)
    writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in history.rows]
    writer.save()
