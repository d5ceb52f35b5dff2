"""Phantom geometry: a patient's anatomy and the masks it implies (lungs, heart, pneumothorax).

Geometry is drawn in normalised image units (the image side is 1, the centre is 0), so the same
anatomy renders at any pixel size. Display convention of a PA film: the patient's right is on
the image's left. Sides are keyed by their sign on the image's x axis (-1 = patient's right).

- Cardiothoracic ratio (CTR): the heart's widest horizontal extent over the thoracic width
  (outer lung edges); ``cardiothoracic_ratio`` measures it back from any pair of masks.
- Pneumothorax: the apical/lateral crescent of one hemithorax, widest at the apex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "Anatomy",
    "Frame",
    "cardiothoracic_ratio",
    "draw_anatomy",
    "frame",
    "heart_region",
    "hemithoraces",
    "pneumothorax_region",
]

PTX_MAX_FRACTION_OF_LUNG = 0.6  # a collapsed lung keeps some volume


@dataclass(frozen=True)
class Anatomy:
    """Patient-level geometry, shared (with small jitter) by all images of one patient.

    All lengths are in image-side units; ``scale`` 1 gives a thoracic width of 0.71 image sides.
    """

    centre_x: float = 0.0
    centre_y: float = 0.0
    scale: float = 1.0
    right_dome: float = 0.17  # diaphragm apex below the thorax centre (patient's right is higher)
    left_dome: float = 0.19
    heart_tilt_deg: float = 30.0
    rib_offset: float = 0.0
    breasts: bool = False
    texture_seed: int = 0  # lung markings: the same vessels in every image of the patient


def draw_anatomy(rng: np.random.Generator, sex: str = "M") -> Anatomy:
    """Draw a random patient's geometry; men are slightly larger on average."""
    mean_scale = 1.0 if sex == "M" else 0.94
    return Anatomy(
        centre_x=float(rng.normal(0.0, 0.015)),
        centre_y=float(rng.normal(0.0, 0.015)),
        scale=float(np.clip(rng.normal(mean_scale, 0.04), 0.82, 1.1)),
        right_dome=float(rng.uniform(0.15, 0.19)),
        left_dome=float(rng.uniform(0.17, 0.21)),
        heart_tilt_deg=float(rng.uniform(22.0, 38.0)),
        rib_offset=float(rng.uniform(-0.01, 0.01)),
        breasts=sex == "F",
        texture_seed=int(rng.integers(2**31)),
    )


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Heart's widest horizontal extent over the lungs' outer extent, both bool ``(H, W)``.

    Works for any frontal heart + lung masks (e.g. CheXmask's); the lungs' outer edges stand in
    for the inner rib margins. Returns NaN if either mask is empty.
    """
    heart_cols = np.flatnonzero(np.asarray(heart).any(axis=0))
    lung_cols = np.flatnonzero(np.asarray(lungs).any(axis=0))
    if heart_cols.size == 0 or lung_cols.size == 0:
        return float("nan")
    heart_width = heart_cols[-1] - heart_cols[0] + 1
    thorax_width = lung_cols[-1] - lung_cols[0] + 1
    return float(heart_width / thorax_width)


@dataclass(frozen=True)
class Frame:
    """Pixel grid of one image in anatomical coordinates (image-side units)."""

    size: int
    scale: float
    u: np.ndarray  # (1, W) column centres, image centre = 0
    v: np.ndarray  # (H, 1) row centres
    du: np.ndarray  # (1, W) offset from the thorax centre
    dv: np.ndarray  # (H, 1)
    half_thorax: float

    @property
    def px(self) -> float:
        """Pixels per 1/256 of the image side: line widths scale with resolution."""
        return self.size / 256


def frame(anatomy: Anatomy, size: int) -> Frame:
    """The ``size x size`` pixel grid, centred on ``anatomy``'s thorax."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    u, v = coords[None, :], coords[:, None]
    return Frame(
        size, anatomy.scale, u, v, u - anatomy.centre_x, v - anatomy.centre_y, 0.355 * anatomy.scale
    )


def hemithoraces(
    f: Frame, anatomy: Anatomy
) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray], np.ndarray]:
    """Lung fields per side (-1 = patient's right), their outlines, and the mediastinum.

    A super-ellipse per side, cut below by its hemidiaphragm (the outline), then medially by
    the mediastinum (the field). Keys are the side's sign on the image's x axis.
    """
    s, du, dv = f.scale, f.du, f.dv
    mediastinum_half = np.where(dv < -0.05 * s, 0.045 * s, 0.055 * s)
    fields, outlines = {}, {}
    for sign, dome in ((-1.0, anatomy.right_dome), (1.0, anatomy.left_dome)):
        lung_du = du - sign * 0.5 * f.half_thorax
        widening = 0.85 + 0.15 * np.clip((dv + 0.1 * s) / (0.2 * s), 0, 1)
        half_width = 0.5 * f.half_thorax * widening
        shape = (lung_du / half_width) ** 2 + np.abs((dv + 0.04 * s) / (0.33 * s)) ** 2.4 < 1
        diaphragm = dv < dome * s + 0.07 * s * (lung_du / (0.5 * f.half_thorax)) ** 2
        outlines[sign] = shape & diaphragm
        fields[sign] = outlines[sign] & (sign * du > mediastinum_half)
    mediastinum = np.abs(du) < mediastinum_half
    return fields, outlines, mediastinum


