"""Optional training augmentation (off by default, as in the reference study).

Mild and anatomy-preserving: no flips (a mirrored chest film puts the heart on the wrong side).
Each image gets a random rotation (up to ``MAX_ROTATION_DEG``), isotropic scale and shift, then a
brightness/contrast jitter, drawn from a generator the trainer seeds per round and epoch, so a
resumed run augments exactly as an uninterrupted one. Masks follow the same geometry with
nearest-neighbour sampling (they stay binary). The field of view is the square model input for
pixels and masks alike, so one affine map in normalised coordinates moves both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.1  # scale in [1 - s, 1 + s]
MAX_SHIFT = 0.05  # fraction of the side
MAX_BRIGHTNESS = 0.05  # added, in [0, 1] pixel units
MAX_CONTRAST = 0.1  # multiplier in [1 - c, 1 + c] around the image mean


def _uniform(n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_width


def augment_batch(
    pixels: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch.

    Args:
        pixels: ``(B, C, S, S)`` float in ``[0, 1]`` (before the encoder's normalisation).
        masks: ``(B, H, W)`` bool or ``None``.
        generator: CPU generator the random parameters are drawn from.

    Returns:
        ``(pixels, masks)`` of the same shapes and dtypes; pixels outside the moved image are 0.
    """
    n = len(pixels)
    angle = _uniform(n, math.radians(MAX_ROTATION_DEG), generator)
    scale = 1 + _uniform(n, MAX_SCALE, generator)
    shift = torch.stack([_uniform(n, 2 * MAX_SHIFT, generator) for _ in range(2)], 1)
    brightness = _uniform(n, MAX_BRIGHTNESS, generator)
    contrast = 1 + _uniform(n, MAX_CONTRAST, generator)
    # affine_grid maps output coordinates to input coordinates: the inverse of the motion.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(pixels.device, torch.float32)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels.float(), grid, "bilinear", "zeros", align_corners=False)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    c = contrast.to(pixels.device, torch.float32).view(-1, 1, 1, 1)
    b = brightness.to(pixels.device, torch.float32).view(-1, 1, 1, 1)
    moved = ((moved - mean) * c + mean + b).to(pixels.dtype)
    if masks is None:
        return moved, None
    shape = [n, 1, *masks.shape[-2:]]
    mask_grid = F.affine_grid(theta, shape, align_corners=False)
    sampled = F.grid_sample(
        masks[:, None].float(), mask_grid, "nearest", "zeros", align_corners=False
    )
    return moved, sampled[:, 0] > 0.5
