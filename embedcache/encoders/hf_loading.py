"""Loading Hugging Face ``transformers`` vision models for the ``hf-*`` encoder families.

One place decides how weights are found and what identifies them in the store key:

* ``none``: the architecture built from a config dict under a fixed seed, inside a forked RNG, so
  the same seed gives bitwise the same weights in any process and leaves the caller's RNG alone.
* ``local``: ``from_pretrained(folder)``, safetensors preferred, identified by the folder and a
  SHA-256 of its weight files.
* ``hub``: ``from_pretrained(hub_id)`` (the local cache when offline), identified by the id and the
  cached snapshot's commit. Offline, gated and unknown repositories fail with one clear message.

``transformers`` is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedcache.encoders._weights import weights_digest
from embedcache.encoders.hub import hub_errors, hub_help
from embedcache.encoders.registry import LoadOptions, WeightsSource

log = logging.getLogger(__name__)

#: Config keys that say how a file was written, not what the model computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "architectures",
        "dtype",
        "torch_dtype",
    }
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def local_folder(path: str | Path) -> Path:
    """Check that ``path`` is a Hugging Face model folder (has ``config.json``)."""
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise FileNotFoundError(f"weights folder {str(path)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"{str(path)!r} is a file; Hugging Face encoders load a folder with config.json and "
            "model.safetensors (as written by save_pretrained)"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json: not a Hugging Face model folder"
        )
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads: ``*.safetensors`` if any, else ``*.bin``."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{str(folder)!r} has no *.safetensors or *.bin weight files")
    return files


def read_json(location: str, filename: str, *, required: bool) -> dict[str, Any] | None:
    """``filename`` of a local folder or hub repository as a dict (``None`` if absent and not
    ``required``). Hub files come through the Hugging Face cache (no network when offline)."""
    path = Path(location).expanduser()
    if path.is_dir():
        file = path / filename
        if file.is_file():
            return json.loads(file.read_text())
        if required:
            raise FileNotFoundError(f"{str(path)!r} has no {filename}")
        return None
    from transformers.utils import cached_file

    try:
        resolved = cached_file(
            location,
            filename,
            _raise_exceptions_for_missing_entries=required,
            _raise_exceptions_for_connection_errors=required,
        )
    except hub_errors() as exc:
        raise hub_help(location, filename, exc) from exc
    if resolved is None and required:
        raise hub_help(location, filename, FileNotFoundError(f"{filename} not found"))
    return json.loads(Path(resolved).read_text()) if resolved else None


def config_fields(config: Any) -> dict[str, Any]:
    """A transformers config (or its JSON dict) as plain JSON-able fields, minus file metadata."""
    raw = config if isinstance(config, Mapping) else config.to_dict()
    return {k: v for k, v in raw.items() if k not in _VOLATILE_CONFIG_KEYS}


def build_random(model_cls: type[nn.Module], arch: Mapping[str, Any], seed: int) -> nn.Module:
    """The architecture from ``arch`` (config fields), initialised from ``seed``, in eval mode.

    The initialisation runs inside a forked RNG: deterministic for a seed, and the caller's global
    RNG state is left untouched.
    """
    fields = {k: v for k, v in arch.items() if k != "model_type"}
    config = model_cls.config_class.from_dict(fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def load_pretrained(
    model_cls: Any,
    source: WeightsSource,
    options: LoadOptions,
    *,
    config: Any = None,
) -> tuple[nn.Module, dict[str, Any], set[str]]:
    """``model_cls.from_pretrained`` from a local folder or a hub id.

    Args:
        model_cls: a concrete transformers class (``Dinov2Model``, ``SiglipVisionModel``, ...).
        source: ``local`` or ``hub``.
        options: ``trust_remote_code`` is passed through, never defaulted to ``True``.
        config: a config object to use instead of the folder's (the vision part of a CLIP/SigLIP
            config).

    Returns:
        ``(model in eval mode, weights_id, missing parameter names)``. Missing names are those the
        checkpoint did not provide (randomly initialised by transformers): the caller decides.
    """
    kwargs: dict[str, Any] = {
        "trust_remote_code": options.trust_remote_code,
        "output_loading_info": True,
    }
    if config is not None:
        kwargs["config"] = config
    if source.kind == "local":
        folder = local_folder(source.location)
        files = weight_files(folder)
        if files[0].suffix == ".safetensors":
            kwargs["use_safetensors"] = True
        model, info = model_cls.from_pretrained(str(folder), **kwargs)
        weights_id: dict[str, Any] = {"local": str(folder), "sha256": weights_digest(files)}
    elif source.kind == "hub":
        try:
            model, info = model_cls.from_pretrained(source.location, **kwargs)
        except hub_errors() as exc:
            raise hub_help(source.location, "weights", exc) from exc
        weights_id = {"hub": source.location, "revision": hub_revision(source.location)}
    else:
        raise ValueError(f"load_pretrained needs local or hub weights, got {source.kind!r}")
    return model.eval(), weights_id, set(info.get("missing_keys", ()))


def hub_revision(hub_id: str) -> str | None:
    """The commit of the cached snapshot ``hub_id`` was loaded from, or ``None`` if unknown."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(path, str):
        return None
    parts = Path(path).parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
        return commit if _COMMIT.match(commit) else None
    return None


