"""Render one synthetic frontal chest radiograph with its ground-truth masks.

The masks come from ``anatomy``; this module turns them into tissue density (soft tissue,
lungs and their markings, bones, pleural air, a chest tube) and exposes it like a film.
Bright = dense.

The planted findings:
- cardiomegaly: the cardiothoracic ratio of the heart and lung masks.
- pneumothorax: a crescent darker than lung, with no lung markings, bounded medially by a
  thin bright visceral pleural line.
- chest tube: a thin radiopaque curve entering through the lateral chest wall.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from embedcache.phantoms.anatomy import (
    Anatomy,
    Frame,
    draw_anatomy,
    frame,
    heart_region,
    hemithoraces,
    pneumothorax_region,
)

__all__ = ["render_phantom"]

# Attenuation of each tissue, in arbitrary "density" units before the exposure curve.
AIR = 0.03
SOFT_TISSUE = 0.30
LUNG_DEFICIT = 0.20  # aerated lung is this much less dense than the surrounding soft tissue
BONE = 0.05
PLEURAL_AIR_DEFICIT = 0.05  # a pneumothorax has no lung tissue, so it is darker than lung
TUBE = 0.35
MARKINGS = 0.12  # peak extra density of vessels near the hila
FULL_SCALE_DENSITY = 0.7  # density shown as white (1.0) at the reference exposure

N_RIBS = 10
RIB_SPREAD = 0.03


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A bool mask as float32 with blurred edges (tissue borders are never pixel-sharp)."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma_px)


def _band(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Rounded cross-section of a cylinder (rib, clavicle) at ``distance`` from its axis."""
    return np.sqrt(np.clip(1.0 - (distance / half_width) ** 2, 0.0, None))


