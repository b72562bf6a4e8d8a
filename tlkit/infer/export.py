"""Export a trained model (backbone + head): safetensors + JSON sidecar, ONNX with a parity check, and a bundle.

The sidecar (`model.json`) is the checkpoint's self-description: classes, backbone, head,
preprocessing, TTA policy, plus the input/output contract of the exported graph, the eval preprocessing spelled out
step by step (`eval_preprocessing`) and the concrete TTA views (`tta_views`). The same JSON is embedded in the
safetensors metadata, so the weights file alone is enough to load the model back (`load_classifier`).

With ONNX, the folder is also a standalone bundle (`write_bundle`): predict.py + tlkit's preprocessing.py (copied
verbatim) + requirements.txt run the model with numpy, Pillow and onnxruntime only, with tlkit's exact numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import tlkit.data.preprocessing
from tlkit.data.augment import build_eval_transform
from tlkit.data.images import load_rgb
from tlkit.data.preprocessing import describe_eval_preprocessing, eval_resize_size
from tlkit.errors import ExportError
from tlkit.infer.settings import DEFAULT_PARITY_ATOL
from tlkit.infer.tta import TTAPolicy, resolve_policy
from tlkit.io import atomic_path, atomic_save, atomic_write
from tlkit.model.classifier import Classifier
from tlkit.model.loading import (  # noqa: F401
    SIDECAR_NAME,
    WEIGHTS_NAME,
    load_classifier,
    read_thresholds,
)

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
ONNX_NAME = "model.onnx"
# The bundle's only dependencies (Image.Resampling: Pillow 9.1+); predict.py imports nothing else outside stdlib.
BUNDLE_REQUIREMENTS = "numpy>=1.22\nPillow>=9.1\nonnxruntime>=1.16\n"


def describe_export(classifier: Classifier, policy: TTAPolicy | None = None) -> dict:
    """The sidecar: the checkpoint's self-description, the exported graph's input and output contract, the exact eval
    preprocessing and the views of `policy` (default: the checkpoint's TTA policy)."""
    pre = classifier.preprocessing
    size = pre.input_size
    policy = policy or resolve_policy(classifier.tta_spec, pre)
    return {
        "export_format": EXPORT_FORMAT,
        **classifier.describe(),
        "input": {
            "name": "input",
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": (
                f"decode to RGB; resize the short side to {eval_resize_size(pre)} px with Pillow "
                f"({pre.interpolation}); centre-crop {size}x{size}; x / 255; (x - mean) / std. Exactly: "
                "eval_preprocessing below"
            ),
        },
        "output": {"name": "logits", "shape": ["batch", len(classifier.classes)],
                   "activation": classifier.task.activation_description},
        "eval_preprocessing": describe_eval_preprocessing(pre),
        "tta_views": {
            "policy": policy.label,
            "aggregate": policy.aggregate,
            "views": [{"scale": v.scale, "crop": v.crop, "flip": v.flip} for v in policy.views],
            "how": "each view: resize the short side to `scale` (crop 'full': the whole image to input_size x "
                   "input_size), take `crop` at input_size (center as eval_preprocessing.crop; corners flush with "
                   "the edges), normalise, mirror left-right if `flip`; output.activation per view, then "
                   "`aggregate`: mean_prob = mean of the probabilities, mean_logit = activation of the mean logit, "
                   "max = per-class max (softmax: renormalised to sum 1)",
        },
        "files": {"weights": WEIGHTS_NAME},
    }


