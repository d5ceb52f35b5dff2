"""Multi-process training under ``torchrun``: the process group, and the few collective steps
the trainer needs.

Launched by ``torchrun --nproc-per-node N -m probes finetune ...`` (``WORLD_SIZE`` > 1), every
process joins one group (NCCL on CUDA, Gloo on CPU), trains a DistributedDataParallel copy on its
share of each batch plan, and takes part in validation and prediction on its share of the rows.
Only rank 0 writes files; the others wait at barriers. Checkpoints live under ``--out``, which
every process must see (one machine, or a shared file system).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the group.

    Attributes:
        rank, world_size, local_rank: as torchrun sets them (0, 1, 0 for a single process).
        device: the torch device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def resolve_device(device: str | None) -> torch.device:
    """``auto``/``None``: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup(device: str | None = "auto") -> Context:
    """The context of this process; joins the process group when torchrun started several.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` when the device is CUDA.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world_size <= 1:
        return Context(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the group (float64)."""
    if not ctx.distributed:
        return list(values)
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(ctx: Context, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under a group, else unchanged.

    ``find_unused_parameters``: encoders hold parameters a forward pass does not use (DINOv2's
    mask token, poolers a preset does not read), which DDP would otherwise wait for.
    """
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
