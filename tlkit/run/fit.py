"""fit(recipe) -> FitResult: train a recipe and write its run directory.

A thin composition of public pieces: the datamodule and TransferModule built from the recipe's sections, Lightning's
Trainer with tlkit's callbacks (checkpoints, LR monitor, seeding, EMA, loss and data-health guards), plus what only a
run directory needs: the folder itself (never reused silently), the recipe and classes beside the checkpoints, the
preflight warnings, resume, and metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.preflight import preflight
from tlkit.errors import TlkitError
from tlkit.io import atomic_save, atomic_write
from tlkit.model.ema import WeightEMA
from tlkit.model.faults import AtomicCheckpointIO, DataHealthGuard, FiniteLossGuard
from tlkit.model.module import TransferModule
from tlkit.recipe import Recipe, recipe_to_dict
from tlkit.redact import redact_credentials
from tlkit.run import provenance
from tlkit.run.accelerate import CompileEmbedder, check_precision
from tlkit.run.auto import decision_note, resolve_auto_strategy
from tlkit.run.build import build_datamodule, build_module_for, default_run_dir
from tlkit.run.console import EpochLines, progress_bars, quiet_intended_warnings
from tlkit.run.distributed import (
    RUN_DIR_ENV,
    TimmSyncBatchNorm,
    check_shared_run_dir,
    check_sync_batchnorm,
    inherited_run_dir,
    launch_rank,
    lightning_strategy,
    shared_run_stamp,
    start_process_group,
)
from tlkit.run.features import choose_training_inputs, fit_head_closed_form
from tlkit.run.loggers import FinalFigures, build_loggers
from tlkit.run.resume import (
    ResumePoint,
    carry_over_metrics,
    history_up_to,
    resume_point,
)
from tlkit.seeding import BatchSeeding

log = logging.getLogger(__name__)

# Any of these makes a non-empty folder look like a run (the refusal message suggests --resume).
RUN_MARKERS = ("recipe.yaml", "metrics.csv", "metrics.json", "checkpoints", "provenance.json")
# --overwrite deletes the folder, so it needs files only tlkit writes together (a project may hold a recipe.yaml).
RUN_SIGNATURE = ("recipe.yaml", "classes.json", "metrics.csv")


class RunDirError(TlkitError, FileExistsError):
    """The run directory already holds something; tlkit never overwrites a run silently."""


class FitResult(TypedDict, total=False):
    """What fit() returns and writes to metrics.json. Multi-label runs report val_map / val_f1_micro / val_f1_macro
    (and best_val_map, test_*) instead of the accuracies, and the tuned per-class thresholds."""

    multi_label: bool
    task: str  # single_label | multi_label (tlkit.model.tasks)
    monitor: str  # the validation metric that chose best.ckpt: the task's (val_acc, val_map)
    val_map: float | None
    val_f1_micro: float | None
    val_f1_macro: float | None
    best_val_map: float | None
    test_map: float | None
    test_f1_micro: float | None
    test_f1_macro: float | None
    thresholds: dict[str, float]
    val_acc: float | None
    val_loss: float | None
    val_balanced_acc: float | None
    val_macro_f1: float | None
    best_val_acc: float | None
    test_acc: float | None
    test_loss: float | None
    test_balanced_acc: float | None
    test_macro_f1: float | None
    num_test: int
    train_acc: float | None
    train_loss: float | None
    balance: str
    epochs: int
    wall_s: float
    num_classes: int
    num_train: int
    num_val: int
    skipped_files: int
    skipped_mid_run: dict[str, int]
    data_warnings: list[str]
    feature_cache: dict
    probe: dict
    backbone: str
    weights: str
    strategy: str
    strategy_auto: dict
    resumed_from_epoch: int
    run_dir: str
    best_checkpoint: str
    last_checkpoint: str


def fit(recipe: Recipe, run_dir: str | Path | None = None, *, callbacks: list[L.Callback] | None = None,
        resume: bool = False, overwrite: bool = False) -> FitResult:
    """Train `recipe`; write the run directory; return the final metrics (also written to metrics.json).

    run_dir: default runs/<recipe name>/<timestamp>/. A folder that already holds files is refused unless
    resume=True (continue it from checkpoints/last.ckpt, with the recipe from load_run_recipe; on CPU with the same
    seed the finished run equals an uninterrupted one) or overwrite=True (replace an earlier tlkit run there).
    callbacks: added to the trainer's (the search's pruning callback uses this). A finished run is not trained again.
    """
    if resume and run_dir is not None and (Path(run_dir) / "metrics.json").is_file():
        log.info("%s already finished (metrics.json exists); nothing to resume.", run_dir)
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    started = time.perf_counter()
    check_sync_batchnorm(recipe.trainer.sync_batchnorm, recipe.trainer.accelerator)
    check_precision(recipe.trainer.precision, recipe.trainer.accelerator)
    start_process_group(recipe.trainer.accelerator)  # torchrun: processes share feature extraction from here on
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    datamodule = build_datamodule(recipe)
    recipe, auto_decision = resolve_auto_strategy(recipe, datamodule)
    module = build_module_for(recipe, datamodule)
    warnings_found = _preflight(recipe, datamodule, module)

    run_dir = prepare_run_dir(recipe, run_dir, resume=resume, overwrite=overwrite)
    resume_from = resume_point(run_dir, datamodule.classes) if resume else None
    if launch_rank() == 0:
        _announce(run_dir, resume, resume_from)
        if not (resume and (run_dir / "recipe.yaml").is_file()):  # a resumed run keeps the recipe it started with
            _write_run_files(run_dir, recipe, datamodule, auto_decision)

    fit_datamodule, cache_info = choose_training_inputs(  # data.on_bad_image: skip lists files in bad_log
        recipe, datamodule, module, bad_log=run_dir / "skipped_mid_run.txt",
        first_epoch=resume_from.epoch + 1 if resume_from is not None else 0)
    epochs = recipe.trainer.epochs
    if recipe.strategy.closed_form_only:  # the recipe guarantees cached features here (strategy.unmet_needs)
        cache_info["solver"] = fit_head_closed_form(module, fit_datamodule, recipe.seed)
        epochs = 0  # the head is already optimal; the trainer only validates and saves the checkpoints

    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=module.monitor, mode="max")
    # Not save_last=True: Lightning then writes last.ckpt only in epochs that also improve best, so last.ckpt would
    # hold the best epoch's weights, not the final ones. A monitor-less top-1 checkpoint is rewritten every epoch.
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    health = DataHealthGuard(recipe.data.max_bad_fraction)
    trainer = _build_trainer(recipe, run_dir, epochs, resume_from,
                             [checkpoint, last, health, *(callbacks or [])], num_train=len(datamodule.scan.train))
    L.seed_everything(recipe.seed, workers=True, verbose=False)  # both paths start training from the same RNG state
    _train(trainer, module, fit_datamodule, run_dir, epochs, resume_from, checkpoint)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    thresholds = _tune_best_thresholds(trainer, checkpoint, fit_datamodule) if module.task.has_thresholds else None
    last_saved = last.best_model_path  # before the test pass: trainer.test restores best.ckpt's older callback state
    tested = _test_once(trainer, module, fit_datamodule, checkpoint) if datamodule.scan.test else {}
    metrics = _result(recipe, datamodule, module, logged, tested, trainer=trainer, checkpoints=(checkpoint, last),
                      health=health, extras={"data_warnings": warnings_found, "feature_cache": cache_info,
                                             **({"strategy_auto": auto_decision} if auto_decision else {}),
                                             **({"thresholds": thresholds} if thresholds is not None else {}),
                                             **_probe_info(trainer)})
    metrics["last_checkpoint"] = last_saved or metrics["last_checkpoint"]
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    if resume:
        metrics["resumed_from_epoch"] = resume_from.epoch + 1 if resume_from else 0
    metrics["run_dir"] = str(run_dir)
    if launch_rank() == 0:
        atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _result(recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule, logged: dict, tested: dict,
            *, trainer: L.Trainer, checkpoints: tuple[ModelCheckpoint, ModelCheckpoint], health: DataHealthGuard,
            extras: dict) -> FitResult:
    best, last = checkpoints
    return {
        "multi_label": module.multi_label,
        "task": module.task.name,
        "monitor": module.monitor,  # the metric that picked best.ckpt (search optimises it too)
        **{k: logged.get(k) for k in (*_val_metrics(module), "val_loss")},
        f"best_{module.monitor}": float(best.best_model_score) if best.best_model_score is not None else None,
        **tested,
        **{k: logged.get(k) for k in module.task.train_reported},
        "train_loss": logged.get("train_loss"),
        "balance": recipe.data.balance,
        "epochs": int(trainer.current_epoch),
        "num_classes": len(datamodule.classes),
        "num_train": len(datamodule.scan.train),
        "num_val": len(datamodule.scan.val),
        "num_test": len(datamodule.scan.test),
        "skipped_files": len(datamodule.scan.skipped),
        "skipped_mid_run": dict(health.skipped),
        "backbone": recipe.backbone.name,
        "weights": module.weights_source,
        "strategy": recipe.strategy.kind,
        **extras,
        "best_checkpoint": best.best_model_path,
        "last_checkpoint": last.best_model_path or best.last_model_path,
    }


def _probe_info(trainer: L.Trainer) -> dict:
    """lp_ft's closed-form probe: its L2 strength and held-out / val accuracy before fine-tuning."""
    from tlkit.model.lpft import ClosedFormProbe

    found = [c.info for c in trainer.callbacks if isinstance(c, ClosedFormProbe) and c.info]
    return {"probe": found[0]} if found else {}


