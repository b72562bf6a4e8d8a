"""Export: safetensors + sidecar that load back identically, ONNX that agrees with PyTorch on real images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tlkit.cli.main import main
from tlkit.data.augment import build_eval_transform
from tlkit.data.images import load_rgb
from tlkit.errors import CheckpointError
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.infer.export import load_exported, onnx_parity
from tlkit.model.module import TransferModule
from tlkit.run import evaluate_checkpoint, export_checkpoint


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    root, run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("export")
    summary = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", out, images=[root / "val"])
    return summary, out


def val_images(trained_run) -> list[str]:
    return sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))


def test_export_writes_weights_sidecar_and_onnx(exported):
    summary, out = exported
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "model.onnx"}
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["backbone"] == "test_resnet"
    assert set(meta["preprocessing"]) == {"input_size", "crop_pct", "interpolation", "mean", "std"}
    assert meta["tta"] == {"policy": "hflip", "aggregate": "mean_prob"}
    assert meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["files"] == {"weights": "model.safetensors", "onnx": "model.onnx"}
    assert meta["onnx_parity"]["images"] == 12 and "image(s) through the eval transform" in meta["onnx_parity"]["inputs"]


def test_onnx_matches_pytorch_on_real_images(trained_run, exported):
    summary, out = exported
    assert summary["onnx_parity"]["max_abs_diff_logits"] < 1e-4
    # Independently of the exporter's own check: preprocess real images with the eval transform and compare.
    module = load_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt")
    transform = build_eval_transform(module.preprocessing)
    batch = torch.stack([transform(load_rgb(p)) for p in val_images(trained_run)[:7]])  # a batch size never exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        expected = module(batch).numpy()
    assert logits.shape == (7, 3)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_parity_check_catches_a_graph_of_another_model(trained_run, exported):
    _, out = exported
    torch.manual_seed(1)
    other = TransferModule({"name": "test_resnet", "input_size": 32}, ["blue", "green", "red"], weights="none",
                           head={"final_init": "normal"})
    parity = onnx_parity(other, out / "model.onnx", torch.randn(4, 3, 32, 32))
    assert not parity["ok"] and parity["max_abs_diff_logits"] > 1e-3


def test_exported_safetensors_loads_back_with_identical_predictions(trained_run, exported, tmp_path):
    _, out = exported
    original = load_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt")
    reloaded = load_exported(out / "model.safetensors")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(x), reloaded(x))
    assert reloaded.classes == original.classes and reloaded.tta_spec == original.tta_spec
    # The weights file alone is enough: its metadata carries the same description as model.json.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "model.safetensors", alone / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(load_checkpoint(alone / "model.safetensors")(x), original(x))


def test_evaluate_accepts_an_exported_model(trained_run, exported, tmp_path):
    root, run_dir, _ = trained_run
    from_export = evaluate_checkpoint(exported[1] / "model.safetensors", root, tta=["none"], out=tmp_path / "a")
    from_ckpt = evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", root, tta=["none"], out=tmp_path / "b")
    assert from_export["policies"]["none"]["nll"] == from_ckpt["policies"]["none"]["nll"]


def test_export_cli_without_onnx(trained_run, tmp_path, capsys):
    code = main(["export", "--checkpoint", str(trained_run[1] / "checkpoints" / "best.ckpt"), "--out",
                 str(tmp_path / "e"), "--no-onnx"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["model.json", "model.safetensors"]
    assert "loads back identically" in capsys.readouterr().out


def test_truncated_export_is_a_clear_error(exported, tmp_path):
    cut = tmp_path / "model.safetensors"
    cut.write_bytes((exported[1] / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="Cannot read"):
        load_exported(cut)
