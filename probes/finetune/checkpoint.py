"""Checkpoints of a fine-tune: state dicts only, written atomically, read with
``torch.load(weights_only=True)``.

Per round ``OUT/checkpoints/round-K/`` holds:

- ``last.pt`` after every epoch: model, optimizer, scheduler, the RNG states of every process
  (CPU, and the GPU it trains on),
  the early-stopping state, the epoch (what a resume continues from);
- ``best.pt``: the model of the best validation epoch (written before ``last.pt`` of the same
  epoch, so a ``last.pt`` never refers to a better model that is not on disk);
- ``predictions.parquet`` once the round is scored (a resume skips such rounds). ``last.pt`` is
  then removed (optimizer moments double a model's size); ``best.pt`` stays: the fine-tuned model.

``OUT/checkpoints/fingerprint.json`` records what the run is (settings, encoder, manifest,
folds, target): checkpoints of another run are never resumed into it.

A write goes to a temporary file in the same folder, is flushed to disk and renamed over the
target, so a kill at any moment leaves either the old or the new file, never half of one;
leftover temporary files are removed when a run resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from probes.finetune.distributed import Context, barrier

TMP_SUFFIX = ".tmp"
FINGERPRINT = "fingerprint.json"


def round_dir(out: str | os.PathLike, round_index: int) -> Path:
    return Path(out) / "checkpoints" / f"round-{round_index}"


def save_atomic(state: Any, path: str | os.PathLike) -> Path:
    """``torch.save(state, path)`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def write_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """A checkpoint written by :func:`save_atomic` (tensors only, no pickled objects)."""
    return torch.load(path, map_location=device, weights_only=True)


def clear_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files an interrupted write left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f".*{TMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_fingerprint(out: str | os.PathLike, identity: dict[str, Any], ctx: Context) -> None:
    """Refuse to resume checkpoints of another run in ``out`` (ValueError naming every
    difference), or record ``identity`` (JSON-able) when ``out`` has none yet."""
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    path = Path(out) / "checkpoints" / FINGERPRINT
    found = path.exists()
    barrier(ctx)  # every process has looked before rank 0 may write it
    if found:
        recorded = json.loads(path.read_text())
        differs = [name for name in identity if recorded.get(name) != identity[name]]
        if differs:
            detail = "; ".join(_difference(k, recorded.get(k), identity[k]) for k in differs)
            raise ValueError(
                f"{out} holds checkpoints of a different fine-tune ({detail}); use another "
                "--out, or delete its checkpoints/ folder to start over"
            )
        return
    if ctx.main:
        write_atomic((json.dumps(identity, indent=1) + "\n").encode(), path)
    barrier(ctx)


def _difference(name: str, theirs: Any, mine: Any) -> str:
    if isinstance(theirs, dict) and isinstance(mine, dict):
        keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        return "; ".join(_difference(f"{name}.{k}", theirs.get(k), mine.get(k)) for k in keys)
    return f"{name}: {_short(theirs)} there, {_short(mine)} now"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def rng_state(device: str | torch.device = "cpu") -> dict[str, Any]:
    """This process's torch RNG states: the CPU's, and the one of the CUDA ``device`` it
    trains on (not every visible GPU: a resume may see fewer, or others)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: str | torch.device = "cpu") -> None:
    """Restore what :func:`rng_state` captured; the CUDA state goes to ``device``. A
    checkpoint of an older version holds a list (every visible GPU): the entry of ``device``'s
    index is taken when it exists."""
    torch.set_rng_state(state["cpu"].cpu())
    device = torch.device(device)
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda.cpu(), device)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
