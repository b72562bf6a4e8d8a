"""create_backbone and weight resolution: offline-first, strict loads, clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from tlkit.data.augment import build_eval_transform
from tlkit.errors import BackboneError
from tlkit.model import weights as W
from tlkit.model.backbones import create_backbone, model_preprocessing


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub and empty local caches, so a test can never download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))


def test_backbone_returns_pooled_features_and_pretrained_preprocessing():
    model, pre, source = create_backbone("test_efficientnet", "none")
    assert source == "random init"
    assert model.num_classes == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)
    assert (pre.input_size, pre.crop_pct, pre.interpolation) == (160, 0.95, "bicubic")


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(BackboneError, match="Did you mean 'resnet50'"):
        create_backbone("resnet5O", "none")


def test_weights_from_a_local_safetensors_file_load_strictly(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, _, where = create_backbone("test_resnet", str(path))
    assert str(path) in where
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_weights_file_for_another_architecture_is_refused(tmp_path):
    other = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match="do not match"):
        create_backbone("test_efficientnet", str(path))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("test_resnet", str(tmp_path / "nope.pth"))


def test_hub_offline_fails_fast_and_names_bundled(offline):
    started = time.perf_counter()
    with pytest.raises(BackboneError, match="bundled") as info:
        create_backbone("test_resnet", "hub")
    assert time.perf_counter() - started < 10
    assert "local file" in str(info.value)


def test_auto_without_bundled_or_local_cache_fails_fast_offline(offline):
    started = time.perf_counter()
    with pytest.raises(BackboneError, match="weights: none"):
        create_backbone("test_resnet", "auto")
    assert time.perf_counter() - started < 10


def test_auto_uses_a_checkpoint_in_the_local_hf_cache(offline, tmp_path, monkeypatch):
    torch.manual_seed(2)
    source = timm.create_model("test_resnet", pretrained=False)
    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(cached))
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache",
        lambda repo, filename: str(cached) if filename == "model.safetensors" else None,
    )
    model, _, where = create_backbone("test_resnet", "auto")
    assert "local cache" in where
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


def test_bundled_weights_refused_for_architectures_without_them():
    with pytest.raises(BackboneError, match="No bundled weights"):
        create_backbone("test_resnet", "bundled")


def test_key_conversion_rejects_unknown_keys():
    with pytest.raises(BackboneError, match="Unexpected key"):
        W.convert_efficientnet_pytorch_keys({"_mystery.weight": torch.zeros(1)}, ["0.0:DepthwiseSeparableConv"])


def test_bundled_lite0_converts_strictly_and_is_cached_as_safetensors(monkeypatch, tmp_path):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    first = W.load_bundled_state_dict("tf_efficientnet_lite0", model)
    model.load_state_dict(first, strict=True)
    cached = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert len(cached) == 1

    def no_reconversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(W, "convert_efficientnet_pytorch_keys", no_reconversion)
    second = W.load_bundled_state_dict("tf_efficientnet_lite0", model)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bundled_lite0_is_real_imagenet_weights_espresso():
    """scikit-image's coffee photo is ImageNet class 967 ('espresso') for the real lite0 weights."""
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(W.load_bundled_state_dict("tf_efficientnet_lite0", model), strict=True)
    model.eval()
    x = build_eval_transform(model_preprocessing(model))(np.asarray(data.coffee()))
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    assert int(probs.argmax()) == 967
    assert float(probs[967]) > 0.5


def test_auto_prefers_bundled_for_lite0():
    _, pre, where = create_backbone("tf_efficientnet_lite0", "auto")
    assert where.startswith("bundled")
    assert (pre.input_size, pre.crop_pct, pre.interpolation, pre.mean) == (224, 0.875, "bicubic", (0.5, 0.5, 0.5))