def heart_region(f: Frame, anatomy: Anatomy, ctr: float, thorax_px: int) -> np.ndarray:
    """A tilted ellipse, two thirds left of the midline, resting on the diaphragm (bool).

    Its horizontal extent is ``ctr`` times the thoracic width as measured on the masks
    (``thorax_px``), so the CTR read back matches the requested one to within a pixel.
    """
    tilt = np.deg2rad(anatomy.heart_tilt_deg)
    aspect = 0.78
    half_width = ctr * thorax_px / f.size / 2
    long_axis = half_width / np.sqrt(np.cos(tilt) ** 2 + (aspect * np.sin(tilt)) ** 2)
    half_height = long_axis * np.sqrt(np.sin(tilt) ** 2 + (aspect * np.cos(tilt)) ** 2)
    diaphragm = 0.5 * (anatomy.right_dome + anatomy.left_dome) * f.scale
    hu, hv = f.du - half_width / 3, f.dv - (diaphragm - 0.8 * half_height)
    along = hu * np.cos(tilt) + hv * np.sin(tilt)
    across = -hu * np.sin(tilt) + hv * np.cos(tilt)
    return (along / long_axis) ** 2 + (across / (aspect * long_axis)) ** 2 < 1


def pneumothorax_region(
    hemithorax: np.ndarray,
    lung_outline: np.ndarray,
    area_px: int,
    lateral_sign: float,
    lung_centre: tuple[float, float],
    u: np.ndarray,
    v: np.ndarray,
    apex_v: float,
    base_v: float,
) -> np.ndarray:
    """The ``area_px`` pixels of one hemithorax nearest its apical/lateral pleura (bool).

    Depth is the distance to the chest wall above or lateral to the lung's middle (so not the
    mediastinum or diaphragm), scaled so the crescent is widest at the apex and tapers down the
    lateral wall, as air rises in an upright patient.
    """
    lung_u, lung_v = lung_centre
    # Outside the outline, not merely outside the lung: the heart must not count as pleura.
    chest_wall = ~lung_outline & (lateral_sign * (u - lung_u) > -0.04) & (v < lung_v + 0.1)
    depth = ndimage.distance_transform_edt(~chest_wall)
    taper = np.clip(1.0 - 0.75 * (v - apex_v) / (base_v - apex_v), 0.25, 1.0)
    rank = np.where(hemithorax, depth / taper, np.inf)
    area_px = int(min(area_px, PTX_MAX_FRACTION_OF_LUNG * hemithorax.sum()))
    if area_px <= 0:
        return np.zeros_like(hemithorax)
    cutoff = np.partition(rank.ravel(), area_px - 1)[area_px - 1]
    return hemithorax & (rank <= cutoff)
