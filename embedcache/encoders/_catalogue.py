"""The preset table of ``embedcache encoders``: shapes and sizes without loading any weights.

Each preset is built with random weights on PyTorch's ``meta`` device (parameters have shapes but
no storage, so even a 430M-parameter model costs milliseconds); the few that cannot trace on
``meta`` are built on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import torch

from embedcache.encoders.registry import build_encoder, list_presets


@dataclass(frozen=True)
class PresetSummary:
    """One row of the table: grids as ``{level: (h, w, C, stride)}``, parameters in millions."""

    name: str
    source: str
    input_size: int
    resize: str
    global_dim: int
    grids: dict[int, tuple[int, int, int, int]]
    parameters_m: float
    license: str


def summarise(name: str) -> PresetSummary:
    quiet = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(quiet):
            try:
                with torch.device("meta"):
                    encoder = build_encoder(name, "none")
            except (RuntimeError, NotImplementedError):  # data-dependent ops (.item()) on meta
                encoder = build_encoder(name, "none")
    finally:
        logging.disable(logging.NOTSET)
    preset = encoder.preset
    return PresetSummary(
        name=preset.name,
        source=preset.source,
        input_size=preset.preprocessing.input_size,
        resize=preset.preprocessing.resize,
        global_dim=encoder.global_dim,
        grids={level: (*g.shape, g.stride) for level, g in encoder.grid_specs.items()},
        parameters_m=sum(p.numel() for p in encoder.parameters()) / 1e6,
        license=preset.license,
    )


def catalogue() -> list[PresetSummary]:
    """A summary of every registered preset, in registration order."""
    return [summarise(p.name) for p in list_presets()]
