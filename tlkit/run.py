"""The only code that turns a Recipe into objects: fit(recipe) -> metrics dict; and the checkpoint-driven
evaluate_checkpoint / predict_checkpoint / export_checkpoint, which need nothing but the checkpoint."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tlkit.augment import build_eval_transform, build_train_transform
from tlkit.backbones import Preprocessing, create_backbone
from tlkit.cache import (
    CachedFeatures,
    FeatureCache,
    code_versions,
    default_feature_dir,
    extract,
    extraction_batch_size,
    extraction_device,
    view_seed,
    weights_fingerprint,
)
from tlkit.checkpoint import load_checkpoint, read_checkpoint
from tlkit.data import FeatureDataModule, ImageFolderDataModule, resolve_num_workers, scan_folder
from tlkit.datasets import generate
from tlkit.errors import DataError, DataNotFoundError, ExportError, did_you_mean
from tlkit.inference import predict_files
from tlkit.module import TransferModule
from tlkit.predict import collect_inputs, top_k_rows, write_predictions_csv, write_predictions_json
from tlkit.recipe import Recipe, recipe_to_dict
from tlkit.tta import DEFAULT_MAX_VIEWS_PER_FORWARD, TTAPolicy, normalize_spec, resolve_policy

log = logging.getLogger(__name__)


def default_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(recipe.output.runs_dir) / recipe.name / stamp
    run_dir, n = base, 1
    while run_dir.exists():  # two runs in the same second never share a folder
        run_dir, n = base.with_name(f"{stamp}-{n}"), n + 1
    return run_dir


def build_datamodule(recipe: Recipe) -> ImageFolderDataModule:
    d = recipe.data
    if not Path(d.root).exists() and d.generate is not None:
        log.info("writing built-in dataset %r to %s", d.generate, d.root)
        generate(d.generate, d.root)
    return ImageFolderDataModule(
        d.root,
        augment=recipe.augment,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        val_fraction=d.val_fraction,
        seed=recipe.seed,
    )


def build_module(recipe: Recipe, classes: list[str]) -> TransferModule:
    b, o, s = recipe.backbone, recipe.optim, recipe.schedule
    return TransferModule(
        b.name,
        classes,
        weights=b.weights,
        strategy=recipe.strategy.kind,
        head=recipe.head.model_dump(),
        optimizer=o.name,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        backbone_lr_mult=getattr(recipe.strategy, "backbone_lr_mult", 0.1),
        l1=o.l1,
        label_smoothing=o.label_smoothing,
        schedule=s.kind,
        warmup_epochs=s.warmup_epochs,
        step_epochs=s.step_epochs,
        gamma=s.gamma,
        drop_path_rate=b.drop_path_rate,
        mixing=recipe.mixing.model_dump(),
        tta=recipe.tta.model_dump(),
        preprocessing=preprocessing_overrides(recipe),
    )


def choose_training_inputs(
    recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule
) -> tuple[L.LightningDataModule, dict]:
    """Images, or cached features when the strategy is a linear probe and the cache can honour the recipe."""
    if recipe.strategy.kind != "linear_probe" or not recipe.cache.features:
        return datamodule, {"used": False}
    if recipe.mixing.enabled:
        log.warning("feature cache: Mixup/CutMix mix images, not features, so this linear probe trains on images "
                    "(uncached); set mixing alphas to 0 to use the cache.")
        return datamodule, {"used": False, "reason": "image-space mixing requested"}
    return build_feature_datamodule(recipe, datamodule, module)


def build_feature_datamodule(
    recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule
) -> tuple[FeatureDataModule, dict]:
    """Cached backbone features for the train (K views) and val splits, as a datamodule of tensors."""
    started = time.perf_counter()
    pre = module.preprocessing
    directory = (recipe.cache.dir or default_feature_dir()) if recipe.cache.disk else None
    cache = FeatureCache(directory)
    base_key = {"format": 2, "backbone": recipe.backbone.name, "weights": weights_fingerprint(module.backbone),
                "preprocessing": pre.to_dict(), "versions": code_versions()}

    device = extraction_device(recipe.trainer.accelerator)

    def compute(transform, desc: str, view: int | None = None):
        def run(paths: list[str]) -> torch.Tensor:
            seeds = None if view is None else [view_seed(recipe.seed, view, p) for p in paths]
            return extract(module.backbone, paths, transform, seeds=seeds, device=device,
                           batch_size=extraction_batch_size(device, datamodule.eval_batch_size),
                           num_workers=datamodule.num_workers, desc=desc, channels_last=module.channels_last)
        return run

    train_paths = [p for p, _ in datamodule.scan.train]
    val_paths = [p for p, _ in datamodule.scan.val]
    eval_transform = build_eval_transform(pre)
    eval_key = {**base_key, "transform": "eval"}
    if recipe.augment.is_deterministic:  # the train transform is then the eval transform (a test proves it)
        # One pass over train + val: one loader, one set of worker start-ups.
        both = cache.features(eval_key, train_paths + val_paths, compute(eval_transform, "features: train + val"))
        views, val = [both[: len(train_paths)]], both[len(train_paths):]
    else:
        train_transform = build_train_transform(pre, recipe.augment)
        augment_key = {**base_key, "transform": recipe.augment.model_dump(mode="json"), "seed": recipe.seed}
        views = [
            cache.features({**augment_key, "view": v}, train_paths,
                           compute(train_transform, f"features: train view {v + 1}/{recipe.cache.views}", v))
            for v in range(recipe.cache.views)
        ]
        val = cache.features(eval_key, val_paths, compute(eval_transform, "features: val"))
    info = {"used": True, "views": len(views), "disk": directory is not None, "from_disk": cache.stats.hits,
            "extracted": cache.stats.misses, "seconds": round(time.perf_counter() - started, 2)}
    log.info("feature cache: %d train x %d view(s) + %d val; %d rows from disk, %d extracted, %.1f s",
             len(train_paths), len(views), len(val_paths), info["from_disk"], info["extracted"], info["seconds"])
    feature_dm = FeatureDataModule(
        CachedFeatures(torch.stack(views), [label for _, label in datamodule.scan.train]),
        CachedFeatures(val, [label for _, label in datamodule.scan.val]),
        batch_size=datamodule.batch_size, eval_batch_size=datamodule.eval_batch_size,
    )
    return feature_dm, info


def fit_head_closed_form(module: TransferModule, features: FeatureDataModule, seed: int) -> dict:
    """Fit the linear head by L-BFGS logistic regression on the cached training features (all views)."""
    from tlkit.probe import fit_logistic_head

    train = features.train_set
    weight, bias, info = fit_logistic_head(train.views, train.labels, num_classes=len(module.classes), seed=seed)
    final = module.head[-1]
    with torch.no_grad():
        final.weight.copy_(weight)
        final.bias.copy_(bias)
    return info


def _save_closed_form_checkpoints(trainer: L.Trainer, checkpoint: ModelCheckpoint, run_dir: Path) -> None:
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("best.ckpt", "last.ckpt"):
        trainer.save_checkpoint(directory / name)
    checkpoint.best_model_path = str(directory / "best.ckpt")
    checkpoint.last_model_path = str(directory / "last.ckpt")
    score = trainer.callback_metrics.get("val_acc")
    checkpoint.best_model_score = score.detach().clone() if score is not None else None


def preprocessing_overrides(recipe: Recipe) -> dict:
    """The recipe's backbone.* preprocessing fields that are set (they win over the pretrained config)."""
    b = recipe.backbone
    values = {"input_size": b.input_size, "crop_pct": b.crop_pct, "interpolation": b.interpolation,
              "mean": b.mean, "std": b.std}
    return {k: v for k, v in values.items() if v is not None}


