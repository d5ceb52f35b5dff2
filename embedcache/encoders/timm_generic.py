"""Family ``timm`` and generic spec ``timm:<model-name>[@<checkpoint file or folder>]``.

Any timm model with ``forward_intermediates`` (ViT, DeiT, EVA, Swin, ConvNeXt, ResNet, ...):

* grids come from ``forward_intermediates(norm=True)``: the taps are read from the model's own
  ``feature_info`` (see :mod:`embedcache.encoders._multiscale`): a ViT's last block without its
  prefix tokens (CLS, registers) and its 2x2 pool, or a hierarchical model's stride-16 and
  stride-32 stages. ``norm=True`` applies the final norm where timm defines it: to every ViT tap,
  and to the last stage of Swin (so a Swin stride-32 grid is the normed final map);
* the global vector is ``forward_head(final, pre_logits=True)``: the model's own pooling (CLS
  token, average, ...) without the classifier;
* preprocessing is timm's data config (``timm.data.resolve_data_config``) of the model, or of the
  ``config.json`` next to the weights (the timm hub layout): input size, interpolation, mean/std,
  ``crop_pct`` (resize the shorter side to ``floor(S / crop_pct)``, then centre-crop S);
* weights: a checkpoint file (``torch.save`` or safetensors, possibly nested under ``state_dict``
  / ``model``), converted through the model module's own ``checkpoint_filter_fn`` exactly as
  timm converts its pretrained files; a folder holding one; or, without ``@``, the model's
  timm hub repository through the Hugging Face cache (offline: the cache only).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
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
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, Preprocessing
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_generic,
)

log = logging.getLogger(__name__)

FAMILY = "timm"
#: Weight files of a timm folder, in order of preference (the timm hub layout first).
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pth.tar", "*.pt", "*.ckpt")


def timm_stages(model: nn.Module) -> list[Stage]:
    """The taps of a timm model's ``forward_intermediates``, from its ``feature_info``."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"timm model {type(model).__name__} has no feature_info")
    entries = info.info if hasattr(info, "info") else list(info)
    return [Stage(i, int(e["reduction"]), int(e["num_chs"])) for i, e in enumerate(entries)]


class TimmEncoder(MultiScaleEncoder):
    """A timm model behind the adapter contract.

    Args:
        preset: the preset (the grid shapes are what the model returns at its input size).
        model: the timm model, built with ``num_classes=0``.
        weights_id: identity of the weights.
        head: an optional module applied to the pooled vector (Ark+'s projector).
        head_dim: output size of ``head``.
    """

    def __init__(
        self,
        preset: EncoderPreset,
        model: nn.Module,
        weights_id: dict[str, Any],
        *,
        head: nn.Module | None = None,
        head_dim: int | None = None,
    ) -> None:
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model {type(model).__name__} has no forward_intermediates")
        pooled_dim = getattr(model, "head_hidden_size", None) or model.num_features
        super().__init__(preset, weights_id, head_dim or pooled_dim)
        self.model = model.eval()
        self.head = head.eval() if head is not None else None
        self.plan_grids(timm_stages(model), f"timm model {type(model).__name__}")

    def features(
        self, pixels: torch.Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, torch.Tensor]]:
        wanted = sorted({*self.plan.indices, *taps})
        extra = {"return_prefix_tokens": True} if taps else {}
        final, found = self.model.forward_intermediates(
            pixels, indices=wanted, norm=True, output_fmt="NCHW", **extra
        )
        by_block = {i: (m if taps else (m, None)) for i, m in zip(wanted, found, strict=True)}
        embedding = self.model.forward_head(final, pre_logits=True)
        if self.head is not None:
            embedding = self.head(embedding)
        maps = [channels_last(by_block[i][0]) for i in self.plan.indices]
        return embedding, maps, {b: tap_vector(*by_block[b]) for b in taps}