def load_model(
    model_cls: Any,
    arch: Mapping[str, Any],
    source: WeightsSource,
    options: LoadOptions,
    *,
    config: Any = None,
) -> tuple[nn.Module, dict[str, Any], set[str]]:
    """Random init from ``arch`` for ``none`` weights, else :func:`load_pretrained`.

    Returns ``(model, weights_id, missing parameter names)`` as :func:`load_pretrained`.
    """
    if source.kind == "none":
        model = build_random(model_cls, arch, source.seed)
        return model, {"random_init": source.seed, "arch": dict(arch)}, set()
    return load_pretrained(model_cls, source, options, config=config)


def load_checked(
    model_cls: Any,
    arch: Mapping[str, Any],
    source: WeightsSource,
    options: LoadOptions,
    *,
    accepts: Collection[str],
    checked_fields: Collection[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` for a preset family, failing loudly on the wrong checkpoint.

    Args:
        model_cls: the concrete transformers class the preset builds.
        arch: the preset's config fields (used for ``none`` weights; compared otherwise).
        source, options: as :func:`load_model`.
        accepts: ``model_type`` values of ``config.json`` the preset can load (a full image-text
            checkpoint and its vision tower alone, e.g. ``siglip`` and ``siglip_vision_model``).
            Checked before loading: a wrong family otherwise fails deep inside transformers.
        checked_fields: config fields that, if the checkpoint's differ from ``arch``, are logged
            (the checkpoint's are used).

    Returns:
        ``(model in eval mode, weights_id)``. Raises ``ValueError`` if the checkpoint is of another
        model type or lacks parameters of ``model_cls``.
    """
    if source.kind != "none":
        location = source.location
        if source.kind == "local":
            location = str(local_folder(location))
        found = read_json(location, "config.json", required=True).get("model_type")
        if found not in accepts:
            raise ValueError(
                f"{source.location!r} holds a {found!r} model; {model_cls.__name__} loads "
                f"model types {sorted(accepts)}"
            )
    model, weights_id, missing = load_model(model_cls, arch, source, options)
    if missing:
        raise ValueError(
            f"{source.location!r} lacks {len(missing)} parameters of {model_cls.__name__} "
            f"(e.g. {sorted(missing)[:3]}): not a matching checkpoint"
        )
    differs = {
        k: (arch[k], getattr(model.config, k, None))
        for k in checked_fields
        if k in arch and getattr(model.config, k, None) != arch[k]
    }
    if differs and source.kind != "none":
        log.warning(
            "weights %s differ from the preset in %s (preset, checkpoint); using the checkpoint's",
            source.location,
            differs,
        )
    return model, weights_id
