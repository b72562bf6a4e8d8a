"""Export: safetensors + sidecar that load back identically, ONNX that agrees with PyTorch on real images."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tlkit.data.preprocessing
from tlkit.cli.main import main
from tlkit.data.augment import build_eval_transform
from tlkit.data.images import load_rgb
from tlkit.errors import CheckpointError
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.infer.export import describe_export, load_exported, onnx_parity
from tlkit.model.module import TransferModule
from tlkit.run import evaluate_checkpoint, export_checkpoint


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify_export = _load_script("verify_export")
BUNDLE_TTA = "multi_scale"  # 6 views at 3 scales: the bundle's multi-view policy (the checkpoint's own is hflip)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    root, run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("export")
    summary = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", out, images=[root / "val"], tta=BUNDLE_TTA)
    return summary, out


def val_images(trained_run) -> list[str]:
    return sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))


def test_export_writes_weights_sidecar_and_onnx(exported):
    _, out = exported
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "model.onnx", "predict.py",
                                               "preprocessing.py", "requirements.txt"}
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["backbone"] == "test_resnet"
    assert set(meta["preprocessing"]) == {"input_size", "crop_pct", "interpolation", "mean", "std"}
    assert meta["tta"] == {"policy": "hflip", "aggregate": "mean_prob"}  # the checkpoint's; the bundle's views:
    assert meta["tta_views"]["policy"] == "multi_scale" and len(meta["tta_views"]["views"]) == 6
    assert meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["files"] == {"weights": "model.safetensors", "onnx": "model.onnx"}
    assert meta["onnx_parity"]["images"] == 12 and "image(s) through the eval transform" in meta["onnx_parity"]["inputs"]


def timm_reference(pre) -> object:
    """timm's own eval transform (Resize + CenterCrop + ToTensor + Normalize on a PIL image) for a preprocessing
    contract: the independent reference tlkit's eval preprocessing must reproduce."""
    from timm.data import create_transform

    return create_transform(input_size=pre.input_size, crop_pct=pre.crop_pct, interpolation=pre.interpolation,
                            mean=pre.mean, std=pre.std, is_training=False)


