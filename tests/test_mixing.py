"""Batch mixing: Mixup blends images and labels by the same ratio, CutMix by pasted area; soft targets sum to one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlkit.model.mixing import BatchMixer, MixingConfig, soft_target_cross_entropy


def batch(n: int = 4, size: int = 16):
    torch.manual_seed(0)
    return torch.rand(n, 3, size, size), torch.arange(n) % 3


def test_mixup_blends_images_with_the_label_ratio():
    np.random.seed(0)
    images, labels = batch()
    mixer = BatchMixer(MixingConfig(mixup_alpha=0.4), num_classes=3)
    mixed, soft = mixer(images, labels)
    assert torch.allclose(soft.sum(dim=1), torch.ones(len(images)))
    lam = float(soft[1, labels[1]])  # image 1 (label 1) is mixed with image 2 (label 2): labels differ
    partner = images.flip(0)
    torch.testing.assert_close(mixed[1], lam * images[1] + (1 - lam) * partner[1], atol=1e-5, rtol=0)
    assert 0.0 < lam < 1.0


def test_cutmix_label_weight_matches_pasted_area():
    np.random.seed(1)
    images, labels = batch(size=32)
    mixer = BatchMixer(MixingConfig(cutmix_alpha=1.0), num_classes=3)
    mixed, soft = mixer(images, labels)
    pasted = (mixed[1] != images[1]).any(dim=0).float().mean()
    assert float(soft[1, labels[1]]) == pytest.approx(1 - float(pasted), abs=1e-6)


def test_mixing_does_not_modify_the_callers_batch():
    images, labels = batch()
    before = images.clone()
    BatchMixer(MixingConfig(mixup_alpha=1.0), num_classes=3)(images, labels)
    assert torch.equal(images, before)


def test_odd_batch_mixes_all_but_the_last_image():
    np.random.seed(0)
    images, labels = batch(n=5)
    mixed, soft = BatchMixer(MixingConfig(mixup_alpha=1.0), num_classes=3)(images, labels)
    assert torch.equal(mixed[-1], images[-1])
    assert torch.equal(soft[-1], torch.nn.functional.one_hot(labels[-1], 3).float())
    assert soft.shape == (5, 3)


def test_label_smoothing_goes_into_the_soft_targets():
    images, labels = batch()
    mixer = BatchMixer(MixingConfig(mixup_alpha=1.0, prob=0.0), num_classes=3, label_smoothing=0.3)
    _, soft = mixer(images, labels)
    assert soft.max() == pytest.approx(0.8) and soft.min() == pytest.approx(0.1)


def test_mixing_turns_off_for_the_last_epochs():
    mixer = BatchMixer(MixingConfig(mixup_alpha=0.2, off_last_epochs=2), num_classes=3)
    assert [mixer.active(e, 5) for e in range(5)] == [True, True, True, False, False]
    assert not BatchMixer(MixingConfig(), num_classes=3).active(0, 5)


def test_mixer_checks_its_inputs_and_has_a_repr():
    mixer = BatchMixer(MixingConfig(mixup_alpha=0.2), num_classes=3)
    with pytest.raises(ValueError, match="Batch ndim should be 4"):
        mixer(torch.rand(4, 16, 16), torch.zeros(4, dtype=torch.long))
    assert "mixup_alpha=0.2" in repr(mixer)


def test_soft_target_cross_entropy_equals_cross_entropy_on_one_hot():
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    assert soft_target_cross_entropy(logits, one_hot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), abs=1e-6
    )


def test_training_step_learns_from_the_mixed_batch_and_its_soft_targets():
    """Mixup as computed by hand (lambda drawn as timm draws it, from NumPy's global generator): the training loss is
    the soft-target cross-entropy of the model on lam * x + (1 - lam) * flip(x) against the mixed one-hot labels."""
    from tlkit.model.module import TransferModule

    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 16}, ["a", "b", "c"],
                            strategy="linear_probe", mixing={"mixup_alpha": 0.4}).eval()
    torch.manual_seed(1)
    for weight in module.head.parameters():  # a head far from its zero init: logits that depend on the pixels
        torch.nn.init.normal_(weight, std=3.0)
    images, labels = batch(n=4, size=16)  # labels 0 1 2 0: pairs (0, 3) share a label, (1, 2) do not
    np.random.seed(3)
    assert np.random.rand() < 1.0  # mixing.prob 1: the batch is mixed
    lam = float(np.random.beta(0.4, 0.4))
    assert 0.05 < lam < 0.95  # a real mix for this seed
    mixed = lam * images + (1 - lam) * images.flip(0)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    soft = lam * one_hot + (1 - lam) * one_hot.flip(0)
    with torch.no_grad():
        expected = -(soft * torch.log_softmax(module(mixed), dim=-1)).sum(dim=1).mean()
        unmixed = torch.nn.functional.cross_entropy(module(images), labels)
    np.random.seed(3)
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):  # no Trainer: logging is skipped
        loss = module.training_step((images, labels), 0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(expected) - float(unmixed)) > 1e-3  # the unmixed loss would be told apart


@pytest.mark.parametrize("strategy", ["linear_probe", "finetune"])
def test_training_with_mixup_cutmix_and_cutout_runs_for_both_strategies(tmp_path, strategy, monkeypatch):
    from conftest import tiny_recipe_dict, write_colour_classes

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    mixed_batches = []
    mix = BatchMixer.forward

    def recording(self, images, labels):  # every batch the training loop hands to the mixer, and what came back
        out = mix(self, images, labels)
        mixed_batches.append((images.clone(), *out))
        return out

    monkeypatch.setattr(BatchMixer, "forward", recording)
    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = validate_recipe(tiny_recipe_dict(
        root, strategy={"kind": strategy}, augment={"preset": "medium", "cutout": {"p": 1.0}},
        mixing={"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, trainer={"epochs": 1},
    ))
    assert not recipe.deterministic_training_input
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["train_acc"] <= 1
    assert not metrics["feature_cache"]["used"]
    assert [len(images) for images, _, _ in mixed_batches] == [8]  # 12 training images, batch 8 (last one dropped)
    for images, mixed, soft in mixed_batches:
        assert not torch.equal(mixed, images)  # Mixup or CutMix changed the pixels
        assert soft.max(dim=1).values.min() < 1.0  # and the targets are soft
