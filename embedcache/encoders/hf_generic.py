"""Generic spec ``hf:<hub-id-or-folder>``: any ViT-like Hugging Face vision model, no preset needed.

``hf:facebook/dinov2-small``, ``hf:/models/rad-dino`` or ``hf:google/siglip-base-patch16-224``:

* the architecture comes from ``config.json``; the concrete transformers class from a small
  ``model_type`` table (:data:`VISION_MODELS`); image-text models (CLIP, SigLIP) use their vision
  tower and the ``vision_config`` part of the config;
* the preprocessing comes from ``preprocessor_config.json`` (mean/std, size, crop size, resample);
* the prefix tokens (CLS, registers, distillation) are measured, not listed per model: see
  :mod:`embedcache.encoders.hf_vit`;
* the global vector is ``pooler_output`` when the model has one with trained weights, else the
  CLS token, else the mean of the patch tokens; the choice is recorded in ``options["global"]``
  and so in the store key.

Reading the spec parses the two JSON files only (no code runs); ``trust_remote_code`` reaches
transformers when the model is built, and only if the user asked for it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedcache.encoders._published import Published, scaled, triple
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, Preprocessing
from embedcache.encoders.hf_loading import (
    config_fields,
    hub_errors,
    hub_help,
    load_model,
    local_folder,
    read_json,
)
from embedcache.encoders.hf_vit import HFViTEncoder, patch_size_of, probe_tokens
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_generic,
)

log = logging.getLogger(__name__)

FAMILY = "hf-generic"


@dataclass(frozen=True)
class VisionModel:
    """How to get the vision transformer out of one ``model_type``.

    Attributes:
        model_class: the transformers class that is built (never an Auto class).
        vision_config: key of the vision sub-config in an image-text model's config, if any.
    """

    model_class: str
    vision_config: str | None = None


#: model_type (config.json) -> the vision model to build. A new ViT-like family is one line.
VISION_MODELS: dict[str, VisionModel] = {
    "dinov2": VisionModel("Dinov2Model"),
    "dinov2_with_registers": VisionModel("Dinov2WithRegistersModel"),
    "dinov3_vit": VisionModel("DINOv3ViTModel"),
    "vit": VisionModel("ViTModel"),
    "deit": VisionModel("DeiTModel"),
    "siglip": VisionModel("SiglipVisionModel", "vision_config"),
    "siglip_vision_model": VisionModel("SiglipVisionModel"),
    "clip": VisionModel("CLIPVisionModel", "vision_config"),
    "clip_vision_model": VisionModel("CLIPVisionModel"),
}

#: Parameters that feed only ``pooler_output``. If a checkpoint lacks them (a ViT saved without
#: its pooler), transformers initialises them randomly: the global vector falls back to CLS.
POOLER_PARAMS = ("pooler.", "head.", "vision_model.head.", "vision_model.post_layernorm.")

#: PIL resample codes used in preprocessor_config.json.
_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


def vision_model(model_type: str) -> VisionModel:
    try:
        return VISION_MODELS[model_type]
    except KeyError:
        known = ", ".join(sorted(VISION_MODELS))
        raise ValueError(
            f"hf: specs support ViT-like model types {known}; got {model_type!r} "
            "(add a line to embedcache.encoders.hf_generic.VISION_MODELS if it is ViT-like)"
        ) from None


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"{what} must have 1 or 3 values, got {value!r}")
    return (values[0], values[1], values[2])


def _square(value: Any, what: str) -> tuple[int | None, int | None]:
    """``(shortest_edge, square side)`` of a processor ``size``/``crop_size`` entry."""
    if value is None:
        return None, None
    if isinstance(value, int):
        return value, value
    if "shortest_edge" in value:
        return int(value["shortest_edge"]), None
    if "height" in value and "width" in value:
        if value["height"] != value["width"]:
            raise ValueError(f"non-square {what} {value} is not supported")
        return None, int(value["height"])
    raise ValueError(f"unsupported {what} {value!r} in preprocessor_config.json")


def preprocessing_from_processor(
    processor: Mapping[str, Any] | None, image_size: int
) -> tuple[Preprocessing, str]:
    """The :class:`Preprocessing` equivalent to a Hugging Face image processor config.

    Mean/std are re-expressed for inputs in ``[0, 1]`` (they absorb ``rescale_factor``). A centre
    crop becomes the ``crop`` policy with ``resize_to`` = the resize's shorter side; a plain square
    resize becomes ``resize``; a shortest-edge resize without a crop keeps the aspect ratio and
    centre-crops to a square (the model needs a square input here).

    Returns:
        ``(preprocessing, origin)``; origin says where the values came from.
    """
    if processor is None:
        log.warning("no preprocessor_config.json: %d px, ImageNet mean/std, bicubic", image_size)
        return Preprocessing(image_size), "defaults (no preprocessor_config.json)"
    rescale = (
        float(processor.get("rescale_factor", 1 / 255))
        if processor.get("do_rescale", True)
        else 1.0
    )
    scale = 255.0 * rescale  # model input units per unit of [0, 1] intensity
    scale = 1.0 if abs(scale - 1.0) < 1e-9 else scale
    if processor.get("do_normalize", True):
        mean = _triple(processor.get("image_mean", IMAGENET_MEAN), "image_mean")
        std = _triple(processor.get("image_std", IMAGENET_STD), "image_std")
        mean = (mean[0] / scale, mean[1] / scale, mean[2] / scale)
        std = (std[0] / scale, std[1] / scale, std[2] / scale)
    else:
        mean, std = (0.0, 0.0, 0.0), (1 / scale, 1 / scale, 1 / scale)

    size = processor.get("size") if processor.get("do_resize", True) else None
    shortest, side = _square(size, "size")
    crop_shortest, crop_side = _square(processor.get("crop_size"), "crop_size")
    crop = crop_side or crop_shortest
    if processor.get("do_center_crop", False) and crop:
        before = shortest or side or crop
        geometry: dict[str, Any] = {
            "input_size": crop,
            "resize": "crop",
            "resize_to": before if before != crop else None,
        }
    elif side:
        geometry = {"input_size": side, "resize": "resize"}
    elif shortest:
        geometry = {"input_size": shortest, "resize": "crop"}
    else:
        geometry = {"input_size": image_size, "resize": "resize"}

    resample = processor.get("resample", 3)
    interpolation = _RESAMPLE.get(resample)
    if interpolation is None:
        log.warning("resample %r is not supported; using bicubic", resample)
        interpolation = "bicubic"
    pp = Preprocessing(mean=mean, std=std, interpolation=interpolation, **geometry)
    return pp, "preprocessor_config.json"


#: PIL resample codes by name, for the comparison with a preset (any kernel, supported or not).
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: Processor settings whose class default applies when preprocessor_config.json omits them.
_PROCESSOR_KEYS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


def _with_class_defaults(processor: Mapping[str, Any]) -> dict[str, Any]:
    """The processor's settings, completed with its ``image_processor_type``'s class defaults
    (``SiglipImageProcessor`` resamples bicubic, ``SegformerImageProcessor`` bilinear)."""
    import transformers

    name = str(processor.get("image_processor_type") or "").removesuffix("Fast")
    cls = getattr(transformers, name, None) if name else None
    out: dict[str, Any] = {}
    for key in _PROCESSOR_KEYS:
        default = getattr(cls, key, None) if cls is not None else None
        if default is not None:
            out[key] = int(default) if key == "resample" else default
    out.update({k: v for k, v in processor.items() if k in _PROCESSOR_KEYS and v is not None})
    return out


def processor_fields(processor: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``preprocessor_config.json`` as the pixel fields of
    :mod:`embedcache.encoders._published` (what it does to pixels, supported by us or not)."""
    p = _with_class_defaults(processor)
    rescale = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    fields: dict[str, Any] = {"rescale": rescale}
    if p.get("do_normalize", True):
        fields["mean"] = scaled(triple(p.get("image_mean", IMAGENET_MEAN)), rescale)
        fields["std"] = scaled(triple(p.get("image_std", IMAGENET_STD)), rescale)
    resample = p.get("resample", 3)
    fields["interpolation"] = _RESAMPLE_NAMES.get(resample, str(resample))
    if not p.get("do_resize", True):
        fields["resize"] = "none"
        return fields
    size, crop = p.get("size"), p.get("crop_size")
    if isinstance(size, Mapping) and "height" in size and size["height"] != size.get("width"):
        fields["input_size"] = [int(size["height"]), int(size["width"])]
        fields["resize"] = "resize"
        return fields
    shortest, side = _square(size, "size")
    if p.get("do_center_crop", False) and crop:
        crop_shortest, crop_side = _square(crop, "crop_size")
        fields["input_size"] = crop_side or crop_shortest
        fields.update(resize="crop", resize_to=shortest or side, crop_rounding="floor")
    elif side:
        fields.update(input_size=side, resize="resize")
    elif shortest:
        fields.update(input_size=shortest, resize="crop", resize_to=shortest, crop_rounding="floor")
    return fields