def _lung_markings(texture: np.random.Generator, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Vessel-like streaks radiating from a hilum at offset (0, 0); float32, >= 0.

    Noise drawn on a polar grid and smoothed far more along the radius than around it gives
    branching-looking radial streaks that thin and fade towards the periphery.
    """
    n_angle, n_radius, max_radius = 360, 48, 0.5
    polar = texture.standard_normal((n_angle, n_radius)).astype(np.float32)
    polar = ndimage.gaussian_filter(polar, sigma=(0.8, 3.5), mode=("wrap", "nearest"))
    polar /= polar.std()
    streaks = np.clip(polar - 0.7, 0.0, None)
    radius = np.hypot(du, dv)
    angle_index = (np.arctan2(dv, du) + np.pi) * (n_angle / (2 * np.pi))
    radius_index = np.clip(radius * (n_radius / max_radius), 0, n_radius - 1)
    sampled = ndimage.map_coordinates(
        streaks, [angle_index.ravel(), radius_index.ravel()], order=1, mode="grid-wrap"
    ).reshape(radius.shape)
    return sampled * np.exp(-radius / 0.3)


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points along the cubic Bezier curve with control points ``points`` (4, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    weights = [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3]
    return sum(w * p for w, p in zip(weights, points, strict=True))


def _skeleton(f: Frame, anatomy: Anatomy, view: str) -> np.ndarray:
    """Density of the spine, ribs and clavicles, float32 (H, W)."""
    s, u, v, du, dv = f.scale, f.u, f.v, f.du, f.dv
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (dv / (0.052 * s)))
    density = BONE * 1.4 * _band(np.abs(du), 0.032 * s) * vertebrae * (dv > -0.45)

    # Ribs: posterior arcs that rise then fall laterally, and fainter anterior ribs that fall
    # medially. Each family is one phase field, so all ribs are drawn without a loop.
    lateral = np.abs(du) / f.half_thorax
    spacing = 0.05 * s
    first_rib = anatomy.centre_y - 0.36 * s + anatomy.rib_offset
    for curve, amplitude, reach in (
        (-0.05 * s * lateral + 0.16 * s * lateral**2, BONE, (0.06, 1.08)),
        (0.11 * s + 0.12 * s * (1 - lateral), 0.4 * BONE, (0.3, 1.0)),
    ):
        # Rib k sits at spacing * (k + RIB_SPREAD * k^2) below the first: lower ribs lie
        # further apart. Inverting that quadratic gives a continuous rib "phase" per pixel.
        depth = np.clip((v - first_rib - curve) / spacing, -0.5, None)
        phase = (np.sqrt(1 + 4 * RIB_SPREAD * depth) - 1) / (2 * RIB_SPREAD)
        rib_index = np.round(phase)
        local_spacing = spacing * (1 + 2 * RIB_SPREAD * rib_index)
        on_rib = (rib_index >= 0) & (rib_index < N_RIBS) & (lateral > reach[0])
        on_rib &= lateral < reach[1]
        distance = np.abs(phase - rib_index) * local_spacing
        # Squared profile: smooth rib margins, so ribs do not dominate the fine texture.
        density = density + amplitude * on_rib * _band(distance, 0.012 * s) ** 2

    # Clavicles: straight bars from the sternal notch up and out (higher on an AP film).
    rise = 0.03 if view == "AP" else 0.0
    cx, cy = anatomy.centre_x, anatomy.centre_y
    for sign in (-1.0, 1.0):
        start = np.array([cx + sign * 0.03 * s, cy - (0.33 + rise) * s])
        step = np.array([sign * 0.3 * s, -0.08 * s])
        t = np.clip(((u - start[0]) * step[0] + (v - start[1]) * step[1]) / (step @ step), 0, 1)
        distance = np.hypot(u - start[0] - t * step[0], v - start[1] - t * step[1])
        density = density + 1.3 * BONE * _band(distance, 0.012 * s)
    return density


def _soft_tissues(f: Frame, anatomy: Anatomy, body: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Density of chest wall, hila, trachea, breasts and the gastric bubble, float32 (H, W)."""
    s, du, dv = f.scale, f.du, f.dv
    # The chest wall overlaps the lung periphery; hila are dense vessels and nodes.
    density = 0.06 * np.clip(np.abs(du) / f.half_thorax, 0, 1.2) ** 3 * body
    for sign in (-1.0, 1.0):
        hilum = np.hypot((du - sign * 0.1 * s) / (0.035 * s), (dv + 0.03 * s) / (0.06 * s))
        density = density + 0.05 * np.exp(-(hilum**2)) * lungs
    density = density - 0.05 * _band(np.abs(du + 0.004), 0.013 * s) * (dv < -0.12 * s)
    if anatomy.breasts:
        for sign in (-1.0, 1.0):
            r = np.hypot((du - sign * 0.2 * s) / (0.17 * s), (dv - 0.2 * s) / (0.12 * s))
            density = density + 0.05 * np.clip(1.2 * (1 - r**2), 0, 1)
    bubble = np.hypot(
        (du - 0.17 * s) / (0.05 * s), (dv - (anatomy.left_dome + 0.08) * s) / (0.03 * s)
    )
    return density - 0.06 * np.clip(1 - bubble**2, 0, 1)


def _lung_texture(f: Frame, anatomy: Anatomy) -> np.ndarray:
    """Patient-specific vessels and parenchymal texture, float32 (H, W), before masking."""
    texture = np.random.default_rng(anatomy.texture_seed)
    markings = np.zeros((f.size, f.size), dtype=np.float32)
    for sign in (-1.0, 1.0):
        vessels = _lung_markings(texture, f.du - sign * 0.1 * f.scale, f.dv + 0.03 * f.scale)
        markings += vessels * (sign * f.du > 0)
    # Fine reticular texture of the parenchyma, drawn at a fixed anatomical scale.
    fine = texture.standard_normal((f.size, f.size)).astype(np.float32)
    fine = ndimage.gaussian_filter(fine, 1.5 * f.px)
    return markings + 0.25 * (0.5 + fine / (fine.std() + 1e-6))


def _pleural_air(f: Frame, pneumothorax: np.ndarray, hemithorax: np.ndarray) -> np.ndarray:
    """Density change of a pneumothorax: air, a denser collapsed lung, the visceral line."""
    density = -PLEURAL_AIR_DEFICIT * _soft(pneumothorax, 0.6 * f.px)
    collapse = pneumothorax.sum() / hemithorax.sum()
    density += 0.05 * collapse * _soft(hemithorax & ~pneumothorax, 1.2 * f.px)
    line_px = max(1, round(f.size / 400))
    pleural_line = ndimage.binary_dilation(pneumothorax, iterations=line_px) & ~pneumothorax
    return density + 0.12 * (pleural_line & hemithorax)


def _chest_tube(f: Frame, anatomy: Anatomy, rng: np.random.Generator, sign: float) -> np.ndarray:
    """Density of a tube entering the lateral chest wall and curving up to the apex."""
    s, cx, cy, ht = f.scale, anatomy.centre_x, anatomy.centre_y, f.half_thorax
    controls = np.array(
        [
            [cx + sign * 1.5 * ht, cy + 0.17 * s],
            [cx + sign * 0.95 * ht, cy + 0.12 * s],
            [cx + sign * 0.7 * ht, cy - 0.05 * s],
            [cx + sign * 0.45 * ht, cy - 0.3 * s],
        ]
    )
    controls += rng.normal(0, 0.015 * s, size=controls.shape)
    path = _bezier(controls, 4 * f.size)
    cols = np.clip(((path[:, 0] + 0.5) * f.size).astype(int), 0, f.size - 1)
    rows = np.clip(((path[:, 1] + 0.5) * f.size).astype(int), 0, f.size - 1)
    line = np.zeros((f.size, f.size), dtype=bool)
    line[rows, cols] = True
    line = ndimage.binary_dilation(line, iterations=max(1, round(f.px)))
    return TUBE * _soft(line, 0.5 * f.px)


def _expose(
    f: Frame, density: np.ndarray, rng: np.random.Generator, noise: float | None
) -> np.ndarray:
    """Density to a [0, 1] float32 image: film-like curve, exposure, system blur, noise.

    Fixed scaling, never per-image min-max: a bright tube would otherwise darken the whole
    image and plant a second, global shortcut.
    """
    gain = float(rng.uniform(1.7, 2.3))
    image = (1.0 - np.exp(-gain * density)) / (1.0 - np.exp(-gain * FULL_SCALE_DENSITY))
    image = np.clip(image, 0.0, 1.0)
    image = image ** float(rng.uniform(0.85, 1.15))
    image = ndimage.gaussian_filter(image, 0.5 * f.px)
    sigma = float(rng.uniform(0.006, 0.014)) if noise is None else noise
    image = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_phantom(
    rng: np.random.Generator,
    size: int,
    *,
    ctr: float,
    pneumothorax_area: float,
    tube: bool,
    anatomy: Anatomy | None = None,
    pneumothorax_side: str | None = None,
    view: str = "PA",
    noise: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render a frontal chest radiograph phantom.

    Args:
        rng: per-image randomness (position jitter, exposure, noise, tube path).
        size: image side in pixels.
        ctr: target cardiothoracic ratio (heart width / thoracic width), e.g. 0.42 or 0.58.
        pneumothorax_area: target pneumothorax area as a fraction of the image (0 = none); it
            is capped at 60% of the hemithorax. Read the true area from the returned mask.
        tube: draw a chest tube (on the pneumothorax side if there is one).
        anatomy: patient geometry; drawn from ``rng`` if None.
        pneumothorax_side: "right" or "left" (the patient's); drawn from ``rng`` if None.
        view: "PA" or "AP" (AP raises the clavicles, as in a supine/semi-erect film).
        noise: standard deviation of the added quantum noise in output units; drawn if None.

    Returns:
        ``image``: float32 ``(size, size)`` in [0, 1], bright = dense;
        ``masks``: bool ``(size, size)`` arrays ``"heart"``, ``"lungs"`` (both lung fields,
        pleural space included, heart excluded) and ``"pneumothorax"``.
    """
    anatomy = anatomy if anatomy is not None else draw_anatomy(rng)
    side_sign = {"right": -1.0, "left": 1.0}  # patient's right is the image's left
    if pneumothorax_side is None:
        pneumothorax_side = "right" if rng.random() < 0.5 else "left"
    if pneumothorax_side not in side_sign:
        raise ValueError(f"pneumothorax_side must be 'right' or 'left', got {pneumothorax_side!r}")

    # Per-image jitter: the patient stands a little differently each time.
    anatomy = replace(
        anatomy,
        centre_x=anatomy.centre_x + float(rng.normal(0, 0.006)),
        centre_y=anatomy.centre_y + float(rng.normal(0, 0.006)),
        scale=anatomy.scale * float(1 + rng.normal(0, 0.01)),
    )
    f = frame(anatomy, size)
    s, du, dv = f.scale, f.du, f.dv

    # Soft-tissue body: a super-ellipse that narrows towards the neck.
    body = (
        np.abs(du / (1.22 * f.half_thorax)) ** 2.6 + np.abs((dv - 0.08 * s) / (0.62 * s)) ** 2.6
    ) < 1
    fields, outlines, mediastinum = hemithoraces(f, anatomy)
    lung_cols = np.flatnonzero((fields[-1.0] | fields[1.0]).any(axis=0))
    heart = heart_region(f, anatomy, ctr, lung_cols[-1] - lung_cols[0] + 1)
    for sign in fields:
        fields[sign] &= ~heart
    lungs = fields[-1.0] | fields[1.0]

    side = side_sign[pneumothorax_side]
    pneumothorax = np.zeros((size, size), dtype=bool)
    if pneumothorax_area > 0:
        pneumothorax = pneumothorax_region(
            fields[side],
            outlines[side],
            max(1, round(pneumothorax_area * size * size)),
            side,
            (anatomy.centre_x + side * 0.5 * f.half_thorax, anatomy.centre_y - 0.04 * s),
            f.u,
            f.v,
            apex_v=anatomy.centre_y - 0.37 * s,
            base_v=anatomy.centre_y + 0.25 * s,
        )

    edge_px = 1.2 * f.px
    density = AIR + SOFT_TISSUE * _soft(body, 2.0 * f.px)
    density -= LUNG_DEFICIT * _soft(lungs, edge_px)
    density += 0.04 * _soft(heart, edge_px)
    density += _soft_tissues(f, anatomy, body, lungs)
    density += 0.05 * _soft(mediastinum, edge_px) * (dv < 0.2 * s)
    density += _skeleton(f, anatomy, view)
    # Lung markings are absent where the lung has collapsed away from the chest wall.
    density += MARKINGS * _lung_texture(f, anatomy) * _soft(lungs & ~pneumothorax, 0.8 * f.px)
    if pneumothorax.any():
        density += _pleural_air(f, pneumothorax, fields[side])
    if tube:
        tube_side = side if pneumothorax.any() else rng.choice([-1.0, 1.0])
        density += _chest_tube(f, anatomy, rng, tube_side)

    image = _expose(f, density, rng, noise)
    return image, {"heart": heart, "lungs": lungs, "pneumothorax": pneumothorax}
