"""fit(recipe) -> metrics dict: train a recipe and write its run directory (DESIGN.md contract 7)."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tlkit.data.datamodule import balanced_class_weights
from tlkit.data.preflight import preflight
from tlkit.io import atomic_write
from tlkit.model.ema import WeightEMA
from tlkit.model.faults import AtomicCheckpointIO, FiniteLossGuard
from tlkit.recipe import Recipe, recipe_to_dict
from tlkit.run.auto import resolve_auto_strategy
from tlkit.run.build import build_datamodule, build_module, default_run_dir
from tlkit.run.distributed import (
    RUN_DIR_ENV,
    TimmSyncBatchNorm,
    check_shared_run_dir,
    check_sync_batchnorm,
    inherited_run_dir,
    launch_rank,
    lightning_strategy,
    shared_run_stamp,
)
from tlkit.run.features import choose_training_inputs, fit_head_closed_form
from tlkit.run.resume import carry_over_metrics, history_up_to, resume_point
from tlkit.seeding import BatchSeeding

log = logging.getLogger(__name__)


def _save_closed_form_checkpoints(trainer: L.Trainer, checkpoint: ModelCheckpoint, run_dir: Path) -> None:
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("best.ckpt", "last.ckpt"):
        trainer.save_checkpoint(directory / name)
    checkpoint.best_model_path = str(directory / "best.ckpt")
    checkpoint.last_model_path = str(directory / "last.ckpt")
    score = trainer.callback_metrics.get("val_acc")
    checkpoint.best_model_score = score.detach().clone() if score is not None else None


def fit(recipe: Recipe, run_dir: str | Path | None = None, *, callbacks: list[L.Callback] | None = None,
        resume: bool = False) -> dict:
    """Train `recipe`; write the run directory; return the final metrics (also written to metrics.json).

    `callbacks` are added to the trainer's (the search's pruning callback uses this). resume=True continues `run_dir`
    from its checkpoints/last.ckpt (recipe from load_run_recipe); on CPU with the same seed the finished run equals an
    uninterrupted one (tlkit.seeding). A finished run is not trained again: its metrics.json is returned."""
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs the run_dir to continue.")
        finished = Path(run_dir) / "metrics.json"
        if finished.is_file():
            log.info("%s already finished (metrics.json exists); nothing to resume.", run_dir)
            return json.loads(finished.read_text())
    started = time.perf_counter()
    check_sync_batchnorm(recipe.trainer.sync_batchnorm, recipe.trainer.accelerator)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    datamodule = build_datamodule(recipe)
    recipe, auto_decision = resolve_auto_strategy(recipe, datamodule)
    train_labels = [label for _, label in datamodule.scan.train]
    class_weights = (balanced_class_weights(train_labels, datamodule.num_classes)
                     if recipe.data.balance == "loss_weights" else None)
    module = build_module(recipe, datamodule.classes, class_weights=class_weights)
    checked = preflight(datamodule.scan, balance=recipe.data.balance, crop_size=module.preprocessing.input_size)
    if launch_rank() == 0:  # the doctor's cheap pass: what the scan already read, plus duplicates by size
        for line in checked["warnings"]:
            log.warning("data: %s", line)
        if checked["warnings"]:
            log.warning("data: `tlkit doctor %s` inspects every image (modes, placeholders, truncation)",
                        recipe.data.root)

    run_dir = run_dir if run_dir is not None else inherited_run_dir()
    check_shared_run_dir(run_dir is not None)
    if run_dir is None and shared_run_stamp() is not None:
        run_dir = Path(recipe.output.runs_dir) / recipe.name / shared_run_stamp()
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    is_rank_zero = launch_rank() == 0  # under torchrun / srun every rank runs fit(); only rank 0 writes files
    run_dir.mkdir(parents=True, exist_ok=True)
    auto_note = f"# strategy: auto -> {auto_decision['kind']} ({auto_decision['reason']})\n" if auto_decision else ""
    resume_from = resume_point(run_dir, datamodule.classes) if resume else None
    if is_rank_zero and not resume:
        log.info("run directory: %s (if this run is interrupted: tlkit train --resume %s)", run_dir, run_dir)
    if resume:
        log.info("resuming %s from %s", run_dir, f"epoch {resume_from.epoch + 2} ({resume_from.path})"
                    if resume_from else "epoch 1 (it stopped before its first checkpoint)")
    # A resumed run keeps the recipe.yaml it started with (and its auto note).
    if is_rank_zero and not (resume and (run_dir / "recipe.yaml").is_file()):
        atomic_write(run_dir / "recipe.yaml", auto_note + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        atomic_write(run_dir / "classes.json", json.dumps(datamodule.classes, indent=2) + "\n")
        if datamodule.scan.skipped:
            atomic_write(run_dir / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in datamodule.scan.skipped))

    fit_datamodule, cache_info = choose_training_inputs(  # data.on_bad_image: skip lists files in bad_log
        recipe, datamodule, module, bad_log=run_dir / "skipped_mid_run.txt",
        first_epoch=resume_from.epoch + 1 if resume_from is not None else 0)
    epochs = recipe.trainer.epochs
    if getattr(recipe.strategy, "solver", "sgd") == "lbfgs":  # the recipe guarantees cached features here
        cache_info["solver"] = fit_head_closed_form(module, fit_datamodule, recipe.seed)
        epochs = 0  # the head is already optimal; the trainer only validates and saves the checkpoints

    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_acc", mode="max")
    # Not save_last=True: Lightning then writes last.ckpt only in epochs that also improve best, so last.ckpt would
    # hold the best epoch's weights, not the final ones. A monitor-less top-1 checkpoint is rewritten every epoch.
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    steps_per_epoch = max(1, len(datamodule.scan.train) // recipe.data.batch_size)
    logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    if resume_from is not None and is_rank_zero:  # keep the killed run's history; the resumed epochs append to it
        carry_over_metrics(logger, history_up_to(run_dir / "metrics.csv", resume_from))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=recipe.trainer.accelerator,
        devices=recipe.trainer.devices,
        num_nodes=recipe.trainer.num_nodes,
        strategy=lightning_strategy(recipe.trainer.strategy, staged=module.strategy.staged),
        sync_batchnorm=recipe.trainer.sync_batchnorm,
        plugins=[*([TimmSyncBatchNorm()] if recipe.trainer.sync_batchnorm else []), AtomicCheckpointIO()],
        precision=recipe.trainer.precision,
        logger=logger,
        callbacks=[checkpoint, last, LearningRateMonitor(logging_interval="epoch"), BatchSeeding(recipe.seed),
                   *([WeightEMA(recipe.optim.ema_decay)] if recipe.optim.ema_decay > 0 else []),
                   FiniteLossGuard(recipe.optim.lr), *(callbacks or [])],
        enable_progress_bar=recipe.trainer.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=min(50, steps_per_epoch),
        num_sanity_val_steps=0,
    )
    L.seed_everything(recipe.seed, workers=True, verbose=False)  # both paths start training from the same RNG state
    with warnings.catch_warnings():
        # Lightning suggests more workers than a 2-core machine has; the recipe's num_workers is deliberate.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # The run dir already holds recipe.yaml and classes.json; the CSV logger only manages metrics.csv.
        warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
        # A frozen backbone is in eval mode on purpose (DESIGN.md contract 4).
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
        if epochs == 0:
            trainer.validate(module, datamodule=fit_datamodule, verbose=False)
            _save_closed_form_checkpoints(trainer, checkpoint, run_dir)
        elif resume_from is not None and resume_from.epoch + 1 >= epochs:  # killed after its last checkpoint
            trainer.validate(module, datamodule=fit_datamodule, ckpt_path=str(resume_from.path), verbose=False)
        else:
            # Lightning's ddp launcher starts the other ranks here, re-running this command: they inherit the run dir.
            previous = os.environ.get(RUN_DIR_ENV)
            os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
            try:
                trainer.fit(module, datamodule=fit_datamodule,
                            ckpt_path=str(resume_from.path) if resume_from is not None else None)
            finally:
                if previous is None:
                    os.environ.pop(RUN_DIR_ENV, None)
                else:
                    os.environ[RUN_DIR_ENV] = previous

    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {
        "val_acc": logged.get("val_acc"),
        "val_loss": logged.get("val_loss"),
        "val_balanced_acc": logged.get("val_balanced_acc"),
        "val_macro_f1": logged.get("val_macro_f1"),
        "balance": recipe.data.balance,
        "train_acc": logged.get("train_acc"),
        "train_loss": logged.get("train_loss"),
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": int(trainer.current_epoch),
        "wall_s": round(time.perf_counter() - started, 2),
        "num_classes": len(datamodule.classes),
        "num_train": len(datamodule.scan.train),
        "num_val": len(datamodule.scan.val),
        "skipped_files": len(datamodule.scan.skipped),
        "data_warnings": checked["warnings"],
        "feature_cache": cache_info,
        "backbone": recipe.backbone.name,
        "weights": module.weights_source,
        "strategy": recipe.strategy.kind,
        **({"strategy_auto": auto_decision} if auto_decision else {}),
        **({"resumed_from_epoch": resume_from.epoch + 1 if resume_from else 0} if resume else {}),
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path,
        "last_checkpoint": last.best_model_path or checkpoint.last_model_path,
    }
    if is_rank_zero:
        atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics

