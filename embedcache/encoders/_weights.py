"""Weights helpers shared by every encoder family (not a family module: nothing registers here).

* :func:`weights_digest`: the SHA-256 that identifies local weight files in the store key.
* :func:`build_seeded`: ``--weights none``, a model initialised from a seed inside a forked RNG.
* :func:`read_checkpoint`: a checkpoint FILE (``torch.save`` pickle or safetensors, told apart by
  content) as a flat ``{name: tensor}``, unwrapped from training wrappers. ``torch.load`` always
  runs with ``weights_only=True``: a checkpoint never runs code.
* :func:`weight_file`: a checkpoint given as a file, or as a folder holding one.
* :func:`hub_file`: one file of a Hugging Face hub repository through the local cache (offline
  when ``HF_HUB_OFFLINE`` is set), identified by repository, file and commit.
* :func:`load_exact`: copy a state dict into a module; a missing or mis-shaped parameter is an
  error, never a silently random weight.

Model libraries are imported inside functions; importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Read size when hashing weight files.
HASH_BLOCK = 1 << 20

#: Keys under which training scripts nest the weights, in order of preference. Ark+ saves the
#: student under ``state_dict`` and the EMA teacher (the published model) under ``teacher``.
CHECKPOINT_WRAPPERS = ("teacher", "state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not a state dict, or the wrong model."""


def weights_digest(files: Iterable[Path]) -> str:
    """SHA-256 over the files' names and bytes, in the given order, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def local_identity(files: list[Path], **extra: Any) -> dict[str, Any]:
    """The store-key identity of local weights: the first file's path and a digest of all."""
    return {"local": str(files[0]), "sha256": weights_digest(files), **extra}


def build_seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` initialised from ``seed`` inside a forked RNG, in eval mode.

    The same seed gives bitwise the same weights in any process, and the caller's global RNG
    state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.eval()


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds safetensors (an 8-byte header length, then a JSON object), whatever
    its extension (MedImageInsight ships safetensors named ``.pt``)."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read a checkpoint file as ``({name: tensor}, wrapper key or None)``.

    Accepts a plain state dict or one nested under a key of :data:`CHECKPOINT_WRAPPERS` (the
    first present wins), from ``torch.save`` (loaded with ``weights_only=True``) or safetensors.
    ``module.`` prefixes left by DataParallel/DDP are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if is_safetensors(path):
        from safetensors.torch import load_file

        raw: Any = load_file(str(path), device="cpu")
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise CheckpointError(
                f"{str(path)!r} could not be read with torch.load(weights_only=True) "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "If it stores Python objects besides tensors and you trust its origin, re-save "
                "just its state dict once: torch.save(torch.load(FILE, weights_only=False)"
                "['teacher' or 'state_dict'], 'weights.pth')"
            ) from exc
    wrapper = None
    state = _tensors(raw)
    if state is None and isinstance(raw, Mapping):
        for key in CHECKPOINT_WRAPPERS:
            state = _tensors(raw.get(key))
            if state is not None:
                wrapper = key
                break
    if state is None:
        found = sorted(raw)[:8] if isinstance(raw, Mapping) else type(raw).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a state dict (a mapping of names to tensors, possibly under "
            f"one of {list(CHECKPOINT_WRAPPERS)}); found {found}"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, wrapper


def find_weight_file(folder: Path, names: Iterable[str], patterns: Iterable[str]) -> Path:
    """The weight file in ``folder``: the first of ``names`` that exists, else the only file
    matching ``patterns``. Several candidates, or none, are errors that list what was found."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in found) or "nothing"
    raise FileNotFoundError(
        f"{str(folder)!r}: expected one weight file ({', '.join(patterns)}), found {listing}; "
        "pass the file itself"
    )


def weight_file(location: str | Path, names: Iterable[str], patterns: Iterable[str]) -> Path:
    """A checkpoint file, or the weight file of a folder (:func:`find_weight_file`), resolved."""
    path = Path(location).expanduser().resolve()
    if path.is_dir():
        return find_weight_file(path, names, patterns)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(location)!r} does not exist")
    return path


def hub_file(repo_id: str, filename: str) -> tuple[Path, dict[str, Any]]:
    """``filename`` of hub repository ``repo_id`` through the Hugging Face cache.

    Returns ``(local path, weights_id)``. Offline (``HF_HUB_OFFLINE``) only the cache is read.
    Raises :class:`~embedcache.encoders.hub.WeightsUnavailableError` with the ways out.
    """
    from huggingface_hub import hf_hub_download

    from embedcache.encoders.hub import WeightsUnavailableError, hub_errors

    try:
        path = Path(hf_hub_download(repo_id, filename))
    except hub_errors() as exc:
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        raise WeightsUnavailableError(
            f"could not load {filename!r} of {repo_id!r} from the Hugging Face hub or its local "
            f"cache ({reason}).\n"
            "  - offline or not cached: download it on a connected machine and pass the file "
            "with --weights FILE;\n"
            "  - to test the pipeline only: --weights none (random weights; the numbers mean "
            "nothing)."
        ) from exc
    parts = path.parts
    revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return path, {"hub": repo_id, "file": filename, "revision": revision}


def load_exact(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, what: str
) -> list[str]:
    """Load ``state`` into ``module``: every parameter and persistent buffer must be present with
    its shape. Returns the sorted names in ``state`` that the module does not use."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} of the {len(expected)} tensors of {what} "
            f"(e.g. {missing[:3]}): not a matching checkpoint"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{source} does not fit {what}: {len(wrong)} tensors differ in shape "
            f"(checkpoint vs model), e.g. {wrong[:3]}"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True)
    unused = sorted(set(state) - set(expected))
    if unused:
        log.debug("%s: %d tensors not used by %s, e.g. %s", source, len(unused), what, unused[:5])
    return unused
