"""A lean DaViT (Dual Attention Vision Transformer) image encoder, as used by MedImageInsight.

Architecture sources (read, not copied; MIT-licensed):

* Ding et al., "DaViT: Dual Attention Vision Transformers", ECCV 2022 (arXiv 2204.03645): four
  stages, each a convolutional patch embedding followed by pairs of a spatial-window attention
  block and a channel ("group") attention block, depth-wise 3x3 convolutions before attention and
  MLP (conditional position encoding).
* The MedImageInsight release (Hugging Face ``lion-ai/MedImageInsights``, MIT; mirrored on
  GitHub, e.g. ``visual-layer/MedImageInsight``): ``MedImageInsight/ImageEncoder/davit_v1.py``
  (the Florence/UniCL DaViT code), ``MedImageInsight/UniCLModel.py`` (``image_projection``,
  ``encode_image``) and ``2024.09.27/config.yaml`` (the image encoder's configuration).

This module reproduces ``davit_v1.DaViT`` at inference with the same parameter names, so the
published image-encoder weights load unchanged: ``convs.{i}.proj|norm``,
``blocks.{i}.{j}.spatial_block.{conv1.fn.dw, window_attn.norm, window_attn.fn.qkv|proj, conv2.fn.dw,
ffn.norm, ffn.fn.net.fc1|fc2}``, the same under ``channel_block`` with ``channel_attn``, and
``norms``. Faithful details: windows are padded bottom/right with zeros after the pre-norm and
the padded tokens take part in attention unmasked; channel attention scales by ``N ** -0.5``
(N = tokens, "dynamic scale"); the global feature is the token mean followed by ``norms``.
Differences that do not change the numbers beyond float rounding: tokens are kept channels-last
``(B, H, W, C)``, and attention runs through ``scaled_dot_product_attention``. Not implemented:
drop path and gradient checkpointing (training only), the muP parametrisation
(``STANDPARAM: false``, not used by the release) and a classification head (``NUM_CLASSES: 0``).

Verified offline: on a small configuration, this module's stage outputs and pooled feature were
compared with ``davit_v1.py`` itself (run outside the package with its training-only imports
stubbed): equal within float32 rounding; the tests keep reference numbers from that run. Not
verifiable offline: the published checkpoint itself (its exact key prefixes and dtypes; the
loader accepts the prefixes and old key names that ``UniCLModel``/``davit_v1`` accept).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """``x + fn(norm(x))`` (the release's ``PreNorm``; ``norm`` may be absent)."""

    def __init__(self, fn: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x) if self.norm is not None else x)


