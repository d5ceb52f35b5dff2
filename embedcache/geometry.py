"""Where an original image lands in an encoder's input frame: written once, numpy only.

An encoder sees a square ``S x S`` frame made from an ``(H, W)`` image by one resize policy:

* ``resize``: stretch to ``S x S`` (aspect not kept);
* ``crop``: resize the shorter side to ``resize_to`` (default S), the longer side truncated as
  Hugging Face processors do (``int(short * long / short_side)``), then cut the centre ``S x S``;
  an odd margin puts the window at ``(m - S) // 2`` (``floor``, Hugging Face) or at
  ``round((m - S) / 2)`` half to even (``round``, torchvision's ``center_crop``: timm, open_clip);
* ``pad``: pad to a square with 0 (the image centred, ``(side - h) // 2`` above/left), then
  stretch to ``S x S``.

:class:`Frame` gives the numbers (padding, resized canvas, crop window) that
``embedcache.encoders.base.Preprocessing.prepare`` applies with its interpolating resize, and
:func:`to_frame` samples any array (a mask, an X-ray for an overlay) into the same frame by
nearest neighbour: output pixel ``(i, j)`` takes the source pixel under its centre, so a mask
stays binary and lies on the pixels of the image it belongs to. No torch here: ``probes`` and the
report use this module without the encoder stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CropRounding", "Frame", "ResizePolicy", "to_frame"]

ResizePolicy = Literal["resize", "crop", "pad"]
CropRounding = Literal["floor", "round"]
RESIZE_POLICIES: tuple[str, ...] = ("resize", "crop", "pad")
CROP_ROUNDINGS: tuple[str, ...] = ("floor", "round")


@dataclass(frozen=True)
class AxisMap:
    """How one image axis maps onto the frame: the source (plus padding) of ``extent`` pixels is
    resized to ``canvas`` pixels, and the frame starts ``crop`` canvas pixels in.

    Frame coordinate ``y`` (continuous, frame pixels) sits over source coordinate
    ``(y + crop) * extent / canvas - pad``.

    Attributes:
        extent: source length including the padding on both sides, pixels.
        canvas: length it is resized to, pixels.
        crop: offset of the frame's first pixel in the canvas, pixels.
        pad: padding before the source's first pixel, source pixels.
        frame: frame length S, pixels.
    """

    extent: int
    canvas: int
    crop: int
    pad: int
    frame: int

    def sample(self, out: int) -> np.ndarray:
        """``(out,)`` int64 source index under the centre of each of ``out`` output pixels that
        span the frame (``-1`` or ``>= source length`` where the centre is in the padding).
        Exact integer arithmetic: no float rounding at pixel borders."""
        centres2 = 2 * np.arange(out, dtype=np.int64) + 1  # doubled centres, output pixels
        numerator = (2 * self.crop * out + centres2 * self.frame) * self.extent
        return numerator // (2 * self.canvas * out) - self.pad


@dataclass(frozen=True)
class Frame:
    """The geometry of an encoder's square input frame (see the module docstring).

    Attributes:
        input_size: S, the frame's side, pixels.
        resize: ``resize``, ``crop`` or ``pad``.
        resize_to: ``crop`` only: the shorter side before the centre crop, pixels (None: S).
        crop_rounding: ``crop`` only: ``floor`` or ``round`` (half to even) for an odd margin.
    """

    input_size: int
    resize: ResizePolicy = "resize"
    resize_to: int | None = None
    crop_rounding: CropRounding = "floor"

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.resize!r}; expected {RESIZE_POLICIES}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(
                f"unknown crop rounding {self.crop_rounding!r}; expected {CROP_ROUNDINGS}"
            )
        if self.resize_to is not None:
            if self.resize != "crop":
                raise ValueError(
                    f"resize_to applies to the 'crop' policy only, not {self.resize!r}"
                )
            if self.resize_to < self.input_size:
                raise ValueError(
                    f"resize_to ({self.resize_to}) must be at least input_size ({self.input_size})"
                )

    @classmethod
    def of(cls, preprocessing: Frame | Mapping[str, Any] | Any | None) -> Frame:
        """The frame of a preprocessing: a :class:`Frame`, an object with the same attributes
        (``Preprocessing``), or its dict (as the store and run folders record it; other keys such
        as mean/std are ignored). ``None`` stretches (``resize``); a dict without
        ``input_size`` is accepted for ``resize`` and ``pad``, whose sampling does not depend
        on S."""
        if isinstance(preprocessing, Frame):
            return preprocessing
        if preprocessing is None:
            return cls(1)
        if not isinstance(preprocessing, Mapping):
            preprocessing = {
                name: getattr(preprocessing, name)
                for name in ("input_size", "resize", "resize_to", "crop_rounding")
            }
        resize = preprocessing.get("resize") or "resize"
        size = preprocessing.get("input_size")
        if size is None:
            if resize == "crop":
                raise ValueError("a 'crop' preprocessing needs its input_size")
            size = 1
        return cls(
            input_size=int(size),
            resize=resize,
            resize_to=preprocessing.get("resize_to"),
            crop_rounding=preprocessing.get("crop_rounding") or "floor",
        )

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` zero padding of an ``(H, W)`` image, source pixels
        (``pad`` policy; zeros otherwise)."""
        if self.resize != "pad":
            return 0, 0, 0, 0
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        return top, side - height - top, left, side - width - left

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the (padded) image is resized to: ``(S, S)``, or for ``crop`` the shorter
        side at ``resize_to`` and the longer truncated as Hugging Face processors do."""
        if self.resize != "crop":
            return self.input_size, self.input_size
        short = self.resize_to or self.input_size
        if height <= width:
            return short, max(short, int(short * width / height))
        return max(short, int(short * height / width)), short

    def crop_offset(self, height: int, width: int) -> tuple[int, int]:
        """``(top, left)`` of the ``S x S`` window in the resized canvas of an ``(H, W)`` image
        (``crop`` policy, with its rounding; ``(0, 0)`` otherwise)."""
        if self.resize != "crop":
            return 0, 0
        canvas_h, canvas_w = self.resized_size(height, width)
        return self._centre(canvas_h), self._centre(canvas_w)

    def _centre(self, length: int) -> int:
        margin = length - self.input_size
        return round(margin / 2) if self.crop_rounding == "round" else margin // 2

    def axes(self, height: int, width: int) -> tuple[AxisMap, AxisMap]:
        """The row and column :class:`AxisMap` of an ``(H, W)`` image."""
        top, bottom, left, right = self.padding(height, width)
        canvas_h, canvas_w = self.resized_size(height, width)
        crop_top, crop_left = self.crop_offset(height, width)
        size = self.input_size
        return (
            AxisMap(height + top + bottom, canvas_h, crop_top, top, size),
            AxisMap(width + left + right, canvas_w, crop_left, left, size),
        )


def to_frame(
    array: np.ndarray,
    size: tuple[int, int],
    preprocessing: Frame | Mapping[str, Any] | Any | None = None,
) -> np.ndarray:
    """Sample an ``(H, W)`` array into the encoder's frame at resolution ``size``.

    Args:
        array: ``(H, W)`` over the original image (a bool mask, a float X-ray, ...).
        size: ``(h, w)`` of the output; the frame is cut into ``h x w`` equal cells.
        preprocessing: the encoder's geometry (see :meth:`Frame.of`); ``None`` stretches.

    Returns:
        ``(h, w)`` of ``array``'s dtype: cell ``(i, j)`` holds the source pixel under its centre,
        0 (False) where the centre lies in the padding.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected an (H, W) array, got shape {array.shape}")
    out_h, out_w = (int(v) for v in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"target size must be positive (h, w), got {size}")
    height, width = array.shape
    row_map, col_map = Frame.of(preprocessing).axes(height, width)
    rows, cols = row_map.sample(out_h), col_map.sample(out_w)
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    picked = array[np.clip(rows, 0, height - 1)[:, None], np.clip(cols, 0, width - 1)[None, :]]
    if inside.all():
        return picked
    return np.where(inside, picked, np.zeros((), dtype=array.dtype))
