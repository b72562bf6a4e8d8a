"""evaluate / predict / export: everything comes from the self-describing checkpoint, nothing from a recipe."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from tlkit.data.datamodule import resolve_num_workers
from tlkit.data.images import collect_inputs
from tlkit.data.settings import DEFAULT_SEED, DEFAULT_VAL_FRACTION
from tlkit.data.table import scan_data
from tlkit.errors import DataError, DataNotFoundError, ExportError, did_you_mean
from tlkit.infer.predict import (
    STDOUT,
    PredictionsCsv,
    PredictionsJson,
    check_outputs,
)
from tlkit.infer.settings import DEFAULT_PARITY_ATOL, DEFAULT_TOP_LOSSES
from tlkit.infer.tta import (
    DEFAULT_MAX_VIEWS_PER_FORWARD,
    TTAPolicy,
    policy_for,
)
from tlkit.model.classifier import Classifier
from tlkit.model.loading import load_classifier, read_checkpoint, saved_split

log = logging.getLogger(__name__)


EVAL_SPLITS = ("val", "all")
# Rows per piece of `tlkit predict`: rows reach the CSV (and a progress line the log) after each piece (or after a
# couple of seconds), so a run killed midway keeps what it did.
PREDICT_CHUNK = 256


def resolve_policies(
    model: Classifier, requested: list[str | dict] | None, aggregate: str | None = None
) -> list[TTAPolicy]:
    """The single view first, then each requested policy ('checkpoint' = the one the model was trained with);
    default: the single view plus the checkpoint's policy. Duplicates are dropped."""
    specs: list[str | dict] = ["none", *(requested if requested else ["checkpoint"])]
    policies: dict[str, TTAPolicy] = {}
    for spec in specs:
        policy = policy_for(model, spec, aggregate)
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


def to_model_labels(label: int | tuple[int, ...], to_model: list[int]) -> int | tuple[int, ...]:
    """A sample's label (an index, or a multi-label tuple of indices) in the model's class order."""
    return tuple(sorted(to_model[i] for i in label)) if isinstance(label, tuple) else to_model[label]


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
    top_losses: int = DEFAULT_TOP_LOSSES,
    progress: bool | None = None,
    precision: str = "fp32",
) -> dict:
    """Evaluate a checkpoint on a data folder's val split (or all of it) under the single view and each TTA policy.

    A one-folder layout is split with the val_fraction and seed saved in the checkpoint, so the images evaluated are
    the ones the run held out. Returns the report (also written to <out>/report.json).
    """
    if split not in EVAL_SPLITS:
        raise DataError(f"Unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}.{did_you_mean(split, EVAL_SPLITS)}")
    model = load_classifier(checkpoint)
    policies = resolve_policies(model, tta, aggregate)  # bad policy names fail before any data scan
    split_state = _saved_split(checkpoint, data)
    scan = scan_data(data, **split_state)  # a table-labelled run re-reads the same table (and data.relabel)
    to_model = match_classes(scan.classes, model.classes, data)
    chosen = scan.val if split == "val" else scan.train + scan.val + scan.test
    samples = [(path, to_model_labels(label, to_model)) for path, label in chosen]
    out_dir = Path(out) if out is not None else default_eval_dir(checkpoint)
    context = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "layout": scan.layout,
        "backbone": model.config.backbone,
        "preprocessing": model.preprocessing.to_dict(),
        **({"relabel": split_state["relabel"]} if "relabel" in split_state else {}),
    }
    if scan.layout == "single" and split == "val":
        if not split_state:
            log.warning("%s does not record its val split; splitting %s with val_fraction %s, seed %s (the recipe "
                        "defaults), which matches the run only if it used them", checkpoint, data,
                        DEFAULT_VAL_FRACTION, DEFAULT_SEED)
        context["val_split"] = {"val_fraction": split_state.get("val_fraction", DEFAULT_VAL_FRACTION),
                                "seed": split_state.get("seed", DEFAULT_SEED),
                                "from_checkpoint": bool(split_state)}
    from tlkit.infer.evaluate import (
        evaluate_policies,  # matplotlib and sklearn.metrics: imported only when evaluating
    )

    report = evaluate_policies(
        model, samples, model.classes, policies, model.preprocessing, out_dir,
        max_views_per_forward=max_views_per_forward, num_workers=resolve_num_workers(num_workers),
        top_loss_count=top_losses, skipped=scan.skipped, context=context, progress=progress, precision=precision,
    )
    report["out_dir"] = str(out_dir)
    return report


