"""SegFormer's own segmentation head, for the reference study's end-to-end SegFormer baseline.

The reference trained ``SegformerForSemanticSegmentation`` (its all-MLP decode head over the
four encoder stages) with two classes. Here the encoder is the ``segformer-b4`` preset (its
sealed ``forward`` normalises, as at extraction) and this head is transformers' own
``SegformerDecodeHead``, fed with the four stage maps the encoder computes anyway (read off the
wrapped ``SegformerModel``'s output by a forward hook; the adapter exposes only the stride-16 and
stride-32 stages). Its weights come from the checkpoint's ``decode_head`` when it has one, the
classifier resized to the task's classes (``from_pretrained(..., ignore_mismatched_sizes=True)``,
as one fine-tunes a SegFormer); otherwise, and for random encoder weights, it is initialised from
the run's seed.

Logits are at stride 4 (128 x 128 at 512 px: the default mask size, 4x grid16); for two classes
the head returns the logit difference, which the segmentation loss and scoring expect, upsampled
bilinearly (``align_corners=False``, as transformers upsamples SegFormer logits) to the mask size
when that differs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SegformerDecodeHead(nn.Module):
    """SegFormer's decode head on a ``segformer`` family encoder.

    Args:
        encoder: an encoder wrapping a transformers ``SegformerModel`` as ``encoder.model``.
        n_classes: output classes.
        mask_shape: ``(H, W)`` of the returned scores.
        seed: initialisation of whatever the checkpoint does not provide.

    Attributes:
        decode: transformers' ``SegformerDecodeHead``.
        weights_from: ``checkpoint`` when the decode head (all but its classifier) was loaded,
            else ``random``.
    """

    def __init__(self, encoder: Any, n_classes: int, mask_shape: tuple[int, int], seed: int):
        super().__init__()
        from transformers import SegformerModel

        model = getattr(encoder, "model", None)
        if not isinstance(model, SegformerModel):
            raise ValueError(
                f"the segformer head needs a SegFormer encoder (the hf-segformer family), not "
                f"{encoder.preset.name} ({encoder.preset.family}); use the linear head"
            )
        self.mask_shape = tuple(mask_shape)
        self.binary = n_classes == 2
        self.decode, self.weights_from = _decode_head(model, encoder.weights_id, n_classes, seed)
        self._stages: tuple[torch.Tensor, ...] | None = None
        model.register_forward_hook(self._capture)

    def _capture(self, _module, _inputs, output) -> None:
        self._stages = tuple(output.hidden_states)

    def forward(self, features: Any) -> torch.Tensor:
        """Scores ``(B, 1 | K, H, W)`` from the four stages of the encoder pass that produced
        ``features`` (which must come from this head's encoder, just before)."""
        stages, self._stages = self._stages, None
        if stages is None or len(stages) != 4 or stages[-1].shape[0] != len(features.embedding):
            raise RuntimeError("the segformer head runs right after its own encoder's forward")
        logits = self.decode(list(stages))
        if self.binary:
            logits = logits[:, 1:] - logits[:, :1]
        if tuple(logits.shape[-2:]) != self.mask_shape:
            logits = F.interpolate(
                logits.float(), size=self.mask_shape, mode="bilinear", align_corners=False
            )
        return logits.float()


def _decode_head(
    model: Any, weights_id: dict[str, Any], n_classes: int, seed: int
) -> tuple[nn.Module, str]:
    from transformers import SegformerForSemanticSegmentation
    from transformers.models.segformer.modeling_segformer import (
        SegformerDecodeHead as HFDecodeHead,
    )

    location = weights_id.get("local") or weights_id.get("hub")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if location:
            full, info = SegformerForSemanticSegmentation.from_pretrained(
                location,
                num_labels=n_classes,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
            missing = [k for k in info.get("missing_keys", ()) if "decode_head" in k]
            mismatched = {k for k, *_ in info.get("mismatched_keys", ())}
            loaded = not [k for k in missing if k not in mismatched and "classifier" not in k]
            return full.decode_head, "checkpoint" if loaded else "random"
        config = copy.deepcopy(model.config)
        config.num_labels = n_classes
        return HFDecodeHead(config), "random"
