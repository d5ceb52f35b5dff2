"""One image geometry: the encoder's ``Preprocessing.prepare`` (torch, interpolating) and
``embedcache.geometry.to_frame`` (numpy, nearest neighbour, used for masks and overlays) put an
image and its mask on the same pixels of the encoder's input frame, for every preset.

The hard case is a non-square image whose crop margin is odd (and ``= 3 mod 4``, where
flooring and rounding half to even put the window 1 px apart): the timm and open_clip presets
round, the Hugging Face ones floor.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from embedcache.encoders import list_presets, resolve_preset
from embedcache.geometry import Frame, to_frame

pytestmark = pytest.mark.usefixtures("offline")

#: Generic specs besides the registry's presets: timm and open_clip round half to even.
GENERIC_SPECS = ("timm:vit_tiny_patch16_224", "timm:inception_v3", "timm:legacy_xception")
#: Rectangles as fractions (top, bottom, left, right) of the image's central square: all lie
#: inside every preset's crop window, well apart, at unrelated sub-pixel positions.
RECTANGLES = ((0.15, 0.41, 0.20, 0.47), (0.56, 0.87, 0.23, 0.44), (0.29, 0.71, 0.61, 0.83))
#: Allowed distance between a mask edge and the image's edge (its half-maximum crossing) in
#: frame pixels: nearest-neighbour sampling places an edge within half a pixel; the rest is the
#: estimate's error. A 1 px shift puts one edge at least ~half a pixel beyond this.
EDGE_TOLERANCE = 0.5 + 0.12


def all_specs() -> list[str]:
    return [p.name for p in list_presets()] + list(GENERIC_SPECS)


def odd_margin_shape(frame: Frame, portrait: bool) -> tuple[int, int]:
    """A non-square ``(H, W)`` larger than the frame whose margin along its long axis is odd:
    ``3 mod 4`` in the resized canvas for ``crop`` (floor and round then differ by 1 px), odd
    padding for ``pad``; any non-square shape for ``resize``."""
    short = int(1.25 * max(frame.input_size, frame.resize_to or 0))
    for long in range(int(1.2 * short), 2 * short):
        shape = (long, short) if portrait else (short, long)
        if frame.resize == "crop":
            canvas = max(frame.resized_size(*shape))
            if (canvas - frame.input_size) % 4 == 3:
                return shape
        elif frame.resize == "pad":
            if (long - short) % 2 == 1:
                return shape
        else:
            return shape
    raise AssertionError(f"no odd-margin shape for {frame}")


def scene(shape: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A black image with bright rectangles, and one mask per rectangle."""
    height, width = shape
    side = min(shape)
    top0, left0 = (height - side) // 2, (width - side) // 2
    image = np.zeros(shape, np.float32)
    masks = []
    for t, b, left, right in RECTANGLES:
        mask = np.zeros(shape, bool)
        rows = slice(top0 + int(t * side), top0 + int(b * side))
        cols = slice(left0 + int(left * side), left0 + int(right * side))
        mask[rows, cols] = True
        image[mask] = 1.0
        masks.append(mask)
    return image, masks


def half_max_edges(profile: np.ndarray) -> tuple[float, float]:
    """Rising and falling 0.5 crossings of a blurred box profile, in pixel coordinates (pixel
    ``j`` spans ``[j, j + 1)``), linearly interpolated between pixel centres."""
    above = profile >= 0.5
    rise = int(np.flatnonzero(~above[:-1] & above[1:])[0]) + 1
    fall = int(np.flatnonzero(above[:-1] & ~above[1:])[-1]) + 1
    lo, hi = profile[rise - 1], profile[rise]
    rising = rise - 0.5 + (0.5 - lo) / (hi - lo)
    lo, hi = profile[fall - 1], profile[fall]
    falling = fall - 0.5 + (lo - 0.5) / (lo - hi)
    return float(rising), float(falling)


