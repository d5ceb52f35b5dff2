"""Segmentation mask codecs: SIIM-ACR RLE, CheXmask RLE, mask image files, nearest resizing.

Every function returns or takes a boolean ``(H, W)`` array, True = foreground.

The two run-length dialects are easy to confuse, so both are spelled out:

- SIIM-ACR (``train-rle.csv``): whitespace-separated pairs ``(offset, length)`` where ``offset``
  counts pixels from the END of the previous run (from pixel 0 for the first run), over the
  COLUMN-major flattened ``H x W`` raster. ``"-1"`` (also with spaces), an empty string or NaN
  means an empty mask; an image with several regions has several csv rows, whose union is the
  mask.
- CheXmask: pairs ``(start, length)`` with ``start`` 1-based and ABSOLUTE, over the ROW-major
  raster of the ``Height x Width`` given in the same csv row.

Masks are resized with nearest neighbour only: pushing a mask through an image processor and
re-thresholding it (as the reference study did) shifts and erodes thin structures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from os import PathLike

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "chexmask_rle_decode",
    "chexmask_rle_encode",
    "read_mask",
    "resize_mask",
    "siim_rle_decode",
    "siim_rle_encode",
]

SIIM_EMPTY = "-1"


def _is_empty_rle(rle: object) -> bool:
    """True for the spellings of "no mask": None, NaN, "", "-1" (spaces allowed)."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and rle.strip() in ("", SIIM_EMPTY)


def _parse_pairs(rle: str, dialect: str) -> tuple[np.ndarray, np.ndarray]:
    """Split an RLE string into its two integer columns (first values, run lengths)."""
    tokens = rle.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError) as error:
        raise ValueError(f"{dialect} RLE holds a value that is not an integer: {error}") from None
    if values.size % 2:
        raise ValueError(
            f"{dialect} RLE has an odd number of values ({values.size}); expected (start, length) pairs"
        )
    firsts, lengths = values[0::2], values[1::2]
    if (lengths < 0).any():
        bad = int(np.flatnonzero(lengths < 0)[0])
        raise ValueError(f"{dialect} RLE run {bad} has a negative length ({lengths[bad]})")
    return firsts, lengths


def _paint_runs(starts: np.ndarray, ends: np.ndarray, n_pixels: int) -> np.ndarray:
    """Flat bool raster with ``[start, end)`` runs set; overlapping runs simply union."""
    # A +1/-1 difference array costs O(pixels + runs) with no Python loop over runs.
    delta = np.zeros(n_pixels + 1, dtype=np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:-1]) > 0


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got height={height}, width={width}")