def odd_sized_images(folder: Path) -> list[Path]:
    """Colour-class-like images whose sizes need a real resize and, after it, a crop at an odd offset (x.5: rounds
    to even) on the long side, in both orientations."""
    from PIL import Image

    rng = np.random.default_rng(5)
    paths = []
    for i, (w, h) in enumerate([(39, 36), (36, 43), (100, 47), (47, 100), (64, 64), (23, 17), (250, 90)]):
        pixels = np.clip(np.array([(40, 60, 200), (40, 190, 60), (210, 50, 40)][i % 3]) +
                         rng.integers(-60, 61, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"odd_{w}x{h}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_onnx_matches_pytorch_on_real_images(trained_run, exported, tmp_path):
    summary, out = exported
    assert summary["onnx_parity"]["max_abs_diff_logits"] < 1e-4
    # Independently of the exporter's own check: tlkit's eval transform must reproduce timm's on real images of
    # awkward sizes, and the ONNX graph's logits on timm's tensors must equal PyTorch's on tlkit's.
    from PIL import Image

    module = load_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt")
    files = [*val_images(trained_run)[:3], *odd_sized_images(tmp_path)]  # 10: a batch size never exported
    ours = torch.stack([build_eval_transform(module.preprocessing)(load_rgb(p)) for p in files])
    reference = torch.stack([timm_reference(module.preprocessing)(Image.open(p).convert("RGB")) for p in files])
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": reference.numpy()})[0]
    with torch.no_grad():
        expected = module(ours).numpy()
    assert logits.shape == (10, 3) and np.ptp(expected, axis=1).min() > 0.1  # logits, and they differ per class
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


# ---------------------------------------------------------------------------------------------------------------------
# The standalone bundle (issue 16): numpy + Pillow + onnxruntime reproduce `tlkit predict`


def test_bundle_ships_tlkits_own_preprocessing_and_a_complete_spec(exported):
    _, out = exported
    # One definition: the bundle's preprocessing is tlkit's module, byte for byte.
    assert (out / "preprocessing.py").read_text() == Path(tlkit.data.preprocessing.__file__).read_text()
    assert (out / "requirements.txt").read_text().split() == ["numpy>=1.22", "Pillow>=9.1", "onnxruntime>=1.16"]
    meta = json.loads((out / "model.json").read_text())
    spec, short = meta["eval_preprocessing"], int(32 / meta["preprocessing"]["crop_pct"])
    assert spec["resize"]["call"] == ("PIL.Image.Image.resize((new_w, new_h), resample=PIL.Image.Resampling.BILINEAR, "
                                      "reducing_gap=None) on the RGB uint8 image")  # test_resnet is bilinear
    assert spec["resize"]["short_side"] == short and f"int({short} * long / short)" in spec["resize"]["size_rounding"]
    assert "top = round((h - 32) / 2)" in spec["crop"]["arithmetic"]
    assert spec["channel_order"] == "RGB" and spec["dtype"] == "float32" and len(spec["normalize"]["mean"]) == 3


def test_describe_export_lists_the_checkpoints_own_views_by_default(trained_run):
    module = load_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt")
    views = describe_export(module)["tta_views"]
    assert views["policy"] == "hflip" and [v["flip"] for v in views["views"]] == [False, True]


def test_the_import_blocker_really_blocks(tmp_path):
    script = tmp_path / "uses_torch.py"
    script.write_text("import numpy, PIL, onnxruntime\nimport torch\n")
    done = subprocess.run(verify_export.blocked_python(script), capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "ImportError: blocked for the standalone test: torch" in done.stderr
    assert "blocked imports: albumentations, cv2, lightning, timm, tlkit, torch, torchvision" in done.stderr


def test_standalone_bundle_matches_tlkit_predict_on_58_awkward_images(trained_run, exported, tmp_path, monkeypatch):
    # Non-square, tiny (1x1), large (2000x1500), grey, palette (+ transparency), alpha, 16-bit, CMYK, EXIF-rotated,
    # BMP/GIF/WebP/TIFF; single view and the bundle's 6-view multi_scale, standalone run where torch/tlkit cannot load.
    images = verify_export.write_varied_images(tmp_path / "varied")
    assert len(images) == 58
    result = verify_export.measure(trained_run[1] / "checkpoints" / "last.ckpt", exported[1], images, tmp_path,
                                   BUNDLE_TTA)
    assert result["views"] == 6
    for policy in ("none", "multi_scale"):
        assert result[policy]["max_abs_diff"] < 1e-4, result
        assert result[policy]["top1_agreement"] == 1.0
    # Both sides above share tlkit's preprocessing; check the shipped copy against timm's transform, and the bundle's
    # logits (its preprocessing + model.onnx) against PyTorch's on timm's tensors.
    from PIL import Image

    spec = importlib.util.spec_from_file_location("bundle_preprocessing", exported[1] / "preprocessing.py")
    shipped = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, shipped)  # its dataclasses look their module up there
    spec.loader.exec_module(shipped)
    module = load_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt")
    pre = shipped.Preprocessing.from_dict(json.loads((exported[1] / "model.json").read_text())["preprocessing"])
    rgb = [shipped.load_rgb(p) for p in images]  # decoding (EXIF, alpha, modes) is the bundle's own, as in predict.py
    bundle_inputs = np.stack([shipped.eval_preprocess(x, pre) for x in rgb])
    reference = torch.stack([timm_reference(module.preprocessing)(Image.fromarray(x)) for x in rgb])
    np.testing.assert_allclose(bundle_inputs, reference.numpy(), atol=1e-6, rtol=0)
    session = ort.InferenceSession(str(exported[1] / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(reference).numpy()
    np.testing.assert_allclose(session.run(None, {"input": bundle_inputs})[0], expected, atol=1e-4, rtol=0)


def test_standalone_predict_prints_a_table_and_writes_csv_to_stdout(trained_run, exported, tmp_path):
    images = sorted((trained_run[0] / "val").rglob("*.png"))[:3]
    table = subprocess.run(verify_export.blocked_python(exported[1] / "predict.py", *images), capture_output=True, check=False,
                           text=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(images[0])) and lines[0].split()[1] in ("blue", "green", "red")
    as_csv = subprocess.run(verify_export.blocked_python(exported[1] / "predict.py", *images, "--csv", "-",
                                                         "--top-k", "2"), capture_output=True, text=True, check=False)
    assert as_csv.stdout.splitlines()[0] == "path,label_1,prob_1,label_2,prob_2" and len(as_csv.stdout.splitlines()) == 4


def test_predictor_from_export_runs_the_onnx_bundle_with_tlkits_numbers(trained_run, exported):
    from tlkit import Predictor

    files = sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))[:5]
    from_export = Predictor.from_export(exported[1])  # model.onnx, with the bundle's multi_scale views
    assert from_export.policy.num_views == 6
    from_ckpt = Predictor.from_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt", tta=BUNDLE_TTA)
    np.testing.assert_allclose(from_export.probabilities(files), from_ckpt.probabilities(files), atol=1e-5, rtol=0)
    assert Predictor.from_export(exported[1] / "model.json", tta="none").policy.num_views == 1


def test_predictor_from_a_folder_without_an_export_is_a_clear_error(tmp_path):
    from tlkit import Predictor

    with pytest.raises(CheckpointError, match="has no model.json; pass the folder `tlkit export --out` wrote"):
        Predictor.from_export(tmp_path)
