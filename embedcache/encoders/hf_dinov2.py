"""Family ``hf-dinov2``: transformers ``Dinov2Model`` and ``Dinov2WithRegistersModel``.

Presets are data (below). ``arch`` holds the real checkpoints' ``config.json`` fields, so
``--weights none`` builds the true architecture offline. Preprocessing follows each checkpoint's
``preprocessor_config.json`` (a ``BitImageProcessor``):

* ``microsoft/rad-dino``: shortest edge 518, centre crop 518, bicubic (resample 3),
  mean 0.5307, std 0.2583 on every channel -> grid 37x37x768 (stride 14), pooled 18x18 (stride 28).
* ``facebook/dinov2-*`` (with or without registers): shortest edge 256, centre crop 224, bicubic,
  ImageNet mean/std -> grid 16x16 (stride 14), pooled 8x8 (stride 28).

The global vector is ``pooler_output``: the final-layer-normed CLS token. Register tokens sit
between the CLS and the patch tokens and are dropped before the grid.
"""

from __future__ import annotations

from typing import Any

from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, Preprocessing
from embedcache.encoders.hf_generic import published_processor
from embedcache.encoders.hf_loading import load_checked
from embedcache.encoders.hf_vit import HFViTEncoder
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_preset,
)

FAMILY = "hf-dinov2"
#: Architecture fields compared between a preset and the checkpoint loaded under its name.
_CHECKED_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "num_register_tokens")

#: model_type -> the concrete transformers class (AutoBackbone may reject local folders).
MODEL_CLASSES = {
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
}

#: RAD-DINO's processor normalisation (its preprocessor_config.json), the same on all channels.
RAD_DINO_MEAN = (0.5307, 0.5307, 0.5307)
RAD_DINO_STD = (0.2583, 0.2583, 0.2583)

#: The facebook/dinov2-* processor: shorter side 256, then a 224 centre crop, ImageNet mean/std.
DINOV2_PREPROCESSING = Preprocessing(
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    resize="crop",
    interpolation="bicubic",
    resize_to=256,
)


def dinov2_arch(
    hidden_size: int, num_hidden_layers: int, num_attention_heads: int, num_register_tokens: int = 0
) -> dict[str, Any]:
    """``config.json`` fields of a released DINOv2 ViT (patch 14, trained at 518 px)."""
    arch: dict[str, Any] = {
        "model_type": "dinov2_with_registers" if num_register_tokens else "dinov2",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": 518,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "drop_path_rate": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
    }
    if num_register_tokens:
        arch["num_register_tokens"] = num_register_tokens
    return arch


_SIZES = {  # name -> (hidden, layers, heads)
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

register_preset(
    EncoderPreset(
        name="rad-dino",
        family=FAMILY,
        source="microsoft/rad-dino",
        preprocessing=Preprocessing(
            input_size=518,
            mean=RAD_DINO_MEAN,
            std=RAD_DINO_STD,
            resize="crop",
            interpolation="bicubic",
        ),
        arch=dinov2_arch(768, 12, 12),
        description="RAD-DINO: DINOv2 ViT-B/14 trained on chest X-rays, 518 px; grid 37x37x768",
        license="MSRLA (Microsoft Research License Agreement)",
        options={"global": "pooler"},
    )
)

for _size, (_hidden, _layers, _heads) in _SIZES.items():
    register_preset(
        EncoderPreset(
            name=f"dinov2-{_size}",
            family=FAMILY,
            source=f"facebook/dinov2-{_size}",
            preprocessing=DINOV2_PREPROCESSING,
            arch=dinov2_arch(_hidden, _layers, _heads),
            description=f"DINOv2 ViT-{_size[0].upper()}/14 (natural images), 224 px; "
            f"grid 16x16x{_hidden}",
            license="Apache-2.0",
            options={"global": "pooler"},
        )
    )
    register_preset(
        EncoderPreset(
            name=f"dinov2-with-registers-{_size}",
            family=FAMILY,
            source=f"facebook/dinov2-with-registers-{_size}",
            preprocessing=DINOV2_PREPROCESSING,
            arch=dinov2_arch(_hidden, _layers, _heads, num_register_tokens=4),
            description=f"DINOv2 ViT-{_size[0].upper()}/14 with 4 registers, 224 px; "
            f"grid 16x16x{_hidden}",
            license="Apache-2.0",
            options={"global": "pooler"},
        )
    )


@register_family(FAMILY, published=published_processor)
def build_dinov2(
    preset: EncoderPreset, source: WeightsSource, options: LoadOptions
) -> HFViTEncoder:
    """Build a DINOv2 preset from random init, a local folder or the hub."""
    import transformers

    model_type = preset.arch["model_type"]
    model_cls = getattr(transformers, MODEL_CLASSES[model_type])
    model, weights_id = load_checked(
        model_cls,
        preset.arch,
        source,
        options,
        accepts={model_type},
        checked_fields=_CHECKED_FIELDS,
    )
    registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
    return HFViTEncoder(preset, model, weights_id, expected_prefix=1 + registers)
