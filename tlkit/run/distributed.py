"""Which process of a multi-process launch this is (torchrun, SLURM srun), read before Lightning sets anything up."""

from __future__ import annotations

import os

from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import StrategyRegistry
from timm.layers import convert_sync_batchnorm
from torch import nn
from typing_extensions import override

from tlkit.errors import RecipeError

RUN_DIR_ENV = "TLKIT_RUN_DIR"  # set by rank 0 while Lightning launches the other ranks, which re-run the command


def launch_rank() -> int:
    """Global rank from the launcher's environment (0 in a plain single-process run and in ddp_spawn's parent).

    Lightning's own ddp launcher re-runs the command for ranks 1..n with only LOCAL_RANK / NODE_RANK set.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local, node = os.environ.get("LOCAL_RANK", "0"), os.environ.get("NODE_RANK", "0")
    return int(local) + int(node) if local.isdigit() and node.isdigit() else 0


def launch_world_size() -> int:
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def start_process_group(accelerator: str) -> bool:
    """Join the launch's process group now, before any feature is extracted, when the launcher started every process
    itself and said where to meet: torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or SLURM's srun (read by
    Lightning's SLURMEnvironment, as its DDP strategy reads it). The feature cache then shares extraction among the
    processes (each computes its share of the uncached images once, see tlkit.data.cache.FeatureCache) for the
    probe's features, strategy auto's measurement and LP-FT's closed-form probe alike; Lightning's DDP strategy
    finds the group set up and uses it as it is. Returns whether it started one.

    Lightning's own launcher starts the other processes only inside trainer.fit: there rank 0 extracts before they
    exist and they read its rows from the cache, so every image is still extracted once."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized() or launch_world_size() < 2:
        return False
    meeting = _meeting_point()
    if meeting is None:
        return False
    rank, world_size = meeting
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    # CPU tensors (the cache's small messages) go through gloo, CUDA tensors (DDP's gradients) through NCCL. env://
    # (the default): under torchrun the workers join its agent's store at MASTER_ADDR:MASTER_PORT instead of starting
    # another there.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return True


def _meeting_point() -> tuple[int, int] | None:
    """(this process's rank, world size) when a launcher started every process and MASTER_ADDR / MASTER_PORT say
    where they meet: torchrun's variables, else SLURM's (srun; Lightning's SLURMEnvironment sets MASTER_ADDR and
    MASTER_PORT from the node list and job id, as it does for its DDP strategy), else None (Lightning's own
    launcher, or one process)."""
    if all(os.environ.get(v) for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    slurm = SLURMEnvironment()
    slurm.main_address, slurm.main_port  # noqa: B018 (each sets its environment variable when absent)
    return slurm.global_rank(), slurm.world_size()


def inherited_run_dir() -> str | None:
    return os.environ.get(RUN_DIR_ENV) or None


def shared_run_stamp() -> str | None:
    """A name every process of one launch agrees on (a per-process timestamp could differ by a second)."""
    for var in ("TLKIT_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var)
        if value and value != "none":
            return value
    return None


def check_shared_run_dir(run_dir_given: bool) -> None:
    if launch_world_size() > 1 and not run_dir_given and shared_run_stamp() is None:
        raise RecipeError("a multi-process launch needs one run directory for all ranks: pass --run-dir, set "
                          "TLKIT_RUN_ID, or use torchrun --rdzv-id / SLURM (their job id names the run).")


def lightning_strategy(name: str, *, staged: bool) -> str:
    """The Lightning strategy name; staged unfreezing under DDP needs find_unused_parameters.

    Frozen groups get no gradients while their parameters stay registered with DDP's reducer (they were trainable
    when DDP wrapped the model, so they are synchronised once unfrozen); find_unused_parameters lets the reducer
    finish its buckets without them.
    """
    if staged and name.startswith("ddp"):
        candidate = f"{name}_find_unused_parameters_true"
        if candidate in StrategyRegistry:
            return candidate
    return name


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """trainer.sync_batchnorm with timm's converter: torch's would turn timm's BatchNormAct2d (norm + activation in
    one module) into a plain SyncBatchNorm and silently drop the activation."""

    @override
    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)


def check_sync_batchnorm(sync: bool, accelerator: str) -> None:
    """torch's SyncBatchNorm runs on CUDA only; fail before any process starts rather than inside every rank."""
    import torch

    if sync and (accelerator == "cpu" or (accelerator in ("auto", "gpu", "cuda") and not torch.cuda.is_available())):
        raise RecipeError("trainer.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no CPU version); "
                          "set it to false for CPU runs.")
