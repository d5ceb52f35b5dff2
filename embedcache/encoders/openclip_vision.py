"""Family ``open-clip``: open_clip vision towers only; preset ``biomedclip``; generic spec
``open_clip:<arch>@<checkpoint>`` (or ``open_clip:<folder>`` with ``open_clip_config.json``).

Only the image tower is built, with open_clip's own ``_build_vision_tower`` from the model
config's ``embed_dim`` and ``vision_cfg``. The text tower is never built: BiomedCLIP's is a
PubMedBERT that needs hub files, and an image encoder does not need it. The checkpoint's
``visual.*`` tensors are loaded (every one the tower has is required); text tensors are ignored.

* global vector: the tower's projected image embedding, what ``model.visual(x)`` (=
  ``model.encode_image(x)``) returns, not L2-normalised (the reference study's BiomedCLIP input);
* grids: ``visual.forward_intermediates(normalize_intermediates=True)``: for a ViT tower the last
  block's tokens after the final norm with the class token dropped (BiomedCLIP: the study's
  ``visual.trunk.forward_features(x)[:, 1:]``, 14x14x768) and their 2x2 pool (7x7); for a timm
  hierarchical trunk its stride-16 and stride-32 stages;
* preprocessing: open_clip's eval transform of the config's ``preprocess_cfg`` (defaults: CLIP
  mean/std, bicubic, ``resize_mode='shortest'`` = shorter side to S then centre crop S).

BiomedCLIP's config (``open_clip_config.json`` of
``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``): ``embed_dim`` 512, vision tower
timm ``vit_base_patch16_224`` with ``timm_pool=''`` (the trunk's CLS token), ``timm_proj='linear'``
(``visual.head.proj``, 768 -> 512, no bias), 224 px.

Weights: a checkpoint file (``open_clip_pytorch_model.bin`` via ``torch.load(weights_only=True)``,
or safetensors), or a folder holding one. An ``open_clip_config.json`` next to the weights (the
hub layout) gives the architecture; else the preset's. A hub id (the preset's source) is read
through the Hugging Face cache only when offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedcache.encoders._multiscale import MultiScaleEncoder, Stage, channels_last, tap_vector
from embedcache.encoders._published import Published, triple
from embedcache.encoders._weights import (
    CheckpointError,
    build_seeded,
    hub_file,
    load_exact,
    local_identity,
    read_checkpoint,
    weight_file,
)
from embedcache.encoders.base import EncoderPreset, Preprocessing
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_generic,
    register_preset,
)
from embedcache.encoders.timm_generic import timm_stages

log = logging.getLogger(__name__)

FAMILY = "open-clip"
CONFIG_FILE = "open_clip_config.json"
#: open_clip's own preference among the weight files of a folder.
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt")

#: OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN/STD), BiomedCLIP's preprocess_cfg.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BIOMEDCLIP_ARCH: dict[str, Any] = {
    "embed_dim": 512,
    "quick_gelu": False,
    "vision_cfg": {
        "timm_model_name": "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
}

_RESIZE_MODES = {"shortest": "crop", "squash": "resize", "longest": "pad"}


def preprocessing_from_open_clip(
    preprocess_cfg: Mapping[str, Any], image_size: Any
) -> Preprocessing:
    """The :class:`Preprocessing` equal to open_clip's eval ``image_transform`` of a config:
    ``shortest`` -> ``crop`` (shorter side to S, centre crop), ``squash`` -> ``resize``,
    ``longest`` -> ``pad`` (black borders to a square, then S)."""
    size = preprocess_cfg.get("size", image_size)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"non-square open_clip image size {size} is not supported")
        size = size[0]
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode not in _RESIZE_MODES:
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported")
    if preprocess_cfg.get("fill_color", 0) != 0:
        raise ValueError("open_clip fill_color other than 0 (black) is not supported")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        interpolation = "bicubic"  # open_clip itself maps anything else ('random') to bicubic
    return Preprocessing(
        input_size=int(size),
        mean=tuple(float(v) for v in preprocess_cfg.get("mean", CLIP_MEAN)),
        std=tuple(float(v) for v in preprocess_cfg.get("std", CLIP_STD)),
        resize=_RESIZE_MODES[mode],
        interpolation=interpolation,
        crop_rounding="round" if _RESIZE_MODES[mode] == "crop" else "floor",  # torchvision's
    )


register_preset(
    EncoderPreset(
        name="biomedclip",
        family=FAMILY,
        source="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        preprocessing=preprocessing_from_open_clip(
            {"mean": CLIP_MEAN, "std": CLIP_STD}, BIOMEDCLIP_ARCH["vision_cfg"]["image_size"]
        ),
        arch=BIOMEDCLIP_ARCH,
        description="BiomedCLIP ViT-B/16 image tower (PMC-15M), 224 px; grid 14x14x768, "
        "projected embedding 512",
        license="MIT",
        options={"global": "projected"},
    )
)


def vision_arch(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The image-tower part of an open_clip model config."""
    if "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError("not an open_clip model config (no embed_dim / vision_cfg)")
    return {
        "embed_dim": int(model_cfg["embed_dim"]),
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
        "vision_cfg": dict(model_cfg["vision_cfg"]),
    }


def build_visual(arch: Mapping[str, Any]) -> nn.Module:
    """open_clip's image tower from :func:`vision_arch` fields (random init), in eval mode."""
    from open_clip.model import _build_vision_tower

    vision_cfg = dict(arch["vision_cfg"])
    if vision_cfg.get("timm_model_pretrained"):
        vision_cfg["timm_model_pretrained"] = False  # never download ImageNet weights
    tower = _build_vision_tower(
        arch["embed_dim"], vision_cfg, quick_gelu=bool(arch.get("quick_gelu", False))
    )
    return tower.eval()


def visual_stages(visual: nn.Module) -> list[Stage]:
    """The taps of an open_clip tower's ``forward_intermediates``."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:  # open_clip's TimmModel
        return timm_stages(trunk)
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(visual, "patch_size"):
        patch = visual.patch_size
        patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
        width = int(transformer.width)
        return [Stage(i, patch, width) for i in range(len(transformer.resblocks))]
    raise ValueError(
        f"open_clip tower {type(visual).__name__} is not supported (ViT or timm towers only)"
    )


class OpenCLIPEncoder(MultiScaleEncoder):
    """An open_clip image tower behind the adapter contract."""

    def __init__(
        self, preset: EncoderPreset, visual: nn.Module, weights_id: dict[str, Any], global_dim: int
    ) -> None:
        super().__init__(preset, weights_id, global_dim)
        self.visual = visual.eval()
        self.plan_grids(visual_stages(visual), f"open_clip tower {type(visual).__name__}")

    def features(
        self, pixels: torch.Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, torch.Tensor]]:
        wanted = sorted({*self.plan.indices, *taps})
        out = self.visual.forward_intermediates(
            pixels,
            indices=wanted,
            normalize_intermediates=True,
            output_fmt="NCHW",
            output_extra_tokens=bool(taps),
        )
        spatial = out["image_intermediates"]
        prefix = out.get("image_intermediates_prefix") or [None] * len(spatial)
        by_block = dict(zip(wanted, zip(spatial, prefix, strict=True), strict=True))
        maps = [channels_last(by_block[i][0]) for i in self.plan.indices]
        return out["image_features"], maps, {b: tap_vector(*by_block[b]) for b in taps}


def _global_dim(visual: nn.Module, arch: Mapping[str, Any]) -> int:
    if hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    if arch["vision_cfg"].get("timm_proj") == "none":  # the trunk's pooled features, unprojected
        return int(visual.trunk.num_features)
    return int(arch["embed_dim"])


def _read_config(path: Path) -> dict[str, Any]:
    fields = json.loads(path.read_text())
    return fields if isinstance(fields, dict) else {}


def _local_files(location: str) -> tuple[Path, Path | None]:
    """``(weights file, open_clip_config.json or None)`` of a local file or folder."""
    weights = weight_file(location, WEIGHT_NAMES, WEIGHT_PATTERNS)
    config = weights.parent / CONFIG_FILE
    return weights, config if config.is_file() else None


def _hub_files(repo_id: str) -> tuple[Path, Path | None, dict[str, Any]]:
    errors: list[OSError] = []
    for name in WEIGHT_NAMES[:3]:
        try:
            weights, weights_id = hub_file(repo_id, name)
            break
        except OSError as exc:
            errors.append(exc)
    else:
        raise errors[-1]
    try:
        config, _ = hub_file(repo_id, CONFIG_FILE)
    except OSError:
        config = None
    return weights, config, weights_id


def load_visual(
    arch: Mapping[str, Any], source: WeightsSource, name: str
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The image tower from random init, local weights or the hub cache.

    Returns ``(tower, weights_id, arch used)``; the arch of an ``open_clip_config.json`` next to
    the weights wins over the preset's (with a warning when they differ).
    """
    if source.kind == "none":
        visual = build_seeded(lambda: build_visual(arch), source.seed)
        return visual, {"random_init": source.seed, "arch": dict(arch)}, dict(arch)
    if source.kind == "hub":
        weights, config, weights_id = _hub_files(source.location)
    else:
        weights, config = _local_files(source.location)
        weights_id = local_identity([weights, *([config] if config else [])])
    if config is not None:
        found = vision_arch(_read_config(config).get("model_cfg", _read_config(config)))
        if found != dict(arch):
            log.warning("%s: using the architecture of %s, not the preset's", name, config)
        arch = found
    state, wrapper = read_checkpoint(weights)
    visual_state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual_state:
        raise CheckpointError(
            f"{str(weights)!r} has no visual.* tensors: not an open_clip CLIP checkpoint"
        )
    visual = build_visual(arch)
    load_exact(visual, visual_state, source=str(weights), what=f"the {name} image tower")
    if wrapper:
        weights_id["entry"] = wrapper
    return visual.eval(), weights_id, dict(arch)