class DepthwiseConv(nn.Module):
    """3x3 depth-wise convolution on channels-last tokens (conditional position encoding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(dim, hidden)),
                    ("act", nn.GELU()),
                    ("fc2", nn.Linear(hidden, dim)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window x window`` windows.

    The map is zero-padded at the bottom/right to a multiple of the window; padded tokens are
    attended to (no mask), as in the release.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        w = self.window_size
        pad_b, pad_r = (w - height % w) % w, (w - width % w) % w
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = height + pad_b, width + pad_r
        windows = (
            x.view(batch, hp // w, w, wp // w, w, dim)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(-1, w * w, dim)
        )
        n = windows.shape[0]
        qkv = self.qkv(windows).reshape(n, w * w, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(n, w * w, dim))
        out = out.view(batch, hp // w, wp // w, w, w, dim).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, hp, wp, dim)[:, :height, :width, :]


class ChannelAttention(nn.Module):
    """Group-wise attention across channels: each group's ``d x d`` channel affinity over all N
    tokens, scaled by ``N ** -0.5`` (dynamic scale) or ``dim ** -0.5``."""

    def __init__(
        self, dim: int, groups: int, qkv_bias: bool = True, dynamic_scale: bool = True
    ) -> None:
        super().__init__()
        self.groups = groups
        self.dynamic_scale = dynamic_scale
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        tokens = height * width
        qkv = self.qkv(x.reshape(batch, tokens, dim))
        # (3, B, groups, d, N): channels are the "sequence", tokens the features
        q, k, v = (
            qkv.reshape(batch, tokens, 3, self.groups, dim // self.groups)
            .permute(2, 0, 3, 4, 1)
            .unbind(0)
        )
        scale = tokens**-0.5 if self.dynamic_scale else dim**-0.5
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = out.permute(0, 3, 1, 2).reshape(batch, tokens, dim)
        return self.proj(out).view(batch, height, width, dim)


class AttentionBlock(nn.Module):
    """Depth-wise conv, pre-norm attention, depth-wise conv, pre-norm MLP, each residual. The
    attention sits under the attribute :attr:`attention_name` (its parameter names)."""

    attention_name = "attn"

    def __init__(
        self,
        dim: int,
        attention: nn.Module,
        mlp_ratio: float,
        conv_at_attn: bool,
        conv_at_ffn: bool,
    ) -> None:
        super().__init__()
        self.conv1 = Residual(DepthwiseConv(dim)) if conv_at_attn else None
        setattr(self, self.attention_name, Residual(attention, nn.LayerNorm(dim)))
        self.conv2 = Residual(DepthwiseConv(dim)) if conv_at_ffn else None
        self.ffn = Residual(Mlp(dim, int(dim * mlp_ratio)), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1 is not None:
            x = self.conv1(x)
        x = getattr(self, self.attention_name)(x)
        if self.conv2 is not None:
            x = self.conv2(x)
        return self.ffn(x)


class SpatialBlock(AttentionBlock):
    """The spatial half of a dual block (``window_attn``)."""

    attention_name = "window_attn"


class ChannelBlock(AttentionBlock):
    """The channel half of a dual block (``channel_attn``)."""

    attention_name = "channel_attn"


class DualBlock(nn.Module):
    """One spatial-window block followed by one channel block."""

    def __init__(self, spatial_block: SpatialBlock, channel_block: ChannelBlock) -> None:
        super().__init__()
        self.spatial_block = spatial_block
        self.channel_block = channel_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_block(self.spatial_block(x))


class ConvEmbed(nn.Module):
    """Strided convolution between stages; LayerNorm before it (``pre_norm``) or after it.

    The first stage receives the image ``(B, 3, H, W)``; on it a pre-norm is never applied (as in
    the release, whose pre-norm only acts on token sequences).
    """

    def __init__(
        self, in_chans: int, dim: int, patch_size: int, stride: int, padding: int, pre_norm: bool
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(in_chans if pre_norm else dim)

    def forward(self, x: torch.Tensor, *, image: bool) -> torch.Tensor:
        if not image:
            if self.pre_norm:
                x = self.norm(x)
            x = x.permute(0, 3, 1, 2)
        x = self.proj(x).permute(0, 2, 3, 1)
        return x if self.pre_norm else self.norm(x)


class DaViT(nn.Module):
    """DaViT image encoder (``davit_v1.DaViT`` without its head), channels-last stage outputs.

    Args:
        embed_dims, depths, num_heads, num_groups: per stage (the release: 256/512/1024/2048,
            1/1/9/1 dual blocks, 8/16/32/64 heads and groups).
        patch_size, patch_stride, patch_padding, patch_prenorm: the per-stage convolutions
            (7/3/3/3, 4/2/2/2, 3/1/1/1, no pre-norm on the first stage only).
        window_size: spatial attention window (12).
        mlp_ratio, qkv_bias, conv_at_attn, conv_at_ffn, dynamic_scale: as in the release.
    """

    def __init__(
        self,
        *,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        num_groups: Sequence[int],
        patch_size: Sequence[int],
        patch_stride: Sequence[int],
        patch_padding: Sequence[int],
        patch_prenorm: Sequence[bool],
        window_size: int,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        conv_at_attn: bool = True,
        conv_at_ffn: bool = True,
        dynamic_scale: bool = True,
    ) -> None:
        super().__init__()
        stages = len(embed_dims)
        per_stage = (
            depths,
            num_heads,
            num_groups,
            patch_size,
            patch_stride,
            patch_padding,
            patch_prenorm,
        )
        if any(len(v) != stages for v in per_stage):
            raise ValueError("DaViT: every per-stage setting needs one value per stage")
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patch_stride = tuple(int(s) for s in patch_stride)
        self.patch_padding = tuple(int(p) for p in patch_padding)
        self.convs = nn.ModuleList(
            ConvEmbed(
                in_chans if i == 0 else embed_dims[i - 1],
                embed_dims[i],
                patch_size[i],
                patch_stride[i],
                patch_padding[i],
                bool(patch_prenorm[i]),
            )
            for i in range(stages)
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                DualBlock(
                    SpatialBlock(
                        embed_dims[i],
                        WindowAttention(embed_dims[i], num_heads[i], window_size, qkv_bias),
                        mlp_ratio,
                        conv_at_attn,
                        conv_at_ffn,
                    ),
                    ChannelBlock(
                        embed_dims[i],
                        ChannelAttention(embed_dims[i], num_groups[i], qkv_bias, dynamic_scale),
                        mlp_ratio,
                        conv_at_attn,
                        conv_at_ffn,
                    ),
                )
                for _ in range(depths[i])
            )
            for i in range(stages)
        )
        self.norms = nn.LayerNorm(embed_dims[-1])

    @property
    def strides(self) -> list[int]:
        """Cumulative pixel stride of each stage's output (4, 8, 16, 32 for the release)."""
        out, total = [], 1
        for s in self.patch_stride:
            total *= s
            out.append(total)
        return out

    def stage_sides(self, size: int) -> list[int]:
        """Side of each stage's square output map for a square input of ``size`` pixels."""
        sides = []
        for k, s, p in zip(self.patch_size, self.patch_stride, self.patch_padding, strict=True):
            size = (size + 2 * p - k) // s + 1
            sides.append(size)
        return sides

    def init_weights(self) -> None:
        """The release's initialisation: truncated normal (std 0.02) linear weights, normal
        (std 0.02) convolutions, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image ``(B, 3, H, W)`` -> ``(pooled feature (B, C_last), [stage outputs (B, h, w, C)])``
        for the stages in ``indices`` (all if ``None``), in stage order. The pooled feature is
        ``davit_v1``'s ``forward_features``: the token mean of the last stage, then ``norms``."""
        take = set(range(len(self.convs)) if indices is None else indices)
        maps = []
        for i, (conv, stage) in enumerate(zip(self.convs, self.blocks, strict=True)):
            x = conv(x, image=i == 0)
            for block in stage:
                x = block(x)
            if i in take:
                maps.append(x)
        return self.norms(x.mean(dim=(1, 2))), maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, normed feature ``(B, C_last)`` (``davit_v1.DaViT.forward_features``)."""
        return self.forward_intermediates(x, indices=())[0]

    forward = forward_features