def published_processor(preset: EncoderPreset, source: WeightsSource) -> Published | None:
    """The ``preprocessor_config.json`` beside the weights (a folder, or the hub snapshot in the
    cache), as :class:`~embedcache.encoders._published.Published`; None if there is none."""
    location = str(local_folder(source.location)) if source.kind == "local" else source.location
    processor = read_json(location, "preprocessor_config.json", required=False)
    if processor is None:
        return None
    return Published(processor_fields(processor), f"{location}/preprocessor_config.json")


def _int_size(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


@register_generic("hf")
def hf_preset(location: str) -> EncoderPreset:
    """An ad-hoc preset for ``hf:<hub-id-or-folder>`` from its config and processor JSON."""
    import transformers

    if not location:
        raise ValueError("hf: needs a hub id or a folder, e.g. hf:facebook/dinov2-small")
    path = Path(location).expanduser()
    if path.exists():
        location = str(local_folder(path))
    elif location.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model folder {location!r} does not exist")
    config = read_json(location, "config.json", required=True)
    route = vision_model(config.get("model_type", ""))
    model_cls = getattr(transformers, route.model_class)
    vision = config.get(route.vision_config, {}) if route.vision_config else config
    arch = {**config_fields(vision), "model_type": model_cls.config_class.model_type}
    image_size = _int_size(model_cls.config_class.from_dict(config_fields(vision)).image_size)
    pp, origin = preprocessing_from_processor(
        read_json(location, "preprocessor_config.json", required=False), image_size
    )
    return EncoderPreset(
        name=f"hf:{location}",
        family=FAMILY,
        source=location,
        preprocessing=pp,
        arch=arch,
        description=f"{route.model_class} from {location}",
        options={"model_class": route.model_class, "preprocessing_from": origin},
    )


def _vision_config(source: WeightsSource, options: LoadOptions) -> tuple[Any, VisionModel]:
    """The vision config of the weights at ``source`` (AutoConfig, then the vision part) and
    its route."""
    from transformers import AutoConfig

    location = str(local_folder(source.location)) if source.kind == "local" else source.location
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=options.trust_remote_code)
    except hub_errors() as exc:
        if source.kind == "hub":
            raise hub_help(location, "config", exc) from exc
        raise
    route = vision_model(config.model_type)
    return (getattr(config, route.vision_config) if route.vision_config else config), route