def _preflight(recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule) -> list[str]:
    """The doctor's cheap pass at training start (what the scan already read, plus duplicates by size)."""
    checked = preflight(datamodule.scan, balance=recipe.data.balance, crop_size=module.preprocessing.input_size)
    if launch_rank() == 0:
        for line in checked["warnings"]:
            log.warning("data: %s", line)
        if checked["warnings"] and recipe.data.source != "litdata":  # doctor reads image files, not a stream
            target = Path(recipe.data.root) / recipe.data.csv if recipe.data.source == "csv" else recipe.data.root
            log.warning("data: `tlkit doctor %s` inspects every image (modes, placeholders, truncation)", target)
    return checked["warnings"]


def _announce(run_dir: Path, resume: bool, resume_from: ResumePoint | None) -> None:
    if resume:
        log.info("resuming %s from %s", run_dir, f"epoch {resume_from.epoch + 2} ({resume_from.path})"
                 if resume_from else "epoch 1 (it stopped before its first checkpoint)")
    else:
        log.info("run directory: %s (if this run is interrupted: tlkit train --resume %s)", run_dir, run_dir)


def _test_once(trainer: L.Trainer, module: TransferModule, datamodule: L.LightningDataModule,
               checkpoint: ModelCheckpoint) -> dict:
    """The test split, evaluated once with the checkpoint val chose (never used for any choice itself)."""
    best = checkpoint.best_model_path if checkpoint.best_model_path and Path(checkpoint.best_model_path).is_file() \
        else None
    with quiet_intended_warnings():
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
    scores = results[0] if results else {}
    headline = "test_" + module.task.monitor.removeprefix("val_")
    log.info("test split (checkpoint %s): %s %s", Path(best).name if best else "final weights",
             module.task.metric_label, f"{scores[headline]:.2%}" if headline in scores else "n/a")
    return {k: float(scores[k]) if k in scores else None
            for k in (f"test_{name[4:]}" for name in (*_val_metrics(module), "val_loss"))}