def preprocess_fields(preprocess_cfg: Mapping[str, Any], image_size: Any) -> dict[str, Any]:
    """open_clip's eval transform of a ``preprocess_cfg`` as the pixel fields of
    :mod:`embedcache.encoders._published` (open_clip's defaults where it is silent)."""
    size = preprocess_cfg.get("size", image_size)
    if isinstance(size, list | tuple):
        size = int(size[0]) if len(set(size)) == 1 else [int(v) for v in size]
    mode = preprocess_cfg.get("resize_mode", "shortest")
    policy = _RESIZE_MODES.get(mode, mode)
    fields: dict[str, Any] = {
        "input_size": size,
        "resize": policy,
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "rescale": 1 / 255,
        "mean": triple(preprocess_cfg.get("mean", CLIP_MEAN)),
        "std": triple(preprocess_cfg.get("std", CLIP_STD)),
    }
    if policy == "crop":
        fields.update(resize_to=size, crop_rounding="round")
    return fields


def published_open_clip(preset: EncoderPreset, source: WeightsSource) -> Published | None:
    """The ``preprocess_cfg`` of the ``open_clip_config.json`` beside the weights (a folder or
    file, or the hub snapshot in the cache); None if there is none."""
    if source.kind == "local":
        _, config = _local_files(source.location)
    else:
        try:
            config, _ = hub_file(source.location, CONFIG_FILE)
        except OSError:
            config = None
    if config is None:
        return None
    fields = _read_config(config)
    model_cfg = fields.get("model_cfg", fields)
    image_size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    preprocess = preprocess_fields(fields.get("preprocess_cfg", {}), image_size)
    return Published(preprocess, str(config))


@register_family(FAMILY, published=published_open_clip)
def build_open_clip(
    preset: EncoderPreset, source: WeightsSource, options: LoadOptions
) -> OpenCLIPEncoder:
    """Build an open_clip image tower (``arch``: ``embed_dim``, ``vision_cfg``, ``quick_gelu``)."""
    visual, weights_id, arch = load_visual(preset.arch, source, preset.name)
    preset = dataclasses.replace(preset, options={"global": "projected", **preset.options})
    return OpenCLIPEncoder(preset, visual, weights_id, _global_dim(visual, arch))


@register_generic("open_clip")
def open_clip_preset(spec: str) -> EncoderPreset:
    """An ad-hoc preset for ``open_clip:<arch>@<checkpoint file or folder>`` (``arch`` an
    open_clip model config name, e.g. ``ViT-B-16``) or ``open_clip:<folder>`` (a folder with
    ``open_clip_config.json`` and the weights, the hub layout)."""
    import open_clip

    arch_name, sep, location = spec.partition("@")
    if not sep:
        folder = Path(arch_name).expanduser()
        if not (folder / CONFIG_FILE).is_file():
            raise ValueError(
                f"open_clip:{spec}: expected <arch>@<checkpoint> (e.g. open_clip:ViT-B-16@"
                f"/models/clip.bin) or a folder holding {CONFIG_FILE} and the weights"
            )
        location = str(folder.resolve())
        config = _read_config(folder / CONFIG_FILE)
        origin = CONFIG_FILE
    else:
        config = open_clip.get_model_config(arch_name)
        if config is None:
            near = [m for m in open_clip.list_models() if arch_name.split("-")[0] in m][:8]
            raise ValueError(f"unknown open_clip model config {arch_name!r} (e.g. {near})")
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {location!r} does not exist")
        location = str(path.resolve())
        origin = f"open_clip config {arch_name}"
    model_cfg = config.get("model_cfg", config)
    arch = vision_arch(model_cfg)
    pp = preprocessing_from_open_clip(
        config.get("preprocess_cfg", {}), arch["vision_cfg"].get("image_size", 224)
    )
    return EncoderPreset(
        name=f"open_clip:{spec}",
        family=FAMILY,
        source=location,
        preprocessing=pp,
        arch=arch,
        description=f"open_clip image tower ({origin}) from {location}",
        options={"arch_from": origin},
    )
