"""scripts/bench.py keeps working: one run of every in-process section on a tiny model (timings not checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from conftest import write_colour_classes

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_bench():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_script_writes_every_section_on_a_tiny_model(tmp_path, monkeypatch):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    out = tmp_path / "bench"
    argv = ["bench.py", "--steps", "3", "--repeats", "1", "--workers", "0", "--out", str(out),
            "--set", "backbone.name=test_efficientnet", "--set", "backbone.weights=none",
            "--set", "backbone.input_size=32", "--set", f"data.root={root}", "--set", "data.batch_size=3",
            "--set", "data.num_workers=0"]
    monkeypatch.setattr(sys, "argv", argv)
    assert load_bench().main() == 0
    results = json.loads((out / "bench.json").read_text())
    assert results["training"]["tlkit_images_per_s"] > 0 and results["training"]["bare_images_per_s"] > 0
    assert results["step_costs"]["inference"]["x_inference"] == 1.0
    assert results["loader"]["images_per_s"] > 0
    assert set(results["inference"]) == {"fp32", "channels_last", "channels_last + bf16"}
    table = (out / "bench.md").read_text()
    assert "bare PyTorch loop" in table and results["machine"]["torch"] in table