def check_export_folder(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Refuse to write into a folder that holds files and is not an earlier tlkit export (its model.json carries
    `export_format`), unless `overwrite`: the export's file names (predict.py, model.json...) are common ones."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give a folder for the export.")
    if overwrite or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    try:
        earlier = json.loads((out_dir / SIDECAR_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        earlier = None
    if not (isinstance(earlier, dict) and "export_format" in earlier):
        raise ExportError(f"--out {out_dir} holds files and is not an earlier tlkit export (no model.json written by "
                          "tlkit export); choose an empty or new folder, or pass --overwrite to write the export's "
                          "files there (files of other names are left alone).")


def export_safetensors(classifier: Classifier, out_dir: str | Path, *,
                       policy: TTAPolicy | None = None) -> tuple[Path, Path, dict]:
    """Write model.safetensors (backbone.* and head.* tensors, description in its metadata) and model.json."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = describe_export(classifier, policy)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()
             if k != "thresholds"}  # a multi-label model's thresholds are in the description
    weights = out_dir / WEIGHTS_NAME
    atomic_save(weights, lambda name: save_file(state, name, metadata={"tlkit": json.dumps(meta)}))
    sidecar = write_sidecar(meta, out_dir)
    return weights, sidecar, meta


def write_sidecar(meta: dict, out_dir: Path) -> Path:
    return atomic_write(Path(out_dir) / SIDECAR_NAME, json.dumps(meta, indent=2) + "\n")


def write_bundle(out_dir: str | Path) -> list[Path]:
    """predict.py, preprocessing.py (tlkit.data.preprocessing's source, verbatim: one definition) and
    requirements.txt beside model.onnx and model.json."""
    out_dir = Path(out_dir)
    sources = {
        "predict.py": Path(__file__).with_name("bundle") / "predict.py",
        "preprocessing.py": Path(tlkit.data.preprocessing.__file__),
    }
    written = [atomic_write(out_dir / name, src.read_text(encoding="utf-8")) for name, src in sources.items()]
    return [*written, atomic_write(out_dir / "requirements.txt", BUNDLE_REQUIREMENTS)]


def load_exported(path: str | Path, *, map_location: str | torch.device = "cpu") -> Classifier:
    """A Classifier in eval mode from an exported model.safetensors (no pickle, no recipe, no download)."""
    return load_classifier(path, map_location=map_location)


# ---------------------------------------------------------------------------------------------------------------------
# ONNX


def export_onnx(classifier: Classifier, path: str | Path, *, opset: int | None = None) -> Path:
    """Write an ONNX graph: float32 [batch, 3, S, S] normalised input -> [batch, C] logits, dynamic batch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = classifier.eval()
    size = classifier.preprocessing.input_size
    example = torch.zeros(2, 3, size, size)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
            warnings.simplefilter("ignore")  # exporter internals warn about its own deprecations
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,  # one file: lite0-sized models are far below protobuf's 2 GB limit
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; the message names the cause
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ExportError(
            f"ONNX export of {classifier.config.backbone} failed ({type(exc).__name__}: {detail}); the safetensors "
            "export still works (use --no-onnx)."
        ) from exc
    return path


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """The exporter's optimiser logs every pass at INFO; a user wants the result, not the passes."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def parity_inputs(classifier: Classifier, images: Sequence[str | Path], *, limit: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Real images through the eval transform (the one eval preprocessing); unreadable files are skipped."""
    transform = build_eval_transform(classifier.preprocessing)
    tensors, used = [], []
    # Evenly spaced through the list, so a sorted folder contributes every class, not just the first one.
    picks = set(np.linspace(0, len(images) - 1, num=min(limit, len(images))).round().astype(int).tolist()) if images else set()
    ordered = [images[i] for i in sorted(picks)] + [p for i, p in enumerate(images) if i not in picks]
    for path in ordered:
        if len(tensors) >= limit:
            break
        try:
            tensors.append(transform(load_rgb(path)))
            used.append(str(path))
        except (OSError, ValueError) as exc:
            log.warning("parity check skips %s (%s)", path, type(exc).__name__)
    if not tensors:
        raise ExportError(
            "No readable images for the ONNX parity check; pass image files or folders with --images "
            "(e.g. the validation folder)."
        )
    return torch.stack(tensors), used


def onnx_parity(classifier: Classifier, onnx_path: str | Path, inputs: torch.Tensor, *, atol: float = DEFAULT_PARITY_ATOL) -> dict:
    """Run PyTorch and onnxruntime on the same inputs; max abs differences of logits and probabilities (and, for a
    multi-label model, how often the label sets at its thresholds agree)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = classifier.eval()(inputs).float()
    got = torch.from_numpy(session.run(["logits"], {"input": inputs.numpy().astype(np.float32)})[0])
    logit_diff = float((got - expected).abs().max())
    prob_diff = float((classifier.probabilities(got) - classifier.probabilities(expected)).abs().max())
    agree = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    sets = {}
    if classifier.task.has_thresholds:
        decide = lambda logits: classifier.probabilities(logits) >= classifier.thresholds  # noqa: E731
        sets = {"label_set_agreement": float((decide(got) == decide(expected)).all(-1).float().mean())}
    return {
        "images": int(inputs.shape[0]),
        "max_abs_diff_logits": logit_diff,
        "max_abs_diff_probs": prob_diff,
        "top1_agreement": agree,
        **sets,
        "atol": atol,
        "ok": logit_diff <= atol and agree == 1.0 and sets.get("label_set_agreement", 1.0) == 1.0,
        "onnxruntime": ort.__version__,
    }
