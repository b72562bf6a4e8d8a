"""Classifier: a plain nn.Module as timm's models are (backbone = the timm model, head, the config it carries), and
load_classifier for a .ckpt, a model.safetensors and an export folder, including files written before it existed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from timm.data import resolve_data_config

from tlkit import Classifier, create_classifier, load_classifier
from tlkit.infer.export import export_safetensors
from tlkit.model.loading import load_checkpoint
from tlkit.model.module import TransferModule

FORMAT2 = Path(__file__).parent / "data" / "format2"  # written by make_format2.py with the code before Classifier
CLASSES = ["ant", "bee", "cat"]


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.linspace(-1, 1, n * 3 * size * size).reshape(n, 3, size, size)


def test_classifier_is_a_plain_module_whose_backbone_is_the_timm_model():
    classifier = create_classifier("test_resnet", CLASSES, weights="none").eval()
    assert not isinstance(classifier, L.LightningModule)
    assert type(classifier.backbone).__name__ == "ResNet" and classifier.backbone.num_classes == 0
    with torch.no_grad():
        embeddings = classifier.embed(_images())
        logits = classifier(_images())
    assert embeddings.shape == (2, classifier.num_features) and logits.shape == (2, 3)
    assert torch.equal(classifier.head(embeddings), logits)


def test_multilayer_features_keep_the_backbone_the_timm_model():
    classifier = create_classifier("test_efficientnet", CLASSES, weights="none", features="stages").eval()
    assert type(classifier.backbone).__name__ == "EfficientNet"
    with torch.no_grad():
        final = classifier.backbone.forward_features(_images())
        embeddings = classifier.embed(_images())
    assert final.ndim == 4  # timm's own contract, not a wrapper's
    assert embeddings.shape[1] == classifier.num_features > classifier.backbone.num_features


def test_timm_resolve_data_config_reports_the_real_preprocessing():
    classifier = create_classifier({"name": "test_resnet", "weights": "none", "input_size": 48, "crop_pct": 0.8,
                                    "interpolation": "bicubic", "mean": [0.1, 0.2, 0.3]}, CLASSES)
    cfg = resolve_data_config(model=classifier.backbone)
    pre = classifier.preprocessing
    assert cfg["input_size"] == (3, 48, 48) and pre.input_size == 48
    assert cfg["crop_pct"] == pre.crop_pct == 0.8 and cfg["interpolation"] == pre.interpolation == "bicubic"
    assert cfg["mean"] == pre.mean == (0.1, 0.2, 0.3) and cfg["std"] == pre.std


def test_transfer_module_holds_a_classifier_and_saves_its_layout():
    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES)
    assert isinstance(module.classifier, Classifier)
    assert module.backbone is module.classifier.backbone and module.head is module.classifier.head
    assert set(module.state_dict()) == set(module.classifier.state_dict())  # the checkpoint layout is the Classifier's
    fresh = create_classifier({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES)
    fresh.load_state_dict(module.state_dict())
    module.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(_images()), module(_images()))


@pytest.mark.parametrize("name", ["single_label", "multilayer_multilabel"])
def test_checkpoints_written_before_the_classifier_still_load(name):
    expected = torch.load(FORMAT2 / f"{name}.logits.pt", weights_only=True)["logits"]
    classifier = load_classifier(FORMAT2 / f"{name}.ckpt")
    module = load_checkpoint(FORMAT2 / f"{name}.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(classifier(_images()), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(module(_images()), expected, rtol=0, atol=1e-5)
    if classifier.multi_label:
        assert classifier.thresholds.tolist() == pytest.approx([0.3, 0.5, 0.7])
        assert classifier.config.features == "stages" and classifier.stage_pooling.grid == 2


def test_an_export_written_before_the_classifier_still_loads():
    expected = torch.load(FORMAT2 / "multilayer_multilabel.logits.pt", weights_only=True)["logits"]
    classifier = load_classifier(FORMAT2 / "multilayer_export")
    with torch.no_grad():
        torch.testing.assert_close(classifier(_images()), expected, rtol=0, atol=1e-5)
    assert classifier.thresholds.tolist() == pytest.approx([0.3, 0.5, 0.7])


def test_load_classifier_reads_a_checkpoint_a_safetensors_file_and_an_export_folder(tmp_path):
    original = load_classifier(FORMAT2 / "multilayer_multilabel.ckpt")
    export_safetensors(original, tmp_path / "export")
    with torch.no_grad():
        expected = original(_images())
        for source in (tmp_path / "export", tmp_path / "export" / "model.safetensors"):
            reloaded = load_classifier(source)
            assert torch.equal(reloaded(_images()), expected)
            assert torch.equal(reloaded.thresholds, original.thresholds)
            assert reloaded.describe() == original.describe()