def resolve_preprocessing(recipe: Recipe) -> Preprocessing:
    """The preprocessing a run of `recipe` will use, without loading any weights."""
    model, pretrained, _ = create_backbone(recipe.backbone.name, "none")
    del model
    return pretrained.replace(**preprocessing_overrides(recipe))


def preview_augment(recipe: Recipe, *, n: int = 16, out: str | Path | None = None) -> Path:
    """PNG grid of `n` training samples exactly as the model sees them: after augmentation and batch mixing."""
    import numpy as np

    from tlkit.mixing import BatchMixer
    from tlkit.plots import save_image_grid

    if n < 1:
        raise ValueError(f"--n must be at least 1; got {n}.")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    datamodule = build_datamodule(recipe)
    pre = resolve_preprocessing(recipe)
    datamodule.preprocessing = pre
    datamodule.setup("fit")
    dataset = datamodule.train_set
    order = torch.randperm(len(dataset))[:n].tolist()
    images, labels = zip(*(dataset[i] for i in order))
    batch, targets = torch.stack(images), torch.tensor(labels)
    if recipe.mixing.enabled:
        mixer = BatchMixer(recipe.mixing, datamodule.num_classes, recipe.optim.label_smoothing)
        batch, soft = mixer(batch, targets)
    else:
        soft = torch.nn.functional.one_hot(targets, datamodule.num_classes).float()
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    pixels = ((batch * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    titles = [_soft_label_title(row, datamodule.classes) for row in soft]
    out = Path(out) if out is not None else Path(recipe.output.runs_dir) / recipe.name / "augment_preview.png"
    note = f"{recipe.name}: augment={recipe.augment.preset}"
    if recipe.mixing.enabled:
        note += f", mixup={recipe.mixing.mixup_alpha}, cutmix={recipe.mixing.cutmix_alpha}"
    if recipe.optim.label_smoothing:
        note += f", label smoothing={recipe.optim.label_smoothing}"
    return save_image_grid(list(np.asarray(pixels)), titles, out, suptitle=note)


def _soft_label_title(weights, classes: list[str]) -> str:
    """'ants 0.62 / bees 0.38' for a mixed target; just 'ants' for a clean one."""
    ranked = sorted(((float(w), c) for w, c in zip(weights, classes)), reverse=True)
    if ranked[0][0] >= 0.995:
        return ranked[0][1]
    return " / ".join(f"{c} {w:.2f}" for w, c in ranked[:2] if w >= 0.01)


def fit(recipe: Recipe, run_dir: str | Path | None = None) -> dict:
    """Train `recipe`; write the run directory; return the final metrics (also written to metrics.json)."""
    started = time.perf_counter()
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    datamodule = build_datamodule(recipe)
    module = build_module(recipe, datamodule.classes)
    datamodule.preprocessing = module.preprocessing
    module.data_split = {"layout": datamodule.scan.layout, "val_fraction": recipe.data.val_fraction, "seed": recipe.seed}

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    _write_text(run_dir / "classes.json", json.dumps(datamodule.classes, indent=2) + "\n")
    if datamodule.scan.skipped:
        _write_text(run_dir / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in datamodule.scan.skipped))

    fit_datamodule, cache_info = choose_training_inputs(recipe, datamodule, module)
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
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=recipe.trainer.accelerator,
        devices=recipe.trainer.devices,
        precision=recipe.trainer.precision,
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=[checkpoint, last, LearningRateMonitor(logging_interval="epoch")],
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
        else:
            trainer.fit(module, datamodule=fit_datamodule)

    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {
        "val_acc": logged.get("val_acc"),
        "val_loss": logged.get("val_loss"),
        "train_acc": logged.get("train_acc"),
        "train_loss": logged.get("train_loss"),
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": int(trainer.current_epoch),
        "wall_s": round(time.perf_counter() - started, 2),
        "num_classes": len(datamodule.classes),
        "num_train": len(datamodule.scan.train),
        "num_val": len(datamodule.scan.val),
        "skipped_files": len(datamodule.scan.skipped),
        "feature_cache": cache_info,
        "backbone": recipe.backbone.name,
        "weights": module.weights_source,
        "strategy": recipe.strategy.kind,
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path,
        "last_checkpoint": last.best_model_path or checkpoint.last_model_path,
    }
    _write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _write_text(path: Path, text: str) -> None:
    """Atomic write: a killed run never leaves a half-written file behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate / predict / export: everything comes from the checkpoint (DESIGN.md contract 5), nothing from a recipe.

EVAL_SPLITS = ("val", "all")


def resolve_policies(
    module: TransferModule, requested: list[str | dict] | None, aggregate: str | None = None
) -> list[TTAPolicy]:
    """The single view first, then each requested policy ('checkpoint' = the one the model was trained with);
    default: the single view plus the checkpoint's policy. Duplicates are dropped."""
    specs: list[str | dict] = ["none", *(requested if requested else ["checkpoint"])]
    policies: dict[str, TTAPolicy] = {}
    for spec in specs:
        spec = module.tta_spec if spec == "checkpoint" else spec
        if aggregate is not None:
            spec = {**normalize_spec(spec), "aggregate": aggregate}
        policy = resolve_policy(spec, module.preprocessing)
        policies.setdefault(policy.label, policy)
    return list(policies.values())


def match_classes(data_classes: list[str], model_classes: list[str], root: str | Path) -> list[int]:
    """Map the data folder's class indices to the model's; DataError naming any class the model does not know."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        missing = [c for c in model_classes if c not in data_classes]
        hint = did_you_mean(unknown[0], missing or model_classes)
        raise DataError(
            f"{root} has class folder(s) the checkpoint was not trained on: {', '.join(unknown)}; its classes are "
            f"{', '.join(model_classes)}.{hint} Rename or remove those folders."
        )
    absent = [c for c in model_classes if c not in data_classes]
    if absent:
        log.warning("%s has no folder for class(es) %s; evaluating the others", root, ", ".join(absent))
    return [model_classes.index(c) for c in data_classes]


def default_eval_dir(checkpoint: str | Path) -> Path:
    """runs/<recipe>/<stamp>/eval/<checkpoint stem>/ for a run's checkpoint, else eval/<stem>/ beside the file."""
    checkpoint = Path(checkpoint)
    base = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return base / "eval" / checkpoint.stem


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    tta: list[str | dict] | None = None,
    aggregate: str | None = None,
    out: str | Path | None = None,
    split: str = "val",
    num_workers: int | str = 0,
    max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
    top_losses: int = 16,
    progress: bool | None = None,
) -> dict:
    """Evaluate a checkpoint on a data folder's val split (or all of it) under the single view and each TTA policy.

    A one-folder layout is split with the val_fraction and seed saved in the checkpoint, so the images evaluated are
    the ones the run held out. Returns the report (also written to <out>/report.json).
    """
    if split not in EVAL_SPLITS:
        raise DataError(f"Unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}.{did_you_mean(split, EVAL_SPLITS)}")
    module = load_checkpoint(checkpoint)
    policies = resolve_policies(module, tta, aggregate)  # bad policy names fail before any data scan
    split_state = _saved_split(checkpoint)
    scan = scan_folder(data, val_fraction=split_state.get("val_fraction", 0.2), seed=split_state.get("seed", 42))
    to_model = match_classes(scan.classes, module.classes, data)
    chosen = scan.val if split == "val" else scan.train + scan.val
    samples = [(path, to_model[label]) for path, label in chosen]
    out_dir = Path(out) if out is not None else default_eval_dir(checkpoint)
    context = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "layout": scan.layout,
        "backbone": module.hparams.backbone,
        "preprocessing": module.preprocessing.to_dict(),
    }
    if scan.layout == "single" and split == "val":
        if not split_state:
            log.warning("%s does not record its val split; splitting %s with val_fraction 0.2, seed 42 (the recipe "
                        "defaults), which matches the run only if it used them", checkpoint, data)
        context["val_split"] = {"val_fraction": split_state.get("val_fraction", 0.2), "seed": split_state.get("seed", 42),
                                "from_checkpoint": bool(split_state)}
    from tlkit.evaluate import evaluate_policies  # matplotlib and sklearn.metrics: imported only when evaluating

    report = evaluate_policies(
        module, samples, module.classes, policies, module.preprocessing, out_dir,
        max_views_per_forward=max_views_per_forward, num_workers=resolve_num_workers(num_workers),
        top_loss_count=top_losses, skipped=scan.skipped, context=context, progress=progress,
    )
    report["out_dir"] = str(out_dir)
    return report


