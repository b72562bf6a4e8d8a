"""GPU-ready settings: 16-mixed refused where no GPU runs it, torch.compile as a callback that leaves the model's
parameters as they were, and loader workers that share the CPUs among the devices."""

from __future__ import annotations

import pytest

from tlkit.data import workers
from tlkit.errors import RecipeError
from tlkit.recipe.sections import TrainerConfig
from tlkit.run.accelerate import CompileEmbedder, check_precision


def test_trainer_section_accepts_16_mixed_and_compile():
    config = TrainerConfig(precision="16-mixed", compile=True)
    assert config.precision == "16-mixed" and config.compile is True
    assert TrainerConfig().compile is False  # compiling costs seconds up front: opt in


def test_16_mixed_is_refused_on_cpu_in_one_line_with_the_alternatives():
    with pytest.raises(RecipeError, match="16-mixed needs a CUDA GPU.*use 32, or bf16-mixed") as info:
        check_precision("16-mixed", "cpu")
    assert "\n" not in str(info.value)
    check_precision("bf16-mixed", "cpu")  # bf16 autocast runs on CPUs
    check_precision("32", "cpu")


def test_compile_callback_keeps_parameters_and_state_dict_keys():
    from tlkit.model.module import TransferModule

    module = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, ["a", "b"])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    CompileEmbedder().setup(None, module, "fit")
    after = module.state_dict()
    assert list(after) == list(before)  # checkpoints of a compiled run load into an eager model
    assert all((after[k] == before[k]).all() for k in before)
    assert module.classifier.embedder._compiled_call_impl is not None


@pytest.mark.parametrize(("cpus", "devices", "expected"), [(1, 1, 0), (2, 1, 2), (8, 2, 4), (64, 1, 8), (4, 8, 1)])
def test_auto_workers_share_the_cpus_among_devices(monkeypatch, cpus, devices, expected):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(cpus)), raising=False)
    assert workers.resolve_workers("auto", devices) == expected
    assert workers.resolve_workers(3, devices) == 3  # a number is used as given


def test_local_devices_reads_the_launchers_world_size(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert workers.local_devices() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert workers.local_devices() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: processes on this machine only
    assert workers.local_devices() == 2