@register_family(FAMILY, published=published_processor)
def build_generic(
    preset: EncoderPreset, source: WeightsSource, options: LoadOptions
) -> HFViTEncoder:
    """Build an ``hf:`` encoder; the global vector source is decided here and recorded."""
    import transformers

    route = vision_model(preset.arch["model_type"])
    model_cls = getattr(transformers, route.model_class)
    config = None
    if source.kind != "none":
        config, weights_route = _vision_config(source, options)
        if weights_route.model_class != route.model_class:
            raise ValueError(
                f"weights {source.location!r} are a {weights_route.model_class}, the spec "
                f"{preset.name!r} a {route.model_class}"
            )
    model, weights_id, missing = load_model(model_cls, preset.arch, source, options, config=config)
    not_pooler = sorted(k for k in missing if not k.startswith(POOLER_PARAMS))
    if not_pooler:
        raise ValueError(
            f"{source.location!r} lacks {len(not_pooler)} parameters of {route.model_class} "
            f"(e.g. {not_pooler[:3]}): not a matching checkpoint"
        )
    prefix, pooler_dim = probe_tokens(model, patch_size_of(model.config))
    if pooler_dim is not None and not missing:
        global_source = "pooler"
    elif prefix >= 1:
        global_source = "cls"
    else:
        global_source = "mean"
    preset = dataclasses.replace(preset, options={**preset.options, "global": global_source})
    return HFViTEncoder(preset, model, weights_id, expected_prefix=prefix)