def _saved_split(checkpoint: str | Path) -> dict:
    """val_fraction / seed of the training run's split, as fit() recorded them in the checkpoint (else {})."""
    if Path(checkpoint).suffix == ".safetensors":
        return {}
    saved = read_checkpoint(checkpoint)["tlkit"].get("data_split") or {}
    return {k: saved[k] for k in ("val_fraction", "seed") if k in saved}


def predict_checkpoint(
    checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    out: str | Path = "predictions.csv",
    json_out: str | Path | None = None,
    top_k: int = 5,
    tta: str | dict | None = None,
    aggregate: str | None = None,
    num_workers: int | str = 0,
    max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
    progress: bool | None = None,
) -> dict:
    """Top-k labels for every readable image among `inputs` (files or folders, recursive), written as CSV (and JSON).

    Unreadable or missing files are skipped and listed; raises DataError only when nothing could be predicted.
    """
    module = load_checkpoint(checkpoint)
    spec = module.tta_spec if tta in (None, "checkpoint") else tta
    if aggregate is not None:
        spec = {**normalize_spec(spec), "aggregate": aggregate}
    policy = resolve_policy(spec, module.preprocessing)
    files, missing = collect_inputs(inputs)
    if not files:
        first = f" ({missing[0][0]}: {missing[0][1]})" if missing else ""
        raise DataNotFoundError(f"No image files to predict{first}; pass image files or folders of images.")
    result = predict_files(
        module, files, policy, module.preprocessing, max_views_per_forward=max_views_per_forward,
        num_workers=resolve_num_workers(num_workers), progress=progress, desc=f"predict {policy.label}",
    )
    skipped = missing + result.failed
    if not result.indices:
        path, why = result.failed[0]
        raise DataError(f"Nothing was predicted: all {len(files)} file(s) were unreadable (e.g. {path}: {why}).")
    k = max(1, min(top_k, len(module.classes)))
    rows = top_k_rows(result, files, module.classes, k)
    written = {"csv": str(write_predictions_csv(rows, out, k))}
    if json_out is not None:
        written["json"] = str(write_predictions_json(rows, skipped, json_out))
    return {"predicted": len(rows), "skipped": skipped, "policy": policy.label, "views": policy.num_views,
            "rows": rows, **written}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    images: list[str | Path] | None = None,
    onnx: bool = True,
    atol: float = 1e-3,
) -> dict:
    """model.safetensors + model.json (+ model.onnx checked against PyTorch on `images` with onnxruntime).

    The safetensors file is loaded back and must predict exactly what the checkpoint predicts. Raises ExportError
    when the ONNX graph disagrees with PyTorch by more than `atol` on any logit.
    """
    from tlkit.export import (
        ONNX_NAME,
        export_onnx,
        export_safetensors,
        load_exported,
        onnx_parity,
        parity_inputs,
        write_sidecar,
    )

    module = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    weights, sidecar, meta = export_safetensors(module, out_dir)
    files, _ = collect_inputs(images or [])
    if files:
        inputs, used = parity_inputs(module, files)
        source = f"{len(used)} image(s) through the eval transform"
    else:
        size = module.preprocessing.input_size
        inputs = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        source = "4 random normalised tensors (pass --images for real photos)"
        log.warning("no --images given: checking the export on random tensors instead of real photos")
    reloaded = load_exported(weights)
    with torch.inference_mode():
        reload_diff = float((reloaded(inputs) - module(inputs)).abs().max())
    if reload_diff != 0.0:
        raise ExportError(f"{weights} loads back with different outputs (max abs diff {reload_diff:.3g}); please report this.")
    summary = {"out_dir": str(out_dir), "weights": str(weights), "sidecar": str(sidecar), "parity_inputs": source,
               "reload_max_abs_diff": reload_diff}
    if onnx:
        onnx_path = export_onnx(module, out_dir / ONNX_NAME)
        parity = {**onnx_parity(module, onnx_path, inputs, atol=atol), "inputs": source}
        meta["files"]["onnx"] = ONNX_NAME
        meta["onnx_parity"] = parity
        write_sidecar(meta, out_dir)
        summary.update(onnx=str(onnx_path), onnx_parity=parity)
        if not parity["ok"]:
            raise ExportError(
                f"ONNX output differs from PyTorch: max abs logit diff {parity['max_abs_diff_logits']:.3g} > {atol:g} "
                f"(top-1 agreement {parity['top1_agreement']:.0%}); do not ship {onnx_path}, use the safetensors export."
            )
    return summary