def misalignment(prepared: np.ndarray, frame_masks: list[np.ndarray]) -> list[str]:
    """Where the masks (sampled into the frame) and the image (prepared) disagree beyond the
    interpolation blur at the edges; empty when they land on the same pixels."""
    problems = []
    union = np.any(frame_masks, axis=0)
    if (prepared[union] < 0.25).any() or (prepared[~union] > 0.75).any():
        problems.append("a mask pixel lies on black or a background pixel on a rectangle")
    for k, mask in enumerate(frame_masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        pad = 4
        for axis, (a0, a1), (b0, b1) in ((1, (c0, c1), (r0, r1)), (0, (r0, r1), (c0, c1))):
            lo = max(a0 - pad, 0)
            band = prepared[b0 + 2 : b1 - 2] if axis == 1 else prepared[:, b0 + 2 : b1 - 2].T
            profile = band[:, lo : a1 + pad].mean(axis=0)
            rising, falling = half_max_edges(profile)
            for edge, found in ((a0, rising + lo), (a1, falling + lo)):
                if abs(edge - found) > EDGE_TOLERANCE:
                    problems.append(
                        f"rectangle {k}, {'columns' if axis == 1 else 'rows'}: mask edge at "
                        f"{edge}, image edge at {found:.2f}"
                    )
    return problems


@pytest.mark.parametrize("portrait", [True, False], ids=["portrait", "landscape"])
@pytest.mark.parametrize("spec", all_specs())
def test_mask_and_image_land_on_the_same_pixels(spec, portrait):
    pp = resolve_preset(spec).preprocessing  # preset data only: no model is built
    frame = pp.frame
    shape = odd_margin_shape(frame, portrait)
    image, masks = scene(shape)
    prepared = pp.prepare(image)[0].numpy()
    size = (frame.input_size, frame.input_size)
    assert prepared.shape == size
    frame_masks = [to_frame(m, size, pp.to_dict()) for m in masks]  # the dict run folders keep
    assert all(m.dtype == bool and m.any() for m in frame_masks)
    assert misalignment(prepared, frame_masks) == []
    # The comparison sees a 1 px shift: the other crop rounding, or the masks moved by a pixel.
    long_axis = 0 if portrait else 1
    moved = [np.roll(m, 1, axis=long_axis) for m in frame_masks]
    assert misalignment(prepared, moved) != []
    if frame.resize == "crop":
        other = "floor" if frame.crop_rounding == "round" else "round"
        wrong = dataclasses.replace(frame, crop_rounding=other)
        assert wrong.crop_offset(*shape) != frame.crop_offset(*shape)
        assert misalignment(prepared, [to_frame(m, size, wrong) for m in masks]) != []


def test_masks_sample_at_any_resolution_on_the_frame():
    """A mask sampled at the training resolution covers the same part of the frame as at full
    resolution: the cells of a coarse sample are the full-resolution pixels under their
    centres."""
    frame = Frame(224, "crop", resize_to=256, crop_rounding="round")
    image, masks = scene(odd_margin_shape(frame, portrait=True))
    full = to_frame(masks[0], (224, 224), frame)
    coarse = to_frame(masks[0], (32, 32), frame)  # 7 x 7 frame pixels per cell
    centres = np.arange(32) * 7 + 3  # the pixel whose centre is the cell's
    np.testing.assert_array_equal(coarse, full[np.ix_(centres, centres)])


def test_frame_numbers():
    """The canvas, padding and window of each policy, and the crop rounding."""
    crop = Frame(224, "crop", resize_to=256)
    assert crop.resized_size(512, 475) == (275, 256)  # HF truncation of the longer side
    assert crop.crop_offset(512, 475) == (25, 16)  # margins 51 and 32: floor
    rounded = dataclasses.replace(crop, crop_rounding="round")
    assert rounded.crop_offset(512, 475) == (26, 16)  # 25.5 -> 26 (half to even)
    centre = Frame(224, "crop", crop_rounding="round")
    assert centre.crop_offset(224, 243) == (0, 10)  # margin 19: 9.5 -> 10 (floor: 9)
    assert centre.crop_offset(224, 241) == (0, 8)  # margin 17: 8.5 -> 8, as floor
    pad = Frame(100, "pad")
    assert pad.padding(40, 71) == (15, 16, 0, 0)
    assert pad.resized_size(40, 71) == (100, 100) and pad.crop_offset(40, 71) == (0, 0)
    assert Frame(100).padding(40, 71) == (0, 0, 0, 0)
    wide = np.ones((40, 80), bool)
    padded = to_frame(wide, (8, 8), {"resize": "pad", "input_size": 56})
    assert not padded[:2].any() and padded[2:6].all() and not padded[6:].any()
    with pytest.raises(ValueError, match="resize_to"):
        Frame(224, "resize", resize_to=256)
    with pytest.raises(ValueError, match="input_size"):
        Frame.of({"resize": "crop"})
    with pytest.raises(ValueError, match="resize policy"):
        Frame.of({"resize": "squash", "input_size": 4})


def test_geometry_imports_without_torch():
    code = (
        "import sys, embedcache.geometry, probes.segmentation.masks, probes.report.overlays\n"
        "print(sorted(m for m in ('torch', 'embedcache.encoders') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
