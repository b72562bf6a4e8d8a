"""scripts/bench.py and scripts/bench_transfer.py keep working on a tiny model (timings not checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
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


@pytest.mark.slow  # one `tlkit train` process per row
def test_bench_transfer_prints_one_row_per_strategy_from_separate_processes(tmp_path, monkeypatch, capsys):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench_transfer", SCRIPTS / "bench_transfer.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_transfer", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    tiny = ["backbone.name=test_efficientnet", "backbone.weights=none", "backbone.input_size=32",
            "data.num_workers=0", "data.batch_size=4", "trainer.epochs=1"]
    argv = ["bench_transfer.py", "--root", str(root), "--only", "probe,multi-layer probe", "--out",
            str(tmp_path / "table.md"), *[a for s in tiny for a in ("--set", s)]]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    table = (tmp_path / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"strategy", "probe", "multi-layer probe"}
    assert "%" in rows["probe"] and " -> " in rows["probe"]  # accuracy and the load average before -> after
    assert "%" in rows["multi-layer probe"] and " -> " in rows["multi-layer probe"]
