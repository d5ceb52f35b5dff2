"""The encoder registry: presets are data, families are builders.

A new encoder is one :func:`register_preset` call in a family module. A new library family is one
builder decorated with :func:`register_family` (with the reader of the preprocessing its
checkpoints carry, checked against the preset's on every build from real weights). No per-model ``if`` chains anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedcache.encoders._published import Published, check_published
from embedcache.encoders.base import Encoder, EncoderPreset


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from.

    Attributes:
        kind: ``hub`` (a Hugging Face hub id), ``local`` (a folder or checkpoint file), or
            ``none`` (the architecture randomly initialised from ``seed``; numbers mean nothing).
        location: the hub id or the local path; empty for ``none``.
        seed: seed of the random initialisation (``none`` only; recorded in the store key).
    """

    kind: str
    location: str = ""
    seed: int = 0


@dataclass(frozen=True)
class LoadOptions:
    """User switches that affect loading, never the numbers."""

    trust_remote_code: bool = False


Builder = Callable[[EncoderPreset, WeightsSource, LoadOptions], Encoder]
#: Reads the preprocessing a checkpoint was published with (None if it has none).
PublishedReader = Callable[[EncoderPreset, WeightsSource], Published | None]

_PRESETS: dict[str, EncoderPreset] = {}
_FAMILIES: dict[str, Builder] = {}
_PUBLISHED: dict[str, PublishedReader] = {}
#: Generic spec prefixes (``hf:<hub-id-or-dir>``) -> function making an ad-hoc preset.
_GENERIC: dict[str, Callable[[str], EncoderPreset]] = {}

#: Modules of this package that are not family modules.
_NOT_FAMILIES = frozenset({"base", "registry"})


def register_family(
    name: str, *, published: PublishedReader | None = None
) -> Callable[[Builder], Builder]:
    """Register a family's builder, and the reader of the preprocessing its checkpoints carry
    (compared with the preset's on every build from real weights, see
    :mod:`embedcache.encoders._published`)."""

    def decorate(builder: Builder) -> Builder:
        _FAMILIES[name] = builder
        if published is not None:
            _PUBLISHED[name] = published
        return builder

    return decorate


def register_preset(preset: EncoderPreset) -> EncoderPreset:
    if preset.name in _PRESETS:
        raise ValueError(f"encoder preset {preset.name!r} registered twice")
    _PRESETS[preset.name] = preset
    return preset


def register_generic(prefix: str) -> Callable[[Callable[[str], EncoderPreset]], Callable]:
    def decorate(make: Callable[[str], EncoderPreset]) -> Callable[[str], EncoderPreset]:
        _GENERIC[prefix] = make
        return make

    return decorate


def _load_families() -> None:
    """Import every module of ``embedcache.encoders``: importing a family module registers its
    family and presets, so adding an encoder family is adding one file. Family modules import
    their model library (transformers, timm, open_clip) inside functions, never at the top, so
    listing presets stays fast and ``import embedcache`` stays light."""
    package = importlib.import_module("embedcache.encoders")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_FAMILIES and not info.name.startswith("_"):
            importlib.import_module(f"embedcache.encoders.{info.name}")


def list_presets() -> list[EncoderPreset]:
    """All registered presets, in registration order."""
    _load_families()
    return list(_PRESETS.values())


def resolve_preset(spec: str) -> EncoderPreset:
    """A preset name (``rad-dino``) or a generic spec (``hf:facebook/dinov2-small``)."""
    _load_families()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _GENERIC:
        return _GENERIC[prefix](rest)
    if spec in _PRESETS:
        return _PRESETS[spec]
    known = ", ".join(sorted(_PRESETS)) or "(none)"
    generic = ", ".join(f"{p}:<id-or-dir>" for p in sorted(_GENERIC))
    raise KeyError(f"unknown encoder {spec!r}; known presets: {known}; generic specs: {generic}")


def parse_weights(weights: str | None, preset: EncoderPreset, seed: int = 0) -> WeightsSource:
    """Interpret ``--weights``: ``None`` -> the preset's source, ``none`` -> random init,
    an existing path -> local, anything else -> a hub id."""
    if weights is None:
        weights = preset.source
    if weights.lower() == "none":
        return WeightsSource("none", "", seed)
    path = Path(weights).expanduser()
    if path.exists():
        return WeightsSource("local", str(path.resolve()))
    if weights.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"weights folder {weights!r} does not exist")
    return WeightsSource("hub", weights)


def build_encoder(
    spec: str,
    weights: str | None = None,
    *,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> Encoder:
    """Build an encoder in eval mode.

    Args:
        spec: preset name or generic spec (see :func:`resolve_preset`).
        weights: hub id, local folder/file, ``"none"`` for random init, or ``None`` for the
            preset's own source.
        trust_remote_code: passed to Hugging Face loaders; off unless the user asks.
        seed: seed of the random initialisation when ``weights == "none"``.
    """
    preset = resolve_preset(spec)
    source = parse_weights(weights, preset, seed)
    try:
        builder = _FAMILIES[preset.family]
    except KeyError:
        raise KeyError(f"preset {preset.name!r} names unknown family {preset.family!r}") from None
    encoder = builder(preset, source, LoadOptions(trust_remote_code=trust_remote_code))
    reader = _PUBLISHED.get(preset.family)
    if source.kind != "none" and reader is not None:
        encoder.preprocessing_check = check_published(encoder, reader(encoder.preset, source))
    return encoder.eval()
