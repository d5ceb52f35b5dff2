"""The preprocessing a checkpoint was published with, compared with the preset's.

A weights folder or hub snapshot often carries its own preprocessing: a Hugging Face
``preprocessor_config.json``, timm's ``config.json`` (``pretrained_cfg``), open_clip's
``open_clip_config.json`` (``preprocess_cfg``), MedImageInsight's ``config.yaml``. Each family
module reads its own file into :data:`PIXEL_FIELDS` (a :class:`Published`) and registers the
reader with its family (``register_family(name, published=reader)``); :func:`check_published`
compares every field that changes pixels with the preset's:

* ``input_size``: the model input side S;
* ``resize``: ``resize`` (squash to S x S), ``crop`` (shortest edge, then a centre crop), ``pad``
  (to a square, then S), or what the file says when we have no such policy;
* ``resize_to``: the shortest edge before the crop (``crop`` only);
* ``crop_rounding``: ``floor`` (Hugging Face) or ``round`` (torchvision) for an odd margin;
* ``interpolation``: the resampling kernel;
* ``rescale``: what an 8-bit value is multiplied by before mean/std (1/255 here);
* ``mean``, ``std``: per channel, in units of ``[0, 1]`` intensity (rescale absorbed).

A difference is logged as one warning naming each field with both values, and the comparison is
recorded in the store's provenance (``encoder.preprocessing_check``). The preset's values are
used (they are part of the store key), except the fields a preset names in
``options["preprocessing_from_checkpoint"]``: those are taken from the checkpoint when it has
them (CheXagent's mean/std, which the reference read from the checkpoint at run time).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedcache.encoders.base import Encoder, Preprocessing

log = logging.getLogger(__name__)

PIXEL_FIELDS = (
    "input_size",
    "resize",
    "resize_to",
    "crop_rounding",
    "interpolation",
    "rescale",
    "mean",
    "std",
)
#: Fields that only mean something under the ``crop`` policy.
_CROP_FIELDS = ("resize_to", "crop_rounding")
#: What our pipeline multiplies an 8-bit value by: its input is in [0, 1].
RESCALE_8BIT = 1 / 255
#: Fields of :class:`Preprocessing` a checkpoint's values may replace.
ADOPTABLE = ("mean", "std", "interpolation")


@dataclass(frozen=True)
class Published:
    """A checkpoint's own preprocessing.

    Attributes:
        fields: :data:`PIXEL_FIELDS` -> value (JSON-able); a field the file does not set is
            absent.
        origin: the file it was read from (a path, or ``hub-id/file``).
    """

    fields: dict[str, Any]
    origin: str


def pixel_fields(pp: Preprocessing) -> dict[str, Any]:
    """A :class:`Preprocessing` as :data:`PIXEL_FIELDS` (lists for the triples)."""
    crop = pp.resize == "crop"
    return {
        "input_size": pp.input_size,
        "resize": pp.resize,
        "resize_to": (pp.resize_to or pp.input_size) if crop else None,
        "crop_rounding": pp.crop_rounding if crop else None,
        "interpolation": pp.interpolation,
        "rescale": RESCALE_8BIT,
        "mean": [float(v) for v in pp.mean],
        "std": [float(v) for v in pp.std],
    }


def triple(value: Any) -> list[float]:
    """One or three numbers as a list of three floats."""
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    return values * 3 if len(values) == 1 else values


def scaled(values: Sequence[float], rescale: float) -> list[float]:
    """Mean or std in units of the rescaled input, re-expressed for ``[0, 1]`` intensity."""
    factor = rescale / RESCALE_8BIT
    return [float(v) / factor for v in values]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (preset value, checkpoint value)}`` for every field the checkpoint sets and the
    preset does differently. ``resize_to`` and ``crop_rounding`` are compared only when both
    crop (otherwise the ``resize`` difference says it)."""
    both_crop = ours.get("resize") == "crop" and theirs.get("resize") == "crop"
    out = {}
    for name in PIXEL_FIELDS:
        if name not in theirs or (name in _CROP_FIELDS and not both_crop):
            continue
        if not _same(ours.get(name), theirs[name]):
            out[name] = (ours.get(name), theirs[name])
    return out


def adopt(pp: Preprocessing, published: Published, names: Sequence[str]) -> Preprocessing:
    """``pp`` with the fields ``names`` (of :data:`ADOPTABLE`) taken from the checkpoint."""
    changes: dict[str, Any] = {}
    for name in names:
        if name not in ADOPTABLE:
            raise ValueError(f"preprocessing field {name!r} cannot come from a checkpoint")
        if name in published.fields:
            value = published.fields[name]
            changes[name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(pp, **changes) if changes else pp


def check_published(encoder: Encoder, published: Published | None) -> dict[str, Any]:
    """Compare ``encoder``'s preprocessing with its checkpoint's; adopt the fields its preset
    names (``options["preprocessing_from_checkpoint"]``), then warn once about what still
    differs.

    Returns:
        The record kept in the store's provenance: ``source`` (the file, or None),
        ``checkpoint`` (its fields), ``differs`` (``{field: [preset, checkpoint]}``) and
        ``adopted`` (fields taken from the checkpoint).
    """
    if published is None:
        return {"source": None, "note": "no preprocessing config with the weights"}
    preset = encoder.preset
    wanted = tuple(preset.options.get("preprocessing_from_checkpoint", ()))
    adopted = [name for name in wanted if name in published.fields]
    if adopted:
        pp = adopt(preset.preprocessing, published, adopted)
        encoder.preset = dataclasses.replace(preset, preprocessing=pp)
    differs = differences(pixel_fields(encoder.preprocessing), published.fields)
    if differs:
        log.warning(
            "%s differs from the preset %s in %s (preset, checkpoint); using the preset's "
            "(they are part of the store key; for the checkpoint's own, use a generic spec "
            "such as hf:<folder>)",
            published.origin,
            preset.name,
            differs,
        )
    return {
        "source": published.origin,
        "checkpoint": dict(published.fields),
        "differs": {name: list(pair) for name, pair in differs.items()},
        "adopted": adopted,
    }