def _val_metrics(module: TransferModule) -> tuple[str, ...]:
    """The validation metrics metrics.json reports (test_* the same names)."""
    return module.task.reported


def _tune_best_thresholds(trainer: L.Trainer, checkpoint: ModelCheckpoint,
                          datamodule: L.LightningDataModule) -> dict[str, float] | None:
    """Multi-label: per-class thresholds tuned (best F1) on the val split's predictions of best.ckpt's weights, and
    written into best.ckpt, so evaluate, predict, export and the test split use them. Rank 0 tunes; all ranks wait."""
    path = checkpoint.best_model_path
    if not path or not Path(path).is_file():
        return None
    from tlkit.infer.checkpoint import load_checkpoint, read_checkpoint

    best = load_checkpoint(path, map_location=trainer.strategy.root_device)
    if trainer.is_global_zero:
        thresholds = best.tune_thresholds(datamodule)
        raw = read_checkpoint(path)
        raw["state_dict"]["thresholds"] = best.thresholds.detach().cpu().clone()
        raw["tlkit"]["thresholds"] = thresholds
        atomic_save(path, lambda name: torch.save(raw, name))
    trainer.strategy.barrier()
    tuned = read_checkpoint(path)["tlkit"]["thresholds"]
    log.info("decision thresholds tuned on val (best F1 per class): %s",
             ", ".join(f"{c} {t:.2f}" for c, t in zip(best.classes, tuned)))
    return dict(zip(best.classes, tuned))


