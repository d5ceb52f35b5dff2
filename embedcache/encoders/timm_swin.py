"""Family ``ark``: Ark+ (Swin-Large at 768 px, jlianglab/Ark), as the reference study ran it.

The study built timm 0.5.4's ``SwinTransformer(img_size=768, patch_size=4, window_size=12,
embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), num_classes=0)`` and loaded the
``teacher`` weights of ``Ark6_swinLarge768_ep50.pth.tar``. Here the same architecture is timm's
``swin_large_patch4_window12_384`` built at ``img_size=768`` (stage maps 192, 96, 48, 24; window
12 divides all four), and the old (0.5.4) checkpoint layout is converted on load by timm's own
Swin ``checkpoint_filter_fn`` (patch merging moved from the end of stage i to the start of stage
i + 1, ``head.`` -> ``head.fc.``, non-persistent ``relative_position_index``/``attn_mask``
buffers dropped).

* grid level 16: the output of stage 3 (48x48x768), the study's hook on
  ``layers[2].blocks[17]`` in the 0.5.4 layout, where patch merging follows the blocks;
* grid level 32: the final stage after the final LayerNorm (24x24x1536), the study's hook on
  ``model.norm``;
* global vector: the mean of the normed final tokens (1536), what ``model(x)`` returned with
  ``num_classes=0``. Preset ``ark-plus-projector`` applies the checkpoint's projector head
  (Linear 1536 -> 1376 in the release) on top; the study did not.

The checkpoint is a file (``.pth.tar`` via ``torch.load(weights_only=True)``, or safetensors),
its state dict nested under ``teacher`` (preferred, the published model), ``state_dict`` or
``model``, ``module.`` prefixes stripped. Its Swin shape (embed dim, depths, heads, window, MLP
ratio) is read from the tensors, so a checkpoint of another Swin size loads with a warning.
Preprocessing: the study's ``Resize((768, 768), bicubic)`` and ImageNet mean/std.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from embedcache.encoders._weights import (
    CheckpointError,
    build_seeded,
    load_exact,
    local_identity,
    read_checkpoint,
)
from embedcache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderPreset, Preprocessing
from embedcache.encoders.hub import WeightsUnavailableError
from embedcache.encoders.registry import (
    LoadOptions,
    WeightsSource,
    register_family,
    register_preset,
)
from embedcache.encoders.timm_generic import (
    TimmEncoder,
    checkpoint_path,
    create_timm,
    published_timm_config,
    timm_filter,
)

log = logging.getLogger(__name__)

FAMILY = "ark"
#: The Swin fields read from a checkpoint and passed to ``timm.create_model``.
SWIN_FIELDS = ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")

ARK_PLUS_ARCH: dict[str, Any] = {
    "model_name": "swin_large_patch4_window12_384",
    "img_size": 768,
    "patch_size": 4,
    "window_size": 12,
    "embed_dim": 192,
    "depths": [2, 2, 18, 2],
    "num_heads": [6, 12, 24, 48],
    "mlp_ratio": 4.0,
    "projector_features": 1376,
}
ARK_PLUS_SOURCE = "Ark6_swinLarge768_ep50.pth.tar (on request: github.com/jlianglab/Ark)"
ARK_PLUS_PREPROCESSING = Preprocessing(
    input_size=768, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="resize", interpolation="bicubic"
)

for _name, _projector in (("ark-plus", False), ("ark-plus-projector", True)):
    register_preset(
        EncoderPreset(
            name=_name,
            family=FAMILY,
            source=ARK_PLUS_SOURCE,
            preprocessing=ARK_PLUS_PREPROCESSING,
            arch=ARK_PLUS_ARCH,
            description="Ark+ Swin-L (chest X-ray, 6 datasets), 768 px; grids 48x48x768 (s16), "
            + "24x24x1536 (s32); global "
            + ("projector 1376" if _projector else "pooled stage 4, 1536"),
            license="Ark+ terms (weights by request from jlianglab)",
            options={"projector": _projector},
        )
    )


def swin_arch_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The Swin shape stored in a (timm 0.5.4 or current) Swin state dict."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError("no patch_embed.proj.weight: not a Swin Transformer checkpoint")
    patch = state["patch_embed.proj.weight"]
    depths: dict[int, int] = {}
    for key in state:
        match = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), block + 1)
    if not depths or sorted(depths) != list(range(len(depths))):
        raise CheckpointError(f"Swin stages found: {sorted(depths)}; expected 0..n-1")
    tables = [
        state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in sorted(depths)
    ]
    side = math.isqrt(tables[0].shape[0])
    embed_dim = int(patch.shape[0])
    return {
        "patch_size": int(patch.shape[-1]),
        "embed_dim": embed_dim,
        "depths": [depths[i] for i in sorted(depths)],
        "num_heads": [int(t.shape[1]) for t in tables],
        "window_size": (side + 1) // 2,
        "mlp_ratio": state["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }


def ark_projector(state: Mapping[str, torch.Tensor] | None, arch: Mapping[str, Any]) -> nn.Module:
    """Ark's projector: ``Linear`` (``projector.weight``) or ``Linear-ReLU-Linear``
    (``projector.0/2``, Ark's ``use_mlp``); randomly initialised from ``arch`` when ``state`` is
    ``None``."""
    if state is None:
        width = arch["embed_dim"] * 2 ** (len(arch["depths"]) - 1)
        return nn.Linear(width, arch["projector_features"])
    if "projector.weight" in state:
        out_dim, in_dim = state["projector.weight"].shape
        head: nn.Module = nn.Linear(in_dim, out_dim)
    elif "projector.0.weight" in state:
        out_dim, in_dim = state["projector.0.weight"].shape
        head = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
    else:
        raise CheckpointError(
            "the checkpoint has no projector (projector.weight): use the preset ark-plus"
        )
    sub = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
    load_exact(head, sub, source="checkpoint", what="the Ark projector")
    return head.eval()


def _out_features(head: nn.Module) -> int:
    last = head if isinstance(head, nn.Linear) else head[-1]
    return int(last.out_features)


@register_family(FAMILY, published=published_timm_config)
def build_ark(preset: EncoderPreset, source: WeightsSource, options: LoadOptions) -> TimmEncoder:
    """Build Ark+ from random init (``--weights none``) or an Ark checkpoint file."""
    arch = dict(preset.arch)
    model_name = arch["model_name"]
    want_projector = bool(preset.options.get("projector", False))
    if source.kind == "hub":
        raise WeightsUnavailableError(
            f"{preset.name}: the Ark+ weights are not on a model hub ({ARK_PLUS_SOURCE}). Request "
            "them from the authors and pass the file with --weights FILE; to test the pipeline "
            "only, --weights none (random weights; the numbers mean nothing)."
        )
    if source.kind == "none":
        kwargs = {k: arch[k] for k in ("img_size", *SWIN_FIELDS)}

        def parts() -> nn.ModuleDict:
            built = nn.ModuleDict({"swin": create_timm(model_name, kwargs)})
            if want_projector:
                built["projector"] = ark_projector(None, arch)
            return built

        built = build_seeded(parts, source.seed)
        weights_id: dict[str, Any] = {"random_init": source.seed, "arch": arch}
        swin, head = built["swin"], built["projector"] if want_projector else None
    else:
        path = checkpoint_path(source.location)
        state, wrapper = read_checkpoint(path)
        found = swin_arch_from_state(state)
        differs = {k: (arch[k], found[k]) for k in SWIN_FIELDS if arch.get(k) != found[k]}
        if differs:
            log.warning(
                "%s differs from preset %s in %s (preset, checkpoint); using the checkpoint's",
                path,
                preset.name,
                differs,
            )
        swin = create_timm(model_name, {"img_size": arch["img_size"], **found})
        load_exact(swin, timm_filter(swin, state), source=str(path), what="the Ark+ Swin")
        head = ark_projector(state, arch) if want_projector else None
        weights_id = local_identity([path], entry=wrapper)
    head_dim = _out_features(head) if head is not None else None
    return TimmEncoder(preset, swin, weights_id, head=head, head_dim=head_dim)
