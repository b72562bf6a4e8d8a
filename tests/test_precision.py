"""Inference precision: 'auto' picks bf16 only where it is native; bad names fail with a hint."""

from __future__ import annotations

import pytest
import torch

from tlkit.infer.precision import autocast, native_bf16, resolve_precision


def test_auto_follows_native_bf16_support():
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16.*Did you mean 'bf16'"):
        resolve_precision("bf61")


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_does_not():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast("bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("fp32"):
        assert conv(x).dtype == torch.float32