def prepare_run_dir(recipe: Recipe, run_dir: str | Path | None, *, resume: bool, overwrite: bool) -> Path:
    """The run's folder, created; an existing non-empty one only with resume or (for an earlier run) overwrite."""
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to continue.")
    run_dir = run_dir if run_dir is not None else inherited_run_dir()  # DDP ranks started by Lightning's launcher
    check_shared_run_dir(run_dir is not None)
    if run_dir is None and shared_run_stamp() is not None:  # every rank of torchrun / srun names the same folder
        run_dir = Path(recipe.output.runs_dir) / recipe.name / shared_run_stamp()
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    if launch_rank() == 0 and not resume:  # other ranks join the folder rank 0 checked and filled
        _refuse_reuse(run_dir, overwrite=overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _refuse_reuse(run_dir: Path, *, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; choose another --run-dir.")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    is_run = any((run_dir / name).exists() for name in RUN_MARKERS)
    protected = {Path.cwd().resolve(), Path.home().resolve(), *Path.cwd().resolve().parents}
    deletable = all((run_dir / name).is_file() for name in RUN_SIGNATURE) and run_dir.resolve() not in protected
    if overwrite and deletable:
        log.warning("replacing the earlier run in %s (--overwrite)", run_dir)
        shutil.rmtree(run_dir)
        return
    if overwrite:
        raise RunDirError(f"run directory {run_dir} does not hold an earlier tlkit run (or is the current folder, "
                          "home or one of their parents); --overwrite only replaces "
                          "an earlier run. Choose an empty or new --run-dir.")
    hint = (f"continue it with tlkit train --resume {run_dir}, replace it with --overwrite, or choose a new "
            "--run-dir" if is_run else "choose an empty or new --run-dir")
    raise RunDirError(f"run directory {run_dir} is not empty; {hint}.")


def _write_run_files(run_dir: Path, recipe: Recipe, datamodule: ImageFolderDataModule, auto: dict | None) -> None:
    auto_note = decision_note(auto) if auto else ""
    recipe_text = redact_credentials(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))  # never a password
    atomic_write(run_dir / "recipe.yaml", auto_note + recipe_text)
    samples = [*datamodule.scan.train, *datamodule.scan.val]
    labels = dict(samples)  # part of the data's fingerprint: a CSV's labels can change while the images do not
    record = provenance.collect(recipe_text, recipe.data.root, provenance.data_files(datamodule.scan), labels)
    if datamodule.scan.curation:  # data.exclude / data.relabel as applied: which file, how many images, its hash
        record["data"]["curation"] = datamodule.scan.curation
    atomic_write(run_dir / "provenance.json", json.dumps(record, indent=2) + "\n")
    atomic_write(run_dir / "classes.json", json.dumps(datamodule.classes, indent=2) + "\n")
    if datamodule.scan.skipped:
        atomic_write(run_dir / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in datamodule.scan.skipped))


