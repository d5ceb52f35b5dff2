"""The adapter for plain (single-scale) Hugging Face ViTs: DINOv2, SigLIP, CLIP, ViT, DeiT, ...

All of them return ``last_hidden_state`` = ``[prefix tokens..., patch tokens...]``, where the prefix
is the CLS token, distillation or register tokens, or nothing (SigLIP). The prefix length is
measured once (one tiny forward pass at build time) as ``seq_len - (S/p)^2``, so no model needs its
own token bookkeeping, and it is checked again on every batch.

Grids: level 16 is the token grid (stride = the patch size, e.g. 14), level 32 its 2x2 average pool
(stride 2p). The grid's side is read from the tokens the model returns at the preset's input size
(one forward on the meta device at build time). The global vector is, per the preset's ``options["global"]``:

* ``pooler``: the model's ``pooler_output`` (DINOv2: the layer-normed CLS; SigLIP: the attention
  pooling head; CLIP: the post-layernormed CLS);
* ``cls``: the first token of ``last_hidden_state``;
* ``mean``: the mean of the patch tokens.

Taps (:meth:`~embedcache.encoders.base.Encoder.set_taps`): the class token of a block's output
after the model's final norm (:data:`FINAL_NORMS`), or the mean of its normed patch tokens where
the model has no class token. For DINOv2 the last block's tap is ``pooler_output``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import torch
from torch import nn

from embedcache.encoders._shapes import dry_run
from embedcache.encoders.base import Encoder, EncoderPreset, Features, GridSpec, pool_grid

GlobalSource = Literal["pooler", "cls", "mean"]
GLOBAL_SOURCES: tuple[str, ...] = ("pooler", "cls", "mean")


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """Extra forward arguments: ask models that can interpolate position embeddings to do so
    (SigLIP, CLIP, ViT refuse other input sizes otherwise; DINOv2 always interpolates)."""
    params = inspect.signature(model.forward).parameters
    return {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}


def patch_size_of(config: Any) -> int:
    """The square patch side of a ViT config."""
    p = config.patch_size
    if isinstance(p, list | tuple):
        if len(set(p)) != 1:
            raise ValueError(f"non-square patches {p} are not supported")
        p = p[0]
    return int(p)


#: Where Hugging Face vision models keep the norm after their last block (DINOv2 and ViT
#: ``layernorm``, DINOv3 ``norm``, SigLIP and CLIP ``post_layernorm``), as module paths, also
#: under a wrapper's ``model.`` (NaFlex). A tap is normed with it, as the last block's tokens are.
FINAL_NORMS = tuple(
    f"{wrapper}{name}"
    for wrapper in ("", "model.")
    for name in ("layernorm", "norm", "post_layernorm", "vision_model.post_layernorm")
)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The model's norm after its last block (:data:`FINAL_NORMS`), or None if it has none."""
    for path in FINAL_NORMS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def probe_tokens(model: nn.Module, patch: int) -> tuple[int, int | None]:
    """One forward pass on a 2x2-patch input: ``(prefix token count, pooler_output dim or None)``."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, 2 * patch, 2 * patch, device=param.device, dtype=param.dtype)
    with torch.inference_mode():
        out = model(pixel_values=x, **forward_kwargs(model))
    prefix = out.last_hidden_state.shape[1] - 4
    pooled = getattr(out, "pooler_output", None)
    return prefix, (None if pooled is None else int(pooled[0].numel()))


class HFViTEncoder(Encoder):
    """A Hugging Face ViT-like vision model behind the adapter contract.

    Args:
        preset: the preset; ``options["global"]`` picks the global vector (see module doc).
        model: the transformers model (``Dinov2Model``, ``SiglipVisionModel``, ...).
        weights_id: identity of the weights (see :mod:`embedcache.encoders.hf_loading`).
        expected_prefix: if given, the prefix token count the family knows it must have (1 + the
            registers for DINOv2); a different measured count is an error, not a silent shift.
    """

    adapter_version = "1"

    def __init__(
        self,
        preset: EncoderPreset,
        model: nn.Module,
        weights_id: dict[str, Any],
        *,
        expected_prefix: int | None = None,
    ) -> None:
        super().__init__()
        self.preset = preset
        self.model = model.eval()
        self.weights_id = weights_id
        self.global_source: str = preset.options.get("global", "pooler")
        if self.global_source not in GLOBAL_SOURCES:
            raise ValueError(f"options['global'] must be one of {GLOBAL_SOURCES}")
        self.patch_size = patch_size_of(model.config)
        self._forward_kwargs = forward_kwargs(model)

        self.prefix_tokens, pooler_dim = probe_tokens(model, self.patch_size)
        if expected_prefix is not None and self.prefix_tokens != expected_prefix:
            raise RuntimeError(
                f"{type(model).__name__} returned {self.prefix_tokens} non-patch tokens, "
                f"expected {expected_prefix}"
            )
        if self.prefix_tokens < 0:
            raise RuntimeError(f"{type(model).__name__} returned fewer tokens than patches")
        if self.global_source == "pooler" and pooler_dim is None:
            raise ValueError(f"{type(model).__name__} has no pooler_output; use 'cls' or 'mean'")
        if self.global_source == "cls" and self.prefix_tokens == 0:
            raise ValueError(f"{type(model).__name__} has no CLS token; use 'pooler' or 'mean'")

        size = preset.preprocessing.input_size
        tokens = dry_run(
            model, lambda x: model(pixel_values=x, **self._forward_kwargs).last_hidden_state, size
        )
        patches, channels = tokens.shape[1] - self.prefix_tokens, int(tokens.shape[-1])
        side = math.isqrt(patches)
        if side * side != patches:
            raise RuntimeError(
                f"{type(model).__name__} returned {patches} patch tokens at {size} px"
            )
        if side < 2:
            raise ValueError(
                f"input size {size} gives fewer than 2x2 patches of {self.patch_size} px"
            )
        self.global_dim = pooler_dim if self.global_source == "pooler" else channels
        self.tap_dim = channels
        self._final_norm = final_norm(model)
        self.grid_specs = {
            16: GridSpec(self.patch_size, (side, side, channels)),
            32: GridSpec(2 * self.patch_size, (side // 2, side // 2, channels)),
        }

    def encode(self, pixels: torch.Tensor) -> Features:
        """Normalised ``(B, 3, S, S)`` -> global ``(B, D)``, grids ``(B, S/p, S/p, C)`` and its
        2x2 pool, float32, channels-last."""
        batch, _, height, width = pixels.shape
        h, w = height // self.patch_size, width // self.patch_size
        kwargs = {**self._forward_kwargs, **({"output_hidden_states": True} if self.taps else {})}
        out = self.model(pixel_values=pixels, **kwargs)
        tokens = out.last_hidden_state
        prefix = tokens.shape[1] - h * w
        if prefix != self.prefix_tokens:
            raise RuntimeError(
                f"expected {self.prefix_tokens} prefix tokens before the {h}x{w} patch tokens, "
                f"got {prefix} (sequence length {tokens.shape[1]})"
            )
        patches = tokens[:, prefix:]
        grid16 = patches.reshape(batch, h, w, tokens.shape[-1]).float().contiguous()
        if self.global_source == "pooler":
            embedding = out.pooler_output.reshape(batch, -1)
        elif self.global_source == "cls":
            embedding = tokens[:, 0]
        else:
            embedding = patches.mean(dim=1)
        return Features(
            embedding=embedding.float().contiguous(),
            grids={16: grid16, 32: pool_grid(grid16)},
            taps={b: self._tap(out.hidden_states[b + 1]) for b in self.taps},
        )

    def tap_blocks(self) -> int:
        """The transformer's blocks (``num_hidden_layers``): every one can be tapped."""
        return int(self.model.config.num_hidden_layers)

    def _tap(self, hidden: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, N, C)`` -> ``(B, C)``: the model's final norm, then the class token
        (the first), or the mean of the patch tokens where there is none (SigLIP)."""
        normed = self._final_norm(hidden) if self._final_norm is not None else hidden
        pooled = normed[:, 0] if self.prefix_tokens else normed.mean(dim=1)
        return pooled.float().contiguous()
