"""Distributed extraction under ``torchrun``: ranks, the process group, shard assignment.

``torchrun --nproc-per-node N -m embedcache extract ...`` (or multi-node torchrun, e.g. under
SLURM) starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. Every rank runs the same :func:`embedcache.extract.extract`; this module
tells it who it is and coordinates them:

- rank 0 alone takes the group's writer lock, creates (or checks and reopens) the group, and
  reads which rows are still pending; it broadcasts them, which is also the barrier after which
  the other ranks open the group;
- the pending *shards* (``rows_per_shard`` rows each) are dealt round-robin, so no two ranks
  ever write the same shard file or the same chunk of ``done``/``skipped`` (whose chunks are
  one shard long); each rank writes its shards and their flags straight into the shared store;
- at the end every rank reports what it did (rows, skips with their reasons, errors); rank 0
  records the skip reasons and the run's provenance (the group attributes have one writer),
  then a last barrier.

Resume needs nothing special: the ``done`` flags decide what is pending, and shards are dealt
after filtering, so a rerun with any world size picks up exactly the shards that are missing.
Coordination messages are small JSON texts sent as byte tensors over a gloo group (also when
the default group is NCCL on GPUs): nothing is unpickled, and only tensor collectives that every
supported torch has are used (the object collectives' ``weights_only`` exists only in very
recent torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import numpy as np
import torch

#: Seconds a rank waits at a barrier for the others (``$EMBEDCACHE_DIST_TIMEOUT_S``). Ranks finish
#: their shards at different times and the slowest may be hours behind on a large cohort; a rank
#: that dies makes torchrun stop the others, so a long wait cannot hang a job.
TIMEOUT_ENV = "EMBEDCACHE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 48 * 3600


class RankFailedError(RuntimeError):
    """Another rank of the same distributed extraction stopped with an error."""


class DistributedSetupError(RuntimeError):
    """The job cannot run distributed as asked (for example an HDF5 store)."""


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job (``world_size == 1``: not distributed).

    ``local_world_size`` is the number of ranks on this node (they share its CPU cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` as torchrun sets them;
    one process without.

    Raises:
        DistributedSetupError: the variables are inconsistent (rank outside the world).
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if world < 1 or not 0 <= rank < world:
        raise DistributedSetupError(
            f"RANK={rank} is not inside WORLD_SIZE={world} (check the launcher)"
        )
    return RankInfo(rank, world, local, local_world)


def rank_device(device: str | None, info: RankInfo) -> str | None:
    """``auto``/``cuda`` become ``cuda:<LOCAL_RANK>`` under torchrun (one GPU per rank);
    explicit devices (``cuda:1``, ``cpu``) are kept."""
    if not info.distributed:
        return device
    if device in (None, "auto"):
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def assign_shards(pending_shards: Sequence[int], info: RankInfo) -> list[int]:
    """This rank's shards: every ``world_size``-th pending shard, starting at ``rank``.

    Round-robin over the *pending* shards balances a resumed run as well as a fresh one.
    """
    return [int(s) for s in list(pending_shards)[info.rank :: info.world_size]]


def rank_rows(pending: np.ndarray, rows_per_shard: int, info: RankInfo) -> np.ndarray:
    """The pending rows (sorted) that lie in this rank's shards."""
    pending = np.asarray(pending, dtype=np.int64)
    shards = pending // rows_per_shard
    mine = assign_shards(np.unique(shards).tolist(), info)
    return pending[np.isin(shards, mine)]


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


class Ranks:
    """The ranks of one extraction: process group setup and the few collectives it needs.

    With ``world_size == 1`` every method is a no-op (``share`` returns its argument, ``gather``
    a one-element list), so the extractor has one code path. Use as a context manager: it
    initialises the process group (``nccl`` for CUDA devices, else ``gloo``) unless the caller
    already did, and destroys it again if it made it.

    Args:
        info: this process's rank.
        device: the device this rank computes on.
    """

    def __init__(self, info: RankInfo, device: torch.device):
        self.info = info
        self.device = device
        self._owned = False
        self._group: Any = None

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def __enter__(self) -> Ranks:
        if not self.info.distributed:
            return self
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(
                backend,
                timeout=_timeout(),
                device_id=self.device if self.device.type == "cuda" else None,
            )
            self._owned = True
        if dist.get_world_size() != self.info.world_size or dist.get_rank() != self.info.rank:
            raise RuntimeError(
                f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does "
                f"not match RANK={self.info.rank}, WORLD_SIZE={self.info.world_size}"
            )
        # Coordination goes over gloo (CPU) even when the default group is NCCL.
        if dist.get_backend() == "gloo":
            self._group = None
        else:
            self._group = dist.new_group(backend="gloo", timeout=_timeout())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False

    def share(self, message: Any) -> Any:
        """Rank 0's ``message`` (JSON-able) on every rank; also a barrier."""
        if not self.info.distributed:
            return message
        import torch.distributed as dist

        data = _encode(message) if self.is_main else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self._group)
        if not self.is_main:
            data = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(data, src=0, group=self._group)
        return _decode(data)

    def gather(self, message: Any) -> list[Any]:
        """Every rank's ``message`` (JSON-able), in rank order, on every rank."""
        if not self.info.distributed:
            return [message]
        import torch.distributed as dist

        data = _encode(message)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.info.world_size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=self._group)
        longest = max(int(n) for n in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: len(data)] = data
        out = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
        dist.all_gather(out, padded, group=self._group)
        return [_decode(m[: int(n)]) for m, n in zip(out, sizes, strict=True)]

    def barrier(self) -> None:
        if self.info.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._group)


def _encode(message: Any) -> torch.Tensor:
    """A JSON-able message as a ``(n,)`` uint8 tensor of its UTF-8 JSON text."""
    return torch.frombuffer(bytearray(json.dumps(message).encode()), dtype=torch.uint8)


def _decode(data: torch.Tensor) -> Any:
    """The message :func:`_encode` made ``data`` from."""
    return json.loads(data.numpy().tobytes().decode())
