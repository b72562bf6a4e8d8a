"""Scale-out on Lightning DDP: a real 2-process launch (torchrun, gloo on CPU) of a staged strategy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.run.distributed import lightning_strategy

# Each rank trains through tlkit.run.fit and then saves its in-memory weights, so the test can check that both
# replicas stayed identical after a group unfroze mid-run (Lightning #20340: unfrozen parameters never synchronised).
RANK_SCRIPT = """
import os, sys, torch
import tlkit.run
F = sys.modules["tlkit.run.fit"]  # the package re-exports a function of the same name
from tlkit.recipe import load_recipe
built, initial = [], {}
original = F.build_module_for
def build_module_for(*args, **kwargs):
    built.append(original(*args, **kwargs))
    initial.update({k: v.clone() for k, v in built[0].state_dict().items()})
    return built[0]
F.build_module_for = build_module_for
metrics = F.fit(load_recipe(sys.argv[1]), run_dir=sys.argv[2] if len(sys.argv) > 2 else None)
torch.save({"initial": initial, "final": built[0].state_dict(), "cache": metrics["feature_cache"]}, os.path.join(metrics["run_dir"], f"rank{os.environ.get('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))}.pt"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_staged_strategies_get_find_unused_parameters_under_ddp():
    assert lightning_strategy("ddp", staged=True) == "ddp_find_unused_parameters_true"
    assert lightning_strategy("ddp_spawn", staged=True) == "ddp_spawn_find_unused_parameters_true"
    assert lightning_strategy("ddp", staged=False) == "ddp"
    assert lightning_strategy("auto", staged=True) == "auto"


def run_two_ranks(tmp_path: Path, recipe: dict, launcher: str) -> Path:
    """Train `recipe` in two CPU processes started by torchrun, by Lightning's own launcher, or as srun starts them;
    the run directory."""
    recipe_path = tmp_path / "ddp.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command: list[str] = []
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(free_port()), str(script), str(recipe_path), str(run_dir)]
    elif launcher == "lightning":  # Lightning re-runs the script for rank 1; no --run-dir: rank 1 finds rank 0's run
        command = [sys.executable, str(script), str(recipe_path)]
        env["MASTER_PORT"] = str(free_port())
    else:  # srun: what srun gives each of its tasks on one node (no SLURM here: the variables by hand)
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_NODEID="0",
                   SLURM_JOB_NAME="tlkit-test", SLURM_JOB_ID="4242", SLURM_NODELIST="127.0.0.1",
                   MASTER_PORT=str(free_port()))
        tasks = [subprocess.Popen([sys.executable, str(script), str(recipe_path), str(run_dir)], cwd=tmp_path,
                                  env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        outputs = [task.communicate(timeout=300) for task in tasks]
        assert all(task.returncode == 0 for task in tasks), "\n".join(err[-3000:] for _, err in outputs)
        return run_dir
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow  # ~15 s each: two fresh Python processes import torch + Lightning
@pytest.mark.parametrize("launcher", ["torchrun", "lightning"])
def test_two_process_ddp_fit_on_cpu_trains_in_sync_and_writes_once(tmp_path, launcher):
    root = write_colour_classes(tmp_path / "colours")
    recipe = tiny_recipe_dict(root, backbone={"name": "test_resnet"}, strategy={"kind": "gradual", "unfreeze_every": 1},
                              data={"batch_size": 4}, trainer={"epochs": 2, "devices": 2, "strategy": "ddp"})
    run_dir = run_two_ranks(tmp_path, recipe, launcher)
    if launcher == "lightning":
        (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()  # one run directory, shared by both ranks

    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in run_dir.rglob("*tmp*")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["strategy"] == "gradual"

    rank0, rank1 = (torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"replicas diverged at {key}"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["tlkit"]["phase"] == {"epoch": 1, "trainable_groups": ["head", "backbone.4"]}
    moved = {k for k, v in rank0["final"].items() if not torch.equal(v, rank0["initial"][k])}
    assert any(k.startswith("head.") for k in moved)
    assert any(k.startswith("backbone.layer4.") for k in moved), "the unfrozen top stage did not train"
    assert not any(k.startswith(("backbone.layer1.", "backbone.conv1")) for k in moved), "a frozen group moved"


def test_sync_batchnorm_keeps_timm_norm_act_activations():
    import timm
    from timm.layers import SyncBatchNormAct

    from tlkit.run.distributed import TimmSyncBatchNorm

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    converted = TimmSyncBatchNorm().apply(model)
    assert any(isinstance(m, SyncBatchNormAct) for m in converted.modules())
    assert torch.allclose(converted.eval()(x), expected)  # eval mode needs no process group


def test_sync_batchnorm_on_cpu_is_a_clear_error_before_training(colour_folder, tmp_path):
    from tlkit.errors import RecipeError
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    recipe = validate_recipe(tiny_recipe_dict(colour_folder, trainer={"sync_batchnorm": True}))
    with pytest.raises(RecipeError, match="sync_batchnorm needs CUDA"):
        fit(recipe, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~15 s: two fresh Python processes
def test_lp_ft_under_ddp_probes_on_cached_features_then_fine_tunes_in_sync(tmp_path):
    """lp_ft's probe epoch is served from the feature cache and its fine-tune epoch from images, inside one loader
    per split: both ranks must see the same switch and end with identical weights."""
    root = write_colour_classes(tmp_path / "colours")
    recipe = tiny_recipe_dict(root, backbone={"name": "test_resnet"}, strategy={"kind": "lp_ft", "probe": "sgd", "probe_epochs": 1},
                              data={"batch_size": 4}, trainer={"epochs": 2, "devices": 2, "strategy": "ddp"})
    run_dir = run_two_ranks(tmp_path, recipe, "torchrun")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["feature_cache"]["used"]
    rank0, rank1 = (torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"replicas diverged at {key}"
    moved = {k for k, v in rank0["final"].items() if not torch.equal(v, rank0["initial"][k])}
    assert any(k.startswith("backbone.") for k in moved), "the fine-tune epoch did not train the backbone"


def stored_rows(cache: Path) -> dict[tuple[str, bytes], "np.ndarray"]:
    """(cache entry, row identity digest) -> the stored row, over every shard of a cache folder."""
    from safetensors.numpy import load_file

    rows = {}
    for path in sorted(cache.rglob("*.safetensors"), key=lambda p: p.name):
        data = load_file(str(path))
        for digest, row in zip(data["ids"].view("V16").reshape(-1), data["features"]):
            rows[path.parent.parent.name, digest.tobytes()] = row
    return rows


@pytest.mark.slow  # ~20 s each: two fresh Python processes, then one in-process run
@pytest.mark.parametrize("strategy,launcher", [({"kind": "linear_probe"}, "torchrun"),
                                               ({"kind": "lp_ft", "probe_epochs": 1}, "torchrun"),
                                               ({"kind": "linear_probe"}, "srun")])
def test_two_processes_extract_each_image_once_and_get_the_features_of_one_process(tmp_path, strategy, launcher):
    """torchrun or srun: each process extracts its share of the images (LP-FT's closed-form probe reads the same
    shared rows); together every image once, and the rows on disk are the ones a single process computes."""
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "colours")
    sections = {"backbone": {"name": "test_resnet"}, "strategy": strategy, "data": {"batch_size": 4}}
    recipe = tiny_recipe_dict(root, **sections, cache={"dir": str(tmp_path / "shared_cache")},
                              trainer={"epochs": 2, "devices": 2, "strategy": "ddp"})
    run_dir = run_two_ranks(tmp_path, recipe, launcher)
    rank0, rank1 = (torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    computed = rank0["cache"]["extracted"] + rank1["cache"]["extracted"]
    assert computed == metrics["num_train"] + metrics["num_val"]
    assert rank0["cache"]["extracted"] > 0 and rank1["cache"]["extracted"] > 0
    assert rank0["cache"]["from_other_processes"] == rank1["cache"]["extracted"]
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"replicas diverged at {key}"

    alone = tiny_recipe_dict(root, **sections, cache={"dir": str(tmp_path / "alone_cache")}, trainer={"epochs": 2})
    fit(validate_recipe(alone), run_dir=tmp_path / "alone")
    shared, single = stored_rows(tmp_path / "shared_cache"), stored_rows(tmp_path / "alone_cache")
    assert len(shared) == computed and shared.keys() == single.keys()
    # The same rows up to float rounding: a process's thread count and batch composition can change the last bits of
    # a convolution's sums on some CPUs, so bit-identity would test the machine, not the sharing.
    for key, row in shared.items():
        np.testing.assert_allclose(row, single[key], rtol=1e-4, atol=1e-6)