def _check_extent(ends: np.ndarray, height: int, width: int, dialect: str) -> None:
    if ends.size and ends.max() > height * width:
        bad = int(np.argmax(ends))
        raise ValueError(
            f"{dialect} RLE run {bad} ends at pixel {ends[bad]}, past the end of the "
            f"{height}x{width} raster ({height * width} pixels): wrong image size or dialect?"
        )


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and lengths of the True runs in a flat bool array."""
    padded = np.concatenate(([False], flat, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def _as_mask_2d(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _join_pairs(firsts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.stack([firsts, lengths], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def siim_rle_decode(rle: str | Sequence[str], height: int = 1024, width: int = 1024) -> np.ndarray:
    """Decode SIIM-ACR relative, column-major RLE into a bool ``(height, width)`` mask.

    ``rle`` is one csv cell or a sequence (or pandas Series) of cells (the several rows of one image): the union of
    their regions is returned. ``"-1"``, ``" -1"``, ``""``, NaN and None decode to an empty mask.
    SIIM images are 1024 x 1024 pixels, hence the defaults.

    Raises ValueError for an odd number of values, non-integers, a negative offset or length, or
    a run that ends past the ``height * width`` raster.
    """
    _check_size(height, width)
    if not isinstance(rle, str) and not _is_empty_rle(rle) and isinstance(rle, Iterable):
        # Any iterable of cells (list, tuple, pandas Series of one image's rows).
        mask = np.zeros((height, width), dtype=bool)
        for cell in rle:
            mask |= siim_rle_decode(cell, height, width)
        return mask
    if _is_empty_rle(rle):
        return np.zeros((height, width), dtype=bool)
    if not isinstance(rle, str):
        raise ValueError(f"SIIM RLE must be a string, got {type(rle).__name__}")
    offsets, lengths = _parse_pairs(rle, "SIIM")
    if (offsets < 0).any():
        bad = int(np.flatnonzero(offsets < 0)[0])
        raise ValueError(f"SIIM RLE run {bad} has a negative offset ({offsets[bad]})")
    # start_i = sum of all offsets up to i + all lengths before i
    starts = np.cumsum(offsets) + np.cumsum(lengths) - lengths
    ends = starts + lengths
    _check_extent(ends, height, width, "SIIM")
    flat = _paint_runs(starts, ends, height * width)
    # Column-major raster: pixel k is (row k % H, column k // H).
    return flat.reshape(width, height).T.copy()


def siim_rle_encode(mask: np.ndarray) -> str:
    """Encode a bool ``(H, W)`` mask as SIIM-ACR relative, column-major RLE; ``"-1"`` if empty."""
    mask = _as_mask_2d(mask)
    starts, lengths = _runs(mask.ravel(order="F"))
    if starts.size == 0:
        return SIIM_EMPTY
    previous_ends = np.concatenate(([0], starts[:-1] + lengths[:-1]))
    return _join_pairs(starts - previous_ends, lengths)


def chexmask_rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode CheXmask absolute, 1-based, row-major RLE into a bool ``(height, width)`` mask.

    ``height`` and ``width`` come from the same CheXmask csv row (the original image size).
    An empty string or NaN decodes to an empty mask. Raises ValueError for an odd number of
    values, non-integers, a start below 1, a negative length, or a run past the raster's end.
    """
    _check_size(height, width)
    if rle is None or (isinstance(rle, float) and math.isnan(rle)) or str(rle).strip() == "":
        return np.zeros((height, width), dtype=bool)
    starts, lengths = _parse_pairs(str(rle), "CheXmask")
    if (starts < 1).any():
        bad = int(np.flatnonzero(starts < 1)[0])
        raise ValueError(f"CheXmask RLE run {bad} starts at {starts[bad]}; starts are 1-based")
    starts = starts - 1
    ends = starts + lengths
    _check_extent(ends, height, width, "CheXmask")
    return _paint_runs(starts, ends, height * width).reshape(height, width)


def chexmask_rle_encode(mask: np.ndarray) -> str:
    """Encode a bool ``(H, W)`` mask as CheXmask absolute, 1-based, row-major RLE ("" if empty)."""
    mask = _as_mask_2d(mask)
    starts, lengths = _runs(mask.ravel(order="C"))
    return _join_pairs(starts + 1, lengths)


def read_mask(path: str | PathLike[str]) -> np.ndarray:
    """Read a PNG/JPEG/TIFF mask file as a bool ``(H, W)`` array.

    Foreground is any nonzero pixel, except in JPEG files, where compression smears values
    around edges: there it is a value above half of the image's maximum (an all-black JPEG stays
    exactly zero, so empty masks stay empty). Colour masks count a pixel as foreground if any
    colour channel does; an alpha channel is ignored.

    Raises ValueError naming the file if it cannot be decoded as an image.
    """
    try:
        with Image.open(path) as image:
            image_format = image.format
            mode = image.mode
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"cannot read mask file {path!s}: {error}") from error
    if pixels.ndim == 3:
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            pixels = pixels[..., :-1]
        pixels = pixels.max(axis=-1)
    if pixels.ndim != 2:
        raise ValueError(f"mask file {path!s} has unexpected pixel shape {pixels.shape}")
    if image_format == "JPEG":
        return pixels > pixels.max() / 2
    return pixels != 0


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool ``(H, W)`` mask to ``size = (h, w)`` by nearest neighbour; bool out.

    Output pixel ``(i, j)`` takes the input pixel under its centre, so a k-times enlargement
    repeats every pixel in a ``k x k`` block and no value is ever invented or thresholded.
    """
    mask = _as_mask_2d(mask)
    out_h, out_w = (int(v) for v in size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"target size must be positive (h, w), got {size}")
    in_h, in_w = mask.shape
    # Integer arithmetic for the centre mapping avoids float rounding at exact pixel borders.
    rows = ((2 * np.arange(out_h) + 1) * in_h) // (2 * out_h)
    cols = ((2 * np.arange(out_w) + 1) * in_w) // (2 * out_w)
    return mask[rows[:, None], cols[None, :]]