def _build_trainer(recipe: Recipe, run_dir: Path, epochs: int, resume_from: ResumePoint | None,
                   callbacks: list[L.Callback], num_train: int) -> L.Trainer:
    t = recipe.trainer
    loggers = build_loggers(recipe, run_dir)  # metrics.csv first
    if resume_from is not None and launch_rank() == 0:  # keep the killed run's history; resumed epochs append to it
        carry_over_metrics(loggers[0], history_up_to(run_dir / "metrics.csv", resume_from))
    steps_per_epoch = max(1, num_train // recipe.data.batch_size)
    return L.Trainer(
        max_epochs=epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=lightning_strategy(t.strategy, staged=recipe.strategy.staged),
        sync_batchnorm=t.sync_batchnorm,
        plugins=[*([TimmSyncBatchNorm()] if t.sync_batchnorm else []), AtomicCheckpointIO()],
        precision=t.precision,
        logger=loggers,
        callbacks=[LearningRateMonitor(logging_interval="epoch"), BatchSeeding(recipe.seed), FinalFigures(run_dir),
                   *([EpochLines()] if t.progress_bar and not progress_bars(t.progress_bar) else []),
                   *([WeightEMA(recipe.optim.ema_decay)] if recipe.optim.ema_decay > 0 else []),
                   FiniteLossGuard(recipe.optim.lr), *([CompileEmbedder()] if t.compile else []), *callbacks],
        enable_progress_bar=progress_bars(t.progress_bar),
        enable_model_summary=False,
        log_every_n_steps=min(50, steps_per_epoch),
        num_sanity_val_steps=0,
    )


def _train(trainer: L.Trainer, module: TransferModule, fit_datamodule: L.LightningDataModule, run_dir: Path,
           epochs: int, resume_from: ResumePoint | None, checkpoint: ModelCheckpoint) -> None:
    with quiet_intended_warnings():
        if epochs == 0:  # closed-form head: validate, then write best.ckpt and last.ckpt
            trainer.validate(module, datamodule=fit_datamodule, verbose=False)
            _save_closed_form_checkpoints(trainer, checkpoint, run_dir)
        elif resume_from is not None and resume_from.epoch + 1 >= epochs:  # killed after its last checkpoint
            trainer.validate(module, datamodule=fit_datamodule, ckpt_path=str(resume_from.path), verbose=False)
        else:
            with _run_dir_for_other_ranks(run_dir):
                trainer.fit(module, datamodule=fit_datamodule,
                            ckpt_path=str(resume_from.path) if resume_from is not None else None)


@contextmanager
def _run_dir_for_other_ranks(run_dir: Path):
    """Lightning's ddp launcher starts the other ranks inside trainer.fit, re-running this command: they inherit the
    run directory through the environment."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def _save_closed_form_checkpoints(trainer: L.Trainer, checkpoint: ModelCheckpoint, run_dir: Path) -> None:
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("best.ckpt", "last.ckpt"):
        trainer.save_checkpoint(directory / name)
    checkpoint.best_model_path = str(directory / "best.ckpt")
    checkpoint.last_model_path = str(directory / "last.ckpt")
    score = trainer.callback_metrics.get(checkpoint.monitor)
    checkpoint.best_model_score = score.detach().clone() if score is not None else None