def create_timm(model_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model`` without pretrained weights or classifier, in eval mode."""
    import timm

    return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs).eval()


def timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert ``state`` with the ``checkpoint_filter_fn`` of the model's timm module (what timm
    applies to its own pretrained files: old layouts, resized position tables, ...)."""
    module = sys.modules.get(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return dict(convert(state, model))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"timm could not convert the checkpoint for {type(model).__name__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def checkpoint_path(location: str | Path) -> Path:
    """A checkpoint file, or the one weight file of a folder (see :data:`WEIGHT_NAMES`)."""
    return weight_file(location, WEIGHT_NAMES, WEIGHT_PATTERNS)


def timm_hub_checkpoint(repo_id: str) -> tuple[Path, dict[str, Any]]:
    """The weights of a timm hub repository from the cache: safetensors, else the .bin."""
    try:
        return hub_file(repo_id, WEIGHT_NAMES[0])
    except OSError:
        return hub_file(repo_id, WEIGHT_NAMES[1])


def load_timm(
    model_name: str, kwargs: Mapping[str, Any], source: WeightsSource
) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model from random init (``none``), a local checkpoint, or its hub repository.

    Returns ``(model in eval mode, weights_id)``. A checkpoint lacking any tensor of the model is
    an error; tensors the model does not use (classifier heads) are ignored.
    """
    if source.kind == "none":
        model = build_seeded(lambda: create_timm(model_name, kwargs), source.seed)
        return model, {"random_init": source.seed, "arch": {"model_name": model_name, **kwargs}}
    if source.kind == "hub":
        path, weights_id = timm_hub_checkpoint(source.location)
    else:
        path = checkpoint_path(source.location)
        weights_id = local_identity([path])
    state, wrapper = read_checkpoint(path)
    if wrapper:
        weights_id["entry"] = wrapper
    model = create_timm(model_name, kwargs)
    load_exact(model, timm_filter(model, state), source=str(path), what=f"timm {model_name}")
    return model.eval(), weights_id


_INTERPOLATIONS = ("bilinear", "bicubic")


def preprocessing_from_data_config(config: Mapping[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` equal to ``timm.data.create_transform(**config)`` at eval.

    ``crop_mode`` ``center`` (timm's default): shorter side to ``floor(S / crop_pct)``, centre
    crop S. ``squash`` is supported only with ``crop_pct == 1`` (a plain resize to S x S).
    """
    height, width = (int(v) for v in config["input_size"][-2:])
    if height != width:
        raise ValueError(f"non-square timm input size {config['input_size']} is not supported")
    interpolation = config.get("interpolation", "bicubic")
    if interpolation not in _INTERPOLATIONS:
        log.warning("timm interpolation %r is not supported; using bicubic", interpolation)
        interpolation = "bicubic"
    crop_pct = float(config.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT
    scale = math.floor(height / crop_pct)
    mode = config.get("crop_mode") or "center"
    common = dict(
        input_size=height,
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=interpolation,
    )
    if mode == "squash" and scale == height:
        return Preprocessing(resize="resize", **common)
    if mode != "center":
        raise ValueError(f"timm crop_mode {mode!r} with crop_pct {crop_pct} is not supported")
    return Preprocessing(
        resize="crop",
        resize_to=scale if scale != height else None,
        crop_rounding="round",  # torchvision's center_crop, which timm's transform uses
        **common,
    )


def _folder_pretrained_cfg(location: Path) -> dict[str, Any] | None:
    """``pretrained_cfg`` of a timm hub folder's ``config.json`` (next to a file, or in a folder)."""
    folder = location if location.is_dir() else location.parent
    config = folder / "config.json"
    if not config.is_file():
        return None
    fields = json.loads(config.read_text())
    return fields.get("pretrained_cfg") if isinstance(fields, dict) else None


def data_config_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` as the pixel fields of :mod:`embedcache.encoders._published`:
    what ``timm.data.create_transform`` does at eval (timm's defaults where it is silent)."""
    height, width = (int(v) for v in cfg.get("input_size", (3, 224, 224))[-2:])
    fields: dict[str, Any] = {
        "input_size": height if height == width else [height, width],
        "interpolation": cfg.get("interpolation") or "bicubic",
        "rescale": 1 / 255,
        "mean": triple(cfg.get("mean", IMAGENET_MEAN)),
        "std": triple(cfg.get("std", IMAGENET_STD)),
    }
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    scale = math.floor(height / crop_pct)
    mode = cfg.get("crop_mode") or "center"
    if mode == "squash" and scale == height:
        fields["resize"] = "resize"
    elif mode == "center":
        fields.update(resize="crop", resize_to=scale, crop_rounding="round")
    else:
        fields["resize"] = f"{mode} (crop_pct {crop_pct})"
    return fields


def published_timm_config(preset: EncoderPreset, source: WeightsSource) -> Published | None:
    """The ``pretrained_cfg`` of the timm ``config.json`` beside the weights (a file's folder,
    a folder, or the hub snapshot in the cache); None if there is none."""
    if source.kind == "local":
        path = Path(source.location).expanduser().resolve()
        cfg = _folder_pretrained_cfg(path)
        origin = str((path if path.is_dir() else path.parent) / "config.json")
    else:
        from embedcache.encoders.hf_loading import read_json

        fields = read_json(source.location, "config.json", required=False) or {}
        cfg, origin = fields.get("pretrained_cfg"), f"{source.location}/config.json"
    return Published(data_config_fields(cfg), origin) if cfg else None


@register_generic("timm")
def timm_preset(spec: str) -> EncoderPreset:
    """An ad-hoc preset for ``timm:<model-name>[@<checkpoint file or folder>]``."""
    import timm
    from timm.data import resolve_data_config

    name, sep, location = spec.partition("@")
    if not name:
        raise ValueError("timm: needs a model name, e.g. timm:convnext_tiny@/models/convnext.pth")
    if not timm.is_model(name):
        stem = name.split(".")[0].split("_")[0]
        near = ", ".join(timm.list_models(f"{stem}*")[:8]) or "see timm.list_models()"
        raise ValueError(f"unknown timm model {name!r} (similar: {near})")
    default_cfg = timm.get_pretrained_cfg(name)
    if default_cfg is not None:
        pretrained_cfg, origin = default_cfg.to_dict(), "timm pretrained_cfg"
    else:  # a model without any pretrained tag: timm's own defaults
        pretrained_cfg, origin = {"input_size": (3, 224, 224)}, "timm defaults"
    if sep:
        if not location:
            raise ValueError(f"timm:{spec}: nothing after '@' (a checkpoint file or folder)")
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {location!r} does not exist")
        source = str(path.resolve())
        folder_cfg = _folder_pretrained_cfg(path.resolve())
        if folder_cfg:
            pretrained_cfg, origin = {**pretrained_cfg, **folder_cfg}, "config.json"
    else:
        source = pretrained_cfg.get("hf_hub_id") or f"timm/{name}"
    pp = preprocessing_from_data_config(resolve_data_config(pretrained_cfg=pretrained_cfg))
    return EncoderPreset(
        name=f"timm:{spec}",
        family=FAMILY,
        source=source,
        preprocessing=pp,
        arch={"model_name": name},
        description=f"timm {name}" + (f" from {source}" if sep else ""),
        options={"preprocessing_from": origin},
    )


@register_family(FAMILY, published=published_timm_config)
def build_timm(preset: EncoderPreset, source: WeightsSource, options: LoadOptions) -> TimmEncoder:
    """Build a ``timm`` encoder (``arch``: ``model_name`` and optional ``kwargs``)."""
    model_name = preset.arch["model_name"]
    model, weights_id = load_timm(model_name, preset.arch.get("kwargs", {}), source)
    preset = dataclasses.replace(preset, options={**preset.options, "global": "pre_logits"})
    return TimmEncoder(preset, model, weights_id)
