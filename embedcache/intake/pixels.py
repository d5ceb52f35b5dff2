"""Stored integer pixels -> float32 grey in [0, 1]: full-scale division and BT.601 luma.

Shared by the PIL readers (images.py) and the DICOM colour path (dicom.py).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from embedcache.intake.errors import ColourToGreyWarning

LUMA_BT601 = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights for R, G, B (the same weights PIL's convert("L") uses)."""


def _scale(stored: np.ndarray, full_scale: int) -> np.ndarray:
    """Integers over [0, full_scale] -> float32 [0, 1].

    A correctly rounded division, so 0 and full scale map exactly to 0 and 1 and nothing can
    leave [0, 1]: no clip pass needed.
    """
    image = stored.astype(np.float32)
    image /= np.float32(full_scale)
    return image


def _luma(
    path: str | os.PathLike, rgb: np.ndarray, full_scale: int, what: str, *, alpha: bool
) -> np.ndarray:
    """(H, W, >=3) integer colour -> float32 grey (H, W) in [0, 1] by BT.601 luma, with a warning."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        grey = red.astype(np.float32)  # grey saved as colour: exact, no luma rounding
        how = "has identical colour channels; read as grey from one channel"
    else:
        weights = [np.float32(w) for w in LUMA_BT601]
        grey = red * weights[0]
        grey += green * weights[1]
        grey += blue * weights[2]
        how = "converted to grey with ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B)"
    extra = ", alpha dropped" if alpha else ""
    warnings.warn(
        f"{os.fsdecode(path)}: {what} image {how}{extra}", ColourToGreyWarning, stacklevel=2
    )
    grey /= np.float32(full_scale)
    return np.clip(grey, 0.0, 1.0, out=grey)
