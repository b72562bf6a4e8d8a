"""create_backbone(name, weights): a pooled-feature timm model plus the preprocessing it was trained with."""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.data import resolve_data_config

from tlkit.data.preprocessing import INTERPOLATIONS, Preprocessing
from tlkit.errors import BackboneError
from tlkit.model import weights as W
from tlkit.model.names import check_backbone_name

log = logging.getLogger(__name__)



def model_preprocessing(model: torch.nn.Module) -> Preprocessing:
    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    return Preprocessing(
        input_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=interpolation,
        mean=tuple(float(x) for x in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg["std"]),  # type: ignore[arg-type]
    )


def create_backbone(name: str, weights: str = "auto", *, drop_path_rate: float = 0.0
                    ) -> tuple[torch.nn.Module, Preprocessing, str]:
    """Build timm model `name` with `num_classes=0` (pooled features, `num_features` wide).

    Args:
        weights: auto | hub | bundled | none | a local file path.

    Returns:
        (model, preprocessing from its pretrained config, a short description of where the weights came from).
    """
    return _create_pooled(name, weights, drop_path_rate)


def _create_pooled(name: str, weights: str, drop_path_rate: float) -> tuple[torch.nn.Module, Preprocessing, str]:
    check_backbone_name(name)
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    if weights == "hub":
        return _from_hub(name, kwargs)
    # Build with timm's ImageNet classifier so full checkpoints load strictly, then drop it.
    model = timm.create_model(name, pretrained=False, **kwargs)
    source = "random init"
    if weights == "none":
        pass
    elif weights == "bundled":
        model.load_state_dict(W.load_bundled_state_dict(name, model), strict=True)
        source = f"bundled ({W.BUNDLED[name][0]})"
    elif weights == "auto":
        if W.has_bundled(name):
            try:
                model.load_state_dict(W.load_bundled_state_dict(name, model), strict=True)
                source = f"bundled ({W.BUNDLED[name][0]})"
            except BackboneError as exc:
                log.info("bundled weights unavailable (%s); trying local caches", exc)
        if source == "random init":
            local = _local_cache_file(model)
            if local is not None:
                _load_into(model, W.load_file_state_dict(local))
                source = f"local cache ({local})"
            else:
                return _from_hub(name, kwargs)
    else:
        path = Path(weights).expanduser()
        _load_into(model, W.load_file_state_dict(path))
        source = f"file ({path})"
    preprocessing = model_preprocessing(model)
    model.reset_classifier(0)
    return model, preprocessing, source


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load of everything but the classifier, whose size may differ (or be absent) in a user's file."""
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    classifier_keys = {k for k in model.state_dict() if k.startswith(f"{classifier}.")}
    state = {k: v for k, v in state.items() if k not in classifier_keys}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and k not in classifier_keys]
    unexpected = [k for k in state if k not in own]
    if mismatched:
        raise BackboneError(
            f"Weights do not match {model.pretrained_cfg.get('architecture')}: {len(mismatched)} tensors have other "
            f"shapes (e.g. {mismatched[0]}: {tuple(state[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}). "
            "Check the backbone name."
        )
    if missing or unexpected:
        raise BackboneError(
            f"Weights do not match {model.pretrained_cfg.get('architecture')}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). Check the backbone name."
        )
    model.load_state_dict(state, strict=False)  # strict in effect: everything but the classifier was checked above


def _local_cache_file(model: torch.nn.Module) -> Path | None:
    """A previously downloaded checkpoint for this model in the HF or torch-hub cache, without touching the network."""
    cfg = model.pretrained_cfg
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hf_id, filename)
                if isinstance(hit, str):
                    return Path(hit)
        except ImportError:
            pass
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def hub_reachable(host: str | None = None, timeout: float = 3.0) -> bool:
    """True when the weights hub answers a TCP connect within `timeout` s (DNS included); False when offline.

    Checked before any download so that an offline machine gets an answer in seconds, not after the HF client's
    minute of retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = host or urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(lambda: socket.create_connection((host, 443), timeout=timeout).close())
    try:
        future.result(timeout=timeout + 0.5)
        return True
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)  # a stuck DNS lookup must not hold the caller


def _hub_error(name: str, cause: str) -> BackboneError:
    return BackboneError(
        f"Could not fetch pretrained weights for {name!r} from the hub ({cause}). Offline? Use weights: bundled "
        f"({', '.join(W.BUNDLED)}), a local file (weights: /path/to/model.safetensors), or weights: none."
    )


def _from_hub(name: str, kwargs: dict) -> tuple[torch.nn.Module, Preprocessing, str]:
    cfg = timm.models.get_pretrained_cfg(name)
    host = None if (cfg is None or cfg.hf_hub_id) else urlparse(cfg.url or "").hostname
    if not hub_reachable(host):
        raise _hub_error(name, "no network connection to the hub")
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same actionable message
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise _hub_error(name, f"{type(exc).__name__}: {detail}") from exc
    return model, model_preprocessing(model), "hub"
