"""Family ``hf-segformer``: the hierarchical Mix Transformer (MiT) encoder of SegFormer
(transformers ``SegformerModel``, without the decode head).

The encoder has four stages at strides 4, 8, 16 and 32. The grids are the native stages, not
pools: level 16 is stage 3, level 32 stage 4, each after its own layer norm, channels-last; their
shapes are what the stages return at the preset's input (one forward on the meta device at build
time). The global vector is the mean of the stride-32 map, which is what
``SegformerForImageClassification`` (the reference study's classification variant) feeds its
linear head. A preset loads the encoder
out of a full ``SegformerForSemanticSegmentation`` / ``...ForImageClassification`` checkpoint (the
decode or classification head is ignored) or out of a ``SegformerModel`` saved alone.

Where the numbers come from (``config.json`` and ``preprocessor_config.json`` of
``nvidia/segformer-b4-finetuned-ade-512-512``, and the MiT-B4 row of the SegFormer paper's
Table 6): hidden sizes [64, 128, 320, 512], depths [3, 8, 27, 3], heads [1, 2, 5, 8], reduction
ratios [8, 4, 2, 1], overlapping patch embeddings 7/4 then 3/2, MLP ratio 4, layer-norm eps 1e-6.
Processor (``SegformerImageProcessor``): ``size`` 512 (a 512x512 resize, aspect not kept),
resample 2 (bilinear), ImageNet mean/std. At 512 px: stage 3 is 32x32x320, stage 4 16x16x512.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from embedcache.encoders._shapes import dry_run
from embedcache.encoders.base import (
    GRID_LEVELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderPreset,
    Features,
    GridSpec,
    Preprocessing,
)
from embedcache.encoders.hf_generic import published_processor
from embedcache.encoders.hf_loading import load_checked
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_preset,
)

FAMILY = "hf-segformer"

MIT_B4_ARCH: dict[str, Any] = {
    "model_type": "segformer",
    "num_channels": 3,
    "num_encoder_blocks": 4,
    "depths": [3, 8, 27, 3],
    "sr_ratios": [8, 4, 2, 1],
    "hidden_sizes": [64, 128, 320, 512],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "mlp_ratios": [4, 4, 4, 4],
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "drop_path_rate": 0.1,
    "layer_norm_eps": 1e-6,
    "decoder_hidden_size": 768,
    "reshape_last_stage": True,
    "initializer_range": 0.02,
}

register_preset(
    EncoderPreset(
        name="segformer-b4",
        family=FAMILY,
        source="nvidia/segformer-b4-finetuned-ade-512-512",
        preprocessing=Preprocessing(512, IMAGENET_MEAN, IMAGENET_STD, "resize", "bilinear"),
        arch=MIT_B4_ARCH,
        description="SegFormer MiT-B4 encoder (ADE20k 512 fine-tune), 512 px; stride 16: "
        "32x32x320, stride 32: 16x16x512",
        license="NVIDIA Source Code License for SegFormer (non-commercial; see the model page)",
        options={"global": "mean"},
    )
)


def stage_strides(config: Any) -> list[int]:
    """Cumulative pixel stride of each stage (4, 8, 16, 32 for MiT): the product of the
    overlapping patch embeddings' strides."""
    strides, stride = [], 1
    for step in config.strides:
        stride *= int(step)
        strides.append(stride)
    return strides


class HFStagesEncoder(Encoder):
    """A Hugging Face hierarchical encoder (``SegformerModel``) behind the adapter contract.

    Level 16 and level 32 are the stages whose stride is 16 and 32; an architecture without such
    a stage is refused at build time rather than probed at another scale.
    """

    adapter_version = "1"

    def __init__(self, preset: EncoderPreset, model: nn.Module, weights_id: dict[str, Any]):
        super().__init__()
        self.preset = preset
        self.model = model.eval()
        self.weights_id = weights_id
        config = model.config
        strides = stage_strides(config)
        missing = [level for level in GRID_LEVELS if level not in strides]
        if missing:
            raise ValueError(
                f"{type(model).__name__} has stages at strides {strides}, not {missing}"
            )
        self.stage_index = {level: strides.index(level) for level in GRID_LEVELS}
        size = preset.preprocessing.input_size
        maps = dry_run(
            model, lambda x: model(pixel_values=x, output_hidden_states=True).hidden_states, size
        )
        self.grid_specs = {}
        for level, i in self.stage_index.items():
            _, channels, h, w = maps[i].shape  # what the stage returns at the preset's size
            self.grid_specs[level] = GridSpec(level, (int(h), int(w), int(channels)))
        self.global_dim = self.grid_specs[32].shape[2]

    def encode(self, pixels: torch.Tensor) -> Features:
        """Normalised ``(B, 3, S, S)`` -> the stride-16 and stride-32 stage maps channels-last,
        and the mean of the stride-32 map ``(B, C32)``, float32."""
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        grids = {}
        for level, index in self.stage_index.items():
            stage = out.hidden_states[index]
            expected = (pixels.shape[0], self.grid_specs[level].shape[2])
            if stage.ndim != 4 or tuple(stage.shape[:2]) != expected:
                raise RuntimeError(
                    f"stage {index + 1} returned {tuple(stage.shape)}, expected (B, C, h, w) with "
                    f"(B, C) = {expected}"
                )
            grids[level] = stage.permute(0, 2, 3, 1).float().contiguous()
        return Features(embedding=grids[32].mean(dim=(1, 2)), grids=grids)


@register_family(FAMILY, published=published_processor)
def build_segformer(
    preset: EncoderPreset, source: WeightsSource, options: LoadOptions
) -> HFStagesEncoder:
    """Build a SegFormer encoder preset from random init, a local folder or the hub."""
    from transformers import SegformerModel

    model, weights_id = load_checked(
        SegformerModel,
        preset.arch,
        source,
        options,
        accepts={"segformer"},
        checked_fields=("hidden_sizes", "depths"),
    )
    return HFStagesEncoder(preset, model, weights_id)
