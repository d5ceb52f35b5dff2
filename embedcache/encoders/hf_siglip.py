"""Family ``hf-siglip``: SigLIP and SigLIP 2 vision towers (transformers ``SiglipVisionModel``,
``Siglip2VisionModel``).

SigLIP has no CLS token: every output token is a patch, so the grid is the whole
``last_hidden_state`` (32x32 at all four presets) and level 32 its 2x2 average pool. The global
vector is ``pooler_output``, the attention-pooling ("MAP") head, as in the reference study. A
preset loads either a full image-text checkpoint (``SiglipModel``, as on the hub: the text tower
is ignored) or a vision tower saved alone. Position embeddings are interpolated whenever the input
differs from the checkpoint's ``image_size`` (:func:`embedcache.encoders.hf_vit.forward_kwargs`).

Where the numbers come from (``config.json`` / ``preprocessor_config.json`` of each checkpoint,
as published; checked against the SigLIP papers' model tables):

* So400m towers (MedSigLIP, SigLIP 2 So400m): hidden 1152, MLP 4304, 27 layers, 16 heads,
  ``gelu_pytorch_tanh``, layer-norm eps 1e-6, attention-pool head. ViT-L (XraySigLIP): hidden
  1024, MLP 4096, 24 layers, 16 heads.
* ``google/medsiglip-448`` (gated; SigLIP So400m/14 at 448): 448 / 14 = 32x32 tokens. Processor:
  ``SiglipImageProcessor``, 448x448 square resize, resample 2 (bilinear), mean/std 0.5: what the
  reference study ran (the model's own processor). Google's serving code
  (``Google-Health/medsiglip``, ``python/serving/predictor.py``) instead zero-pads each image to a
  square ("method performed in training") and then runs ``SiglipImageProcessor`` with its class
  defaults (bicubic): preset ``medsiglip-448-pad``. Neither resample could be confirmed against
  the gated ``preprocessor_config.json`` offline; a checkpoint's own file is compared on load.
* ``google/siglip2-so400m-patch16-512``: the fixed-resolution SigLIP 2, stored as ``model_type
  siglip`` (Conv2d patch embedding, a learned 32x32 position table), so it loads with
  ``SiglipVisionModel``. Processor: ``SiglipImageProcessor``, 512x512, resample 2, mean/std 0.5.
* ``google/siglip2-so400m-patch16-naflex``: the NaFlex SigLIP 2 (``Siglip2VisionModel``: a linear
  patch embedding over flattened 16x16x3 patches, a 16x16 position table resized to each image's
  patch grid). Its processor keeps the aspect ratio under ``max_num_patches`` (256 by default). The
  preset ``siglip2-so400m-naflex-512`` feeds it a fixed 512x512 image as 32x32 = 1024 patches, no
  padding: exactly what ``Siglip2ImageProcessor(max_num_patches=1024)`` produces for a square
  image (a non-square one the processor would not stretch; here the resize policy decides).
* ``StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli``: CheXagent's vision tower, SigLIP
  ViT-L/16, used at 512 px (32x32 tokens). The reference study called it at 512 px *without*
  ``interpolate_pos_encoding``, which transformers only accepts when the checkpoint's position
  table already has 32x32 entries: its ``image_size`` is taken as 512 (the "384" is the name of
  the WebLI initialisation). If a checkpoint says 384, the table is interpolated and a warning
  names the difference. Preprocessing as the study's: a 512x512 bicubic resize; mean/std 0.5
  unless the checkpoint's ``preprocessor_config.json`` says otherwise (the study read them from
  it at run time: ``options["preprocessing_from_checkpoint"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embedcache.encoders.base import EncoderPreset, Interpolation, Preprocessing, ResizePolicy
from embedcache.encoders.hf_generic import published_processor
from embedcache.encoders.hf_loading import load_checked
from embedcache.encoders.hf_vit import HFViTEncoder
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_preset,
)

FAMILY = "hf-siglip"

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionTower:
    """How one vision ``model_type`` is built and which checkpoints it loads.

    Attributes:
        model_class: the transformers class (never an Auto class).
        accepts: ``config.json`` model types it loads: the image-text model and the tower alone.
        checked_fields: config fields whose difference from the preset is logged.
        naflex: the model takes flattened patches (SigLIP 2 NaFlex), not an image.
    """

    model_class: str
    accepts: frozenset[str]
    checked_fields: tuple[str, ...]
    naflex: bool = False


#: The preset's ``arch["model_type"]`` -> the tower to build.
TOWERS = {
    "siglip_vision_model": VisionTower(
        "SiglipVisionModel",
        frozenset({"siglip", "siglip_vision_model"}),
        ("hidden_size", "num_hidden_layers", "patch_size", "image_size"),
    ),
    "siglip2_vision_model": VisionTower(
        "Siglip2VisionModel",
        frozenset({"siglip2", "siglip2_vision_model"}),
        ("hidden_size", "num_hidden_layers", "patch_size", "num_patches"),
        naflex=True,
    ),
}

#: (hidden, MLP, layers, heads) of the released towers.
SO400M = (1152, 4304, 27, 16)
VIT_LARGE = (1024, 4096, 24, 16)


def siglip_arch(
    size: tuple[int, int, int, int],
    patch_size: int,
    *,
    image_size: int | None = None,
    num_patches: int | None = None,
) -> dict[str, Any]:
    """``vision_config`` fields of a released SigLIP (``image_size``) or SigLIP 2 NaFlex
    (``num_patches``: the side of its position table, squared) tower."""
    hidden, mlp, layers, heads = size
    arch: dict[str, Any] = {
        "model_type": "siglip2_vision_model" if num_patches else "siglip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_channels": 3,
        "patch_size": patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": True,
    }
    if num_patches:
        arch["num_patches"] = num_patches
    else:
        arch["image_size"] = image_size
    return arch


def _register(
    *,
    name: str,
    source: str,
    arch: dict[str, Any],
    size: int,
    interpolation: Interpolation,
    description: str,
    license: str,
    resize: ResizePolicy = "resize",
    options: dict[str, Any] | None = None,
) -> None:
    """Register a SigLIP preset: its processor stretches (or pads, then stretches) to ``size``
    x ``size`` with mean/std 0.5, and the global vector is the attention-pool head's
    ``pooler_output``."""
    register_preset(
        EncoderPreset(
            name=name,
            family=FAMILY,
            source=source,
            preprocessing=Preprocessing(size, SIGLIP_MEAN, SIGLIP_STD, resize, interpolation),
            arch=arch,
            description=description,
            license=license,
            options={"global": "pooler", **(options or {})},
        )
    )


_register(
    name="medsiglip-448",
    source="google/medsiglip-448",
    arch=siglip_arch(SO400M, 14, image_size=448),
    size=448,
    interpolation="bilinear",
    description="MedSigLIP: SigLIP So400m/14 tuned on medical images (gated), 448 px; "
    "grid 32x32x1152 (stride 14)",
    license="Health AI Developer Foundations terms of use (gated: accept on the model page)",
)
_register(
    name="medsiglip-448-pad",
    source="google/medsiglip-448",
    arch=siglip_arch(SO400M, 14, image_size=448),
    size=448,
    interpolation="bicubic",
    resize="pad",
    description="MedSigLIP as Google's serving code feeds it: zero-padded to a square, then a "
    "448 px bicubic resize; grid 32x32x1152 (stride 14)",
    license="Health AI Developer Foundations terms of use (gated: accept on the model page)",
)
_register(
    name="siglip2-so400m-512",
    source="google/siglip2-so400m-patch16-512",
    arch=siglip_arch(SO400M, 16, image_size=512),
    size=512,
    interpolation="bilinear",
    description="SigLIP 2 So400m/16, fixed resolution, 512 px; grid 32x32x1152",
    license="Apache-2.0",
)
_register(
    name="siglip2-so400m-naflex-512",
    source="google/siglip2-so400m-patch16-naflex",
    arch=siglip_arch(SO400M, 16, num_patches=256),
    size=512,
    interpolation="bilinear",
    description="SigLIP 2 So400m/16 NaFlex fed a fixed 512x512 image (1024 patches); "
    "grid 32x32x1152",
    license="Apache-2.0",
)
_register(
    name="chexagent",
    source="StanfordAIMI/XraySigLIP__vit-l-16-siglip-384__webli",
    arch=siglip_arch(VIT_LARGE, 16, image_size=512),
    size=512,
    interpolation="bicubic",
    description="CheXagent's vision tower (XraySigLIP, SigLIP ViT-L/16), 512 px; grid 32x32x1024",
    license="see the model page",
    options={"preprocessing_from_checkpoint": ("mean", "std")},
)


class NaFlexFixedGrid(nn.Module):
    """A SigLIP 2 NaFlex model fed whole images: ``(B, 3, H, W)`` is cut into the processor's
    flattened patches (row-major, each patch ``(p, p, C)``), all attended, none padded; the
    position table is resized to the ``(H/p, W/p)`` grid by the model itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        batch, channels, height, width = pixel_values.shape
        p = int(self.config.patch_size)
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a whole number of {p} px patches")
        h, w = height // p, width // p
        patches = (
            pixel_values.reshape(batch, channels, h, p, w, p)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(batch, h * w, p * p * channels)
        )
        shapes = torch.tensor([[h, w]] * batch, device=pixel_values.device)
        # No padding: no mask (what transformers makes of the processor's all-ones mask anyway).
        return self.model(
            pixel_values=patches, pixel_attention_mask=None, spatial_shapes=shapes, **kwargs
        )


@register_family(FAMILY, published=published_processor)
def build_siglip(
    preset: EncoderPreset, source: WeightsSource, options: LoadOptions
) -> HFViTEncoder:
    """Build a SigLIP / SigLIP 2 preset from random init, a local folder or the hub."""
    import transformers

    tower = TOWERS[preset.arch["model_type"]]
    model_cls = getattr(transformers, tower.model_class)
    model, weights_id = load_checked(
        model_cls,
        preset.arch,
        source,
        options,
        accepts=tower.accepts,
        checked_fields=tower.checked_fields,
    )
    if tower.naflex:
        model = NaFlexFixedGrid(model)
    return HFViTEncoder(preset, model, weights_id, expected_prefix=0)
