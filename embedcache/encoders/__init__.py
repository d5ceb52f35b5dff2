"""Encoder adapters and the preset registry (see :mod:`embedcache.encoders.base`)."""

from embedcache.encoders.base import (
    Encoder,
    EncoderPreset,
    Features,
    GridSpec,
    Preprocessing,
    pool_grid,
)
from embedcache.encoders.registry import (
    build_encoder,
    list_presets,
    register_family,
    register_preset,
    resolve_preset,
)

__all__ = [
    "Encoder",
    "EncoderPreset",
    "Features",
    "GridSpec",
    "Preprocessing",
    "build_encoder",
    "list_presets",
    "pool_grid",
    "register_family",
    "register_preset",
    "resolve_preset",
]