def _saved_split(checkpoint: str | Path, data: str | Path) -> dict:
    """val_fraction / test_fraction / seed of the training run's split and how it read labels, as its datamodule
    recorded them in the checkpoint (else {}). The run's data.relabel applies only to the data it trained on."""
    if Path(checkpoint).suffix == ".safetensors":
        return {}
    saved = saved_split(read_checkpoint(checkpoint))
    keys = ("val_fraction", "test_fraction", "seed", "source", "csv", "multi_label", "label_delimiter", "columns",
            "relabel")
    state = {k: saved[k] for k in keys if k in saved and not (k == "source" and saved[k] == "dataframe")}
    relabel = state.pop("relabel", None)
    if relabel is None:
        return state
    if Path(saved.get("root", "")).resolve() != Path(data).resolve():
        log.warning("%s was trained with the labels of data.relabel %s on %s; %s is other data, evaluated with its "
                    "own labels", checkpoint, relabel, saved.get("root"), data)
        return state
    if not Path(relabel).is_file():
        raise DataNotFoundError(f"{checkpoint} was trained with the labels of data.relabel {relabel}, which no longer "
                                "exists; restore it to evaluate with the labels the run trained on.")
    return {**state, "relabel": relabel}


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
    precision: str = "fp32",
    overwrite: bool = False,
    devices: int = 1,
    accelerator: str = "cpu",
    return_rows: int | None = None,
) -> dict:
    """Top-k labels for every readable image among `inputs` (files, folders searched recursively, CSV tables' `path`
    column, tlkit streams), written as CSV (and JSON) as batches finish; a multi-label model writes each image's
    label set (classes at or over their thresholds) and every probability.

    out '-' writes the CSV to stdout. An existing output file is refused (DataError) unless overwrite=True.
    Unreadable or missing files are skipped and listed; raises DataError only when nothing could be predicted.
    devices > 1 runs one process per device (Lightning ddp_spawn); their rows are merged in order at the end.
    return_rows: how many rows the returned summary keeps (None: all; the files hold every row either way).
    """
    from tlkit.data.workers import local_devices, resolve_workers
    from tlkit.infer.bulk import RowMaker, check_accelerator, predict_inputs
    from tlkit.infer.sources import collect_predict_inputs
    from tlkit.run.console import quiet_intended_warnings

    check_outputs([out, json_out], overwrite=overwrite)
    check_accelerator(accelerator, devices)
    model = load_classifier(checkpoint)
    policy = policy_for(model, tta, aggregate)
    found = collect_predict_inputs(inputs)
    total = len(found)
    if not total:
        missing = found.missing
        first = f" ({missing[0][0]}: {missing[0][1]})" if missing else ""
        raise DataNotFoundError(f"No image files to predict{first}; pass image files or folders of images.")
    k = max(1, min(top_k, len(model.classes)))
    thresholds = dict(zip(model.classes, model.thresholds.tolist())) if model.task.has_thresholds else None
    make_rows = RowMaker(list(model.classes), k, list(thresholds.values()) if thresholds is not None else None)
    kept: list[dict] = []
    with PredictionsCsv(out, k) as sink, (PredictionsJson(json_out, thresholds=thresholds) if json_out is not None
                                          else nullcontext()) as json_sink:
        def emit(rows: list[dict]) -> None:
            sink.write(rows)
            if json_sink is not None:
                json_sink.write(rows)
            kept.extend(rows if return_rows is None else rows[: max(0, return_rows - len(kept))])

        with quiet_intended_warnings():
            run = predict_inputs(model, found, policy, emit, make_rows, chunk=PREDICT_CHUNK,
                                 num_workers=resolve_workers(num_workers, max(devices, local_devices())),
                                 devices=devices,
                                 accelerator=accelerator, max_views_per_forward=max_views_per_forward,
                                 precision=precision, progress=progress)
        if not run.predicted:  # inside the blocks: no CSV or JSON is left behind
            path, why = (run.skipped or [("a stream", "it holds no images")])[0]
            raise DataError(f"Nothing was predicted: all {total} file(s) were unreadable (e.g. {path}: {why}).")
        skipped = found.missing + run.skipped
        if json_sink is not None:
            json_sink.finish(skipped)
    written = {"csv": str(out) if str(out) == STDOUT else str(Path(out))}
    if json_out is not None:
        written["json"] = str(Path(json_out))
    return {"predicted": run.predicted, "skipped": skipped, "policy": policy.label, "views": policy.num_views,
            "rows": kept, "seconds": run.seconds, "images_per_second": run.images_per_second, **written}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    images: list[str | Path] | None = None,
    onnx: bool = True,
    atol: float = DEFAULT_PARITY_ATOL,
    tta: str | dict | None = None,
    overwrite: bool = False,
) -> dict:
    """model.safetensors + model.json (+ model.onnx checked against PyTorch on `images` with onnxruntime, and the
    standalone bundle: predict.py, preprocessing.py, requirements.txt).

    A non-empty `out_dir` is refused unless it holds an earlier tlkit export or `overwrite` is set.

    tta: the policy whose views model.json lists for the bundle (default: the checkpoint's own). The safetensors file
    is loaded back and must predict exactly what the checkpoint predicts. Raises ExportError when the ONNX graph
    disagrees with PyTorch by more than `atol` on any logit.
    """
    from tlkit.infer.export import (
        ONNX_NAME,
        check_export_folder,
        export_onnx,
        export_safetensors,
        onnx_parity,
        parity_inputs,
        write_bundle,
        write_sidecar,
    )

    check_export_folder(out_dir, overwrite=overwrite)
    model = load_classifier(checkpoint)
    policy = policy_for(model, tta)
    out_dir = Path(out_dir)
    weights, sidecar, meta = export_safetensors(model, out_dir, policy=policy)
    files, _ = collect_inputs(images or [])
    if files:
        inputs, used = parity_inputs(model, files)
        source = f"{len(used)} image(s) through the eval transform"
    else:
        size = model.preprocessing.input_size
        inputs = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        source = "4 random normalised tensors (pass --images for real photos)"
        log.warning("no --images given: checking the export on random tensors instead of real photos")
    reloaded = load_classifier(weights)
    with torch.inference_mode():
        reload_diff = float((reloaded(inputs) - model(inputs)).abs().max())
    if reload_diff != 0.0 or (model.task.has_thresholds and not torch.equal(reloaded.thresholds, model.thresholds)):
        raise ExportError(f"{weights} loads back with different outputs (max abs diff {reload_diff:.3g}) or "
                          "thresholds; please report this.")
    summary = {"out_dir": str(out_dir), "weights": str(weights), "sidecar": str(sidecar), "parity_inputs": source,
               "reload_max_abs_diff": reload_diff}
    if onnx:
        onnx_path = export_onnx(model, out_dir / ONNX_NAME)
        parity = {**onnx_parity(model, onnx_path, inputs, atol=atol), "inputs": source}
        if not parity["ok"]:  # never leave a graph behind that a Predictor or a user would pick up
            onnx_path.unlink(missing_ok=True)
            raise ExportError(
                f"ONNX output differs from PyTorch: max abs logit diff {parity['max_abs_diff_logits']:.3g} > {atol:g} "
                f"(top-1 agreement {parity['top1_agreement']:.0%}); {onnx_path.name} was removed: use the safetensors export."
            )
        meta["files"]["onnx"] = ONNX_NAME
        meta["onnx_parity"] = parity
        write_sidecar(meta, out_dir)
        summary.update(onnx=str(onnx_path), onnx_parity=parity)
        summary.update(bundle=[str(p) for p in write_bundle(out_dir)], tta=policy.label)
    return summary

