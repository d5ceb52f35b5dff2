"""Family ``davit``: preset ``medimageinsight``, the image encoder of MedImageInsight
(``lion-ai/MedImageInsights``, MIT), run on our own DaViT (:mod:`embedcache.encoders.davit`).

The release's ``2024.09.27/config.yaml`` fixes the image encoder: DaViT with embed dims
256/512/1024/2048, depths 1/1/9/1, heads and groups 8/16/32/64, convolutions 7/3/3/3 with
strides 4/2/2/2 and paddings 3/1/1/1, pre-norm on stages 2-4, window 12, at 480 x 480, image
mean/std ImageNet's (``IMAGE_MEAN``/``IMAGE_STD``), and a 1024-d ``image_projection``.

* grid level 16: stage 3's output, 30x30x1024; level 32: stage 4's, 15x15x2048 (the stage
  outputs before the pooled ``norms``). The reference study read these through a
  ``forward_patch_features`` it added to ``davit_v1``; that method is not published, so "stage
  output after its last block" is this module's reading of it (the only one matching the
  study's shapes without an extra layer).
* global vector: ``forward_features(x) @ image_projection``, divided by its L2 norm: the
  release's ``UniCLModel.encode_image(norm=True)`` and exactly what the study's classifier read.
* preprocessing: the study's ``Resize((480, 480), bicubic)``, ImageNet mean/std (the release's
  eval transform without centre crop, ``TEST.CENTER_CROP: false``).

Weights: the release's vision checkpoint (``2024.09.27/vision_model/medimageinsigt-v1.0.0.pt``,
safetensors despite its name) or any file with the same tensors; a folder is searched for it. The
image encoder's tensors may carry the prefix ``image_encoder.`` (current) or ``visual.`` (old),
the projection may be ``image_projection`` or ``vision_projection``, and the old DaViT names
(``conv_embeds``, ``main_blocks``, ``cpe``, ...) are renamed as the release's loader renames
them. Language tensors are ignored. A ``config.yaml`` beside the checkpoint (or one folder up,
the release layout) gives the architecture; else the preset's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedcache.encoders._multiscale import MultiScaleEncoder, Stage
from embedcache.encoders._published import Published, triple
from embedcache.encoders._weights import (
    CheckpointError,
    build_seeded,
    find_weight_file,
    hub_file,
    load_exact,
    local_identity,
    read_checkpoint,
)
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, Preprocessing
from embedcache.encoders.davit import DaViT
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_preset,
)

log = logging.getLogger(__name__)

FAMILY = "davit"
HUB_REPO = "lion-ai/MedImageInsights"
HUB_WEIGHTS = "2024.09.27/vision_model/medimageinsigt-v1.0.0.pt"
HUB_CONFIG = "2024.09.27/config.yaml"

#: The release's IMAGE_ENCODER.SPEC (config.yaml) as DaViT keyword arguments.
MEDIMAGEINSIGHT_DAVIT: dict[str, Any] = {
    "embed_dims": [256, 512, 1024, 2048],
    "depths": [1, 1, 9, 1],
    "num_heads": [8, 16, 32, 64],
    "num_groups": [8, 16, 32, 64],
    "patch_size": [7, 3, 3, 3],
    "patch_stride": [4, 2, 2, 2],
    "patch_padding": [3, 1, 1, 1],
    "patch_prenorm": [False, True, True, True],
    "window_size": 12,
}
MEDIMAGEINSIGHT_ARCH: dict[str, Any] = {"davit": MEDIMAGEINSIGHT_DAVIT, "projection_dim": 1024}

#: config.yaml SPEC key -> DaViT argument.
_SPEC_FIELDS = {
    "DIM_EMBED": "embed_dims",
    "DEPTHS": "depths",
    "NUM_HEADS": "num_heads",
    "NUM_GROUPS": "num_groups",
    "PATCH_SIZE": "patch_size",
    "PATCH_STRIDE": "patch_stride",
    "PATCH_PADDING": "patch_padding",
    "PATCH_PRENORM": "patch_prenorm",
    "WINDOW_SIZE": "window_size",
    "CONV_AT_ATTN": "conv_at_attn",
    "CONV_AT_FFN": "conv_at_ffn",
    "DYNAMIC_SCALE": "dynamic_scale",
}
#: Old DaViT parameter names -> current ones, applied in this order (the release's key remap).
_OLD_NAMES = (
    ("conv_embeds", "convs"),
    ("main_blocks", "blocks"),
    ("0.cpe.0.proj", "spatial_block.conv1.fn.dw"),
    ("0.attn", "spatial_block.window_attn.fn"),
    ("0.cpe.1.proj", "spatial_block.conv2.fn.dw"),
    ("0.mlp", "spatial_block.ffn.fn.net"),
    ("1.cpe.0.proj", "channel_block.conv1.fn.dw"),
    ("1.attn", "channel_block.channel_attn.fn"),
    ("1.cpe.1.proj", "channel_block.conv2.fn.dw"),
    ("1.mlp", "channel_block.ffn.fn.net"),
    ("0.norm1", "spatial_block.window_attn.norm"),
    ("0.norm2", "spatial_block.ffn.norm"),
    ("1.norm1", "channel_block.channel_attn.norm"),
    ("1.norm2", "channel_block.ffn.norm"),
)
_ENCODER_PREFIXES = ("image_encoder.", "visual.")
_PROJECTION_KEYS = ("image_projection", "vision_projection")

register_preset(
    EncoderPreset(
        name="medimageinsight",
        family=FAMILY,
        source=HUB_REPO,
        preprocessing=Preprocessing(
            input_size=480,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize="resize",
            interpolation="bicubic",
        ),
        arch=MEDIMAGEINSIGHT_ARCH,
        description="MedImageInsight DaViT image encoder, 480 px; grids 30x30x1024 (s16), "
        "15x15x2048 (s32); projected embedding 1024 (L2-normalised)",
        license="MIT",
        options={"normalize_global": True},
    )
)


def arch_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`MEDIMAGEINSIGHT_ARCH`-style fields from a release ``config.yaml`` (parsed)."""
    try:
        encoder, unicl = config["IMAGE_ENCODER"], config["UNICL_MODEL"]
        spec = encoder["SPEC"]
    except (KeyError, TypeError):
        raise CheckpointError("config.yaml has no IMAGE_ENCODER.SPEC / UNICL_MODEL") from None
    if not spec.get("STANDPARAM", True):
        raise CheckpointError("muP-parametrised DaViT (STANDPARAM: false) is not supported")
    if encoder.get("NUM_CLASSES", 0):
        log.warning("config.yaml: the DaViT classification head is not used")
    davit = {arg: spec[key] for key, arg in _SPEC_FIELDS.items() if key in spec}
    missing = sorted(set(MEDIMAGEINSIGHT_DAVIT) - set(davit) - {"window_size"})
    if missing:
        raise CheckpointError(f"config.yaml IMAGE_ENCODER.SPEC lacks {missing}")
    davit.setdefault("window_size", 7)  # davit_v1's default
    return {"davit": davit, "projection_dim": int(unicl["DIM_PROJECTION"])}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def split_checkpoint(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(DaViT state dict in current names, image projection)`` from a release checkpoint."""
    encoder: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in _ENCODER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            continue
        name = key[len(prefix) :]
        for old, new in _OLD_NAMES:
            name = name.replace(old, new)
        encoder[name] = value
    projection = next((state[k] for k in _PROJECTION_KEYS if k in state), None)
    if not encoder or projection is None:
        raise CheckpointError(
            "not a MedImageInsight checkpoint: expected image_encoder.* (or visual.*) tensors and "
            f"{' or '.join(_PROJECTION_KEYS)}; found e.g. {sorted(state)[:5]}"
        )
    return encoder, projection


def create_davit(davit: Mapping[str, Any], *, initialise: bool) -> DaViT:
    """A DaViT without the cost of a throw-away initialisation: built on the meta device, then
    given memory, then initialised (random weights) or left for a checkpoint to fill."""
    with torch.device("meta"):
        model = DaViT(**davit)
    model = model.to_empty(device="cpu")
    if initialise:
        model.init_weights()
    return model.eval()


class DaViTEncoder(MultiScaleEncoder):
    """A DaViT image encoder plus its image projection behind the adapter contract."""

    def __init__(
        self,
        preset: EncoderPreset,
        model: DaViT,
        projection: torch.Tensor,
        weights_id: dict[str, Any],
    ) -> None:
        super().__init__(preset, weights_id, projection.shape[1])
        self.model = model.eval()
        self.image_projection = nn.Parameter(projection.detach().float().clone())
        stages = [
            Stage(i, stride, dim)
            for i, (stride, dim) in enumerate(zip(model.strides, model.embed_dims, strict=True))
        ]
        self.plan_grids(stages, "DaViT")

    def features(
        self, pixels: torch.Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, torch.Tensor]]:
        pooled, maps = self.model.forward_intermediates(pixels, indices=self.plan.indices)
        return pooled @ self.image_projection, maps, {}  # hierarchical: no taps


def _local_files(location: str) -> tuple[Path, Path | None]:
    """``(checkpoint, config.yaml or None)``: a file, or a release folder (``2024.09.27`` or the
    repository above it)."""
    path = Path(location).expanduser().resolve()
    if path.is_dir():
        for folder in (path, path / "vision_model", *sorted(path.glob("*/vision_model"))):
            found = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.safetensors"))
            if len(found) == 1:
                path = found[0]
                break
        else:
            path = find_weight_file(path, (), ("*.pt", "*.safetensors"))
    elif not path.is_file():
        raise FileNotFoundError(f"weights {location!r} do not exist")
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return path, folder / "config.yaml"
    return path, None


def release_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The release's eval transform (``ImageDataLoader/transforms/build.py``,
    ``is_train=False``) of a parsed ``config.yaml`` as the pixel fields of
    :mod:`embedcache.encoders._published`: ``TEST.CENTER_CROP`` resizes the shorter side to
    ``int(S / 0.875)`` and centre-crops S (torchvision), else a plain ``(S, S)`` resize;
    ``AUG.INTERPOLATION``; ``IMAGE_ENCODER.IMAGE_MEAN``/``IMAGE_STD`` after ``ToTensor``."""
    encoder = config.get("IMAGE_ENCODER") or {}
    fields: dict[str, Any] = {"rescale": 1 / 255}
    if "IMAGE_SIZE" in encoder:
        height, width = (int(v) for v in encoder["IMAGE_SIZE"][:2])
        fields["input_size"] = height if height == width else [height, width]
        if (config.get("TEST") or {}).get("CENTER_CROP", False):
            fields.update(resize="crop", resize_to=int(width / 0.875), crop_rounding="round")
        else:
            fields["resize"] = "resize"
    interpolation = (config.get("AUG") or {}).get("INTERPOLATION")
    if interpolation:
        fields["interpolation"] = str(interpolation)
    for key, name in (("IMAGE_MEAN", "mean"), ("IMAGE_STD", "std")):
        if key in encoder:
            fields[name] = triple(encoder[key])
    return fields


def published_release(preset: EncoderPreset, source: WeightsSource) -> Published | None:
    """The release ``config.yaml`` beside the weights (or in the hub snapshot); None if absent."""
    if source.kind == "local":
        _, config = _local_files(source.location)
    else:
        try:
            config, _ = hub_file(source.location, HUB_CONFIG)
        except OSError:
            config = None
    if config is None:
        return None
    return Published(release_fields(_read_yaml(config)), str(config))


@register_family(FAMILY, published=published_release)
def build_davit(preset: EncoderPreset, source: WeightsSource, options: LoadOptions) -> DaViTEncoder:
    """Build a DaViT encoder from random init, a release checkpoint, or the hub cache."""
    arch = dict(preset.arch)
    if source.kind == "none":
        weights_id: dict[str, Any] = {"random_init": source.seed, "arch": arch}

        def random_encoder() -> DaViTEncoder:
            model = create_davit(arch["davit"], initialise=True)
            projection = torch.empty(model.embed_dims[-1], arch["projection_dim"])
            nn.init.trunc_normal_(projection, std=0.02)  # UniCLModel.custom_init_weights
            return DaViTEncoder(preset, model, projection, weights_id)

        return build_seeded(random_encoder, source.seed)
    if source.kind == "hub":
        weights, weights_id = hub_file(source.location, HUB_WEIGHTS)
        try:
            config, _ = hub_file(source.location, HUB_CONFIG)
        except OSError:
            config = None
    else:
        weights, config = _local_files(source.location)
        weights_id = local_identity([weights, *([config] if config else [])])
    if config is not None:
        found = arch_from_config(_read_yaml(config))
        if found != arch:
            log.warning("%s: using the architecture of %s, not the preset's", preset.name, config)
        arch = found
    state, wrapper = read_checkpoint(weights)
    encoder_state, projection = split_checkpoint(state)
    model = create_davit(arch["davit"], initialise=False)
    load_exact(model, encoder_state, source=str(weights), what="the DaViT image encoder")
    want = (model.embed_dims[-1], arch["projection_dim"])
    if tuple(projection.shape) != want:
        raise CheckpointError(f"image projection is {tuple(projection.shape)}, expected {want}")
    if wrapper:
        weights_id["entry"] = wrapper
    preset = dataclasses.replace(preset, arch=arch) if arch != preset.arch else preset
    return DaViTEncoder(preset, model, projection, weights_id)
