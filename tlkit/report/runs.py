"""Read one run directory (what `tlkit train`, `evaluate` and `preview` left there) into plain data for the report.

Read-only and torch-free: every file is optional except that the folder must look like a run (recipe.yaml or
metrics.csv), so a killed or half-finished run still gets a report that says what is missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tlkit.errors import ReportError
from tlkit.model.task_reports import report_of
from tlkit.redact import redact_credentials
from tlkit.tune.diagnose import (
    Diagnosis,
    diagnose_curves,
    metrics_rows,
    read_metrics_csv,
)

RUN_FILES = ("recipe.yaml", "metrics.csv")  # either one makes a folder a run (metrics.json comes only at the end)
PREVIEW_NAMES = ("augment_preview.png", "preview.png")
MAX_LISTED = 50  # skipped files listed in the page; the rest are counted


@dataclass
class Evaluation:
    """One eval/<checkpoint name>/ folder: its report.json and where its per-policy files are."""

    name: str
    folder: Path
    report: dict


@dataclass
class Run:
    path: Path
    label: str = ""
    recipe_text: str = ""
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # metrics.json; empty for an unfinished run
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)  # metrics.csv, one merged row per epoch
    lr: dict[str, list[float]] = field(default_factory=dict)  # per-group LR column -> one value per epoch
    provenance: dict | None = None
    classes: list[str] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    preview: Path | None = None
    skipped: list[str] = field(default_factory=list)  # "path<TAB>why" lines of skipped.txt
    skipped_mid_run: list[str] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    diagnosis_note: str = ""  # why there is no diagnosis


def read_run(path: str | Path) -> Run:
    """Everything the report shows about the run in `path`; a ReportError when it is not a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} {'is a file' if path.exists() else 'does not exist'}; pass a run directory written by tlkit train "
                          "(runs/<recipe>/<timestamp>/).")
    if not any((path / name).is_file() for name in RUN_FILES):
        raise ReportError(f"{path} is not a tlkit run directory (no recipe.yaml or metrics.csv); pass the folder "
                          "tlkit train wrote (runs/<recipe>/<timestamp>/).")
    run = Run(path=path, label=path.name)
    if (path / "recipe.yaml").is_file():  # masked again: a run written before tlkit masked passwords
        run.recipe_text = redact_credentials(_utf8(path / "recipe.yaml"))
        run.recipe = _yaml_mapping(run.recipe_text)
    run.metrics = _json(path / "metrics.json") or {}
    provenance = _json(path / "provenance.json")
    run.provenance = json.loads(redact_credentials(json.dumps(provenance))) if isinstance(provenance, dict) else None
    run.classes = _json(path / "classes.json") or []
    if (path / "metrics.csv").is_file():
        run.epochs, run.lr = read_epochs(path / "metrics.csv")
    run.evaluations = _evaluations(path)
    run.preview = find_preview(path, run.recipe.get("name"))
    run.skipped = _lines(path / "skipped.txt")
    run.skipped_mid_run = _lines(path / "skipped_mid_run.txt")
    run.diagnosis, run.diagnosis_note = _diagnose(path)
    return run


def read_epochs(path: Path) -> tuple[dict[int, dict[str, float]], dict[str, list[float]]]:
    """metrics.csv -> ({epoch: {metric: value}}, {lr column: [value per epoch]}).

    Lightning's CSVLogger writes train and val metrics on separate rows of one epoch, and LearningRateMonitor's
    per-group LR on rows with a step but no epoch (one per epoch start, in order).
    """
    epochs: dict[int, dict[str, float]] = {}
    lr: dict[str, list[float]] = {}
    for row in metrics_rows(path):
        values = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        if "epoch" in row and math.isfinite(row["epoch"]):
            epochs.setdefault(int(row["epoch"]), {}).update(values)
        for key, value in values.items():
            if key.startswith("lr-"):
                lr.setdefault(key, []).append(value)
    return epochs, lr


def find_preview(run_dir: Path, recipe_name: str | None) -> Path | None:
    """An augmentation preview PNG in the run directory, else the one `tlkit preview` writes by default beside the
    recipe's runs (runs/<recipe>/augment_preview.png, the run directory's parent)."""
    for folder in (run_dir, run_dir.parent if recipe_name and run_dir.parent.name == recipe_name else None):
        for name in PREVIEW_NAMES if folder is not None else ():
            if (folder / name).is_file():
                return folder / name
    return None


def _evaluations(run_dir: Path) -> list[Evaluation]:
    found = []
    for report in sorted((run_dir / "eval").glob("*/report.json")):
        data = _json(report)
        if isinstance(data, dict) and isinstance(data.get("policies"), dict):
            found.append(Evaluation(report.parent.name, report.parent, data))
    return found


def _diagnose(run_dir: Path) -> tuple[Diagnosis | None, str]:
    """tlkit diagnose's verdict (same thresholds as its defaults), without writing its files."""
    if not (run_dir / "metrics.csv").is_file():
        return None, "no metrics.csv yet: the run stopped before its first epoch ended"
    curves = read_metrics_csv(run_dir / "metrics.csv")
    try:
        diagnosis = diagnose_curves(curves["train_loss"], curves["val_loss"], curves["train_acc"], curves["val_acc"])
    except ValueError as exc:  # e.g. a closed-form (lbfgs) probe: validation only, no training epochs
        return None, str(exc)
    return diagnosis, ""


def _json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a file cut short by a kill: the report shows the section as missing


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); tlkit "
                          "writes it as UTF-8, so it was damaged or replaced: restore it from a copy.") from None


def _yaml_mapping(text: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def final_numbers(run: Run) -> dict[str, float | int | str | None]:
    """The summary figures: metrics.json when the run finished, else the last logged epoch of metrics.csv."""
    m = run.metrics
    last = run.epochs[max(run.epochs)] if run.epochs else {}
    task = report_of(m)  # multi-label runs: mAP and F1 instead of accuracies

    def pick(key: str):
        if m or key.startswith("test_"):
            return m.get(key)
        if key.startswith("best_"):  # an unfinished run: the best epoch logged so far
            return max((e[key[5:]] for e in run.epochs.values() if key[5:] in e), default=None)
        return last.get(key)

    return {
        **{label: pick(key) for label, key in task.report_fields},
        "val loss": pick("val_loss"), "train loss": pick("train_loss"), "epochs": m.get("epochs", len(run.epochs)),
        "backbone": m.get("backbone") or (run.recipe.get("backbone") or {}).get("name"),
        "strategy": m.get("strategy") or (run.recipe.get("strategy") or {}).get("kind"),
        "train / val images": f"{m['num_train']} / {m['num_val']}" if "num_train" in m else None,
        "wall time": f"{m['wall_s']:.1f} s" if isinstance(m.get("wall_s"), (int, float)) else None,
    }


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
