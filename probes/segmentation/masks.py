"""Segmentation targets for probes: decode a manifest's mask column, align it with the grids.

A mask column holds, per image, one of:

- ``path``: a mask image file (PNG, ...), relative paths resolved against the manifest root;
- ``siim``: SIIM-ACR run-length encoding over the image's own raster (``"-1"`` = empty);
- ``chexmask``: CheXmask run-length encoding over ``Height x Width`` given in the same row.

RLE needs the raster size. It is taken, in this order, from an explicit ``image_size``, from
``height_column``/``width_column`` (CheXmask: ``Height``/``Width`` when present), or from the
image file's header (no pixels decoded). An empty cell (NaN, ``""``, ``"-1"``) is an empty mask.

Every mask is brought to the model-input geometry the encoder saw (its ``resize`` / ``crop`` /
``pad`` policy, read from the store group's provenance) and to the training resolution in one
nearest-neighbour step: output pixel ``(i, j)`` takes the source pixel under its centre, so masks
stay binary and are never pushed through an image processor. Decoded masks are kept bit-packed
(:class:`PackedMasks`): 400k masks of 64 x 64 take 200 MB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd

from embedcache.geometry import to_frame
from embedcache.intake.manifest import Manifest
from embedcache.intake.masks import chexmask_rle_decode, read_mask, siim_rle_decode

__all__ = [
    "MaskKind",
    "MaskSource",
    "PackedMasks",
    "image_size_of",
    "image_to_model_input",
    "load_masks",
    "mask_reader",
    "mask_shape",
    "to_model_input",
]

MaskKind = Literal["auto", "path", "siim", "chexmask"]
MASK_KINDS = ("auto", "path", "siim", "chexmask")
_RLE_TEXT = re.compile(r"^[\s\d-]*$")  # digits, spaces and "-1": run lengths, never a path
_LOAD_BLOCK = 1024  # masks decoded per round of the thread pool
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.uint8)


class PackedMasks:
    """``n`` binary masks of one shape, bit-packed (1 bit per pixel).

    Args:
        bits: ``(n, ceil(h * w / 8))`` uint8 from ``np.packbits`` of each flattened mask.
        shape: ``(h, w)``.
    """

    def __init__(self, bits: np.ndarray, shape: tuple[int, int]):
        self.bits = np.ascontiguousarray(bits, dtype=np.uint8)
        self.shape = (int(shape[0]), int(shape[1]))
        if self.bits.ndim != 2 or self.bits.shape[1] != math.ceil(
            self.shape[0] * self.shape[1] / 8
        ):
            raise ValueError(f"bits of shape {self.bits.shape} do not hold masks of {self.shape}")

    @classmethod
    def from_array(cls, masks: np.ndarray) -> PackedMasks:
        """Pack a ``(n, h, w)`` array (nonzero = foreground)."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected (n, h, w) masks, got shape {masks.shape}")
        flat = masks.reshape(len(masks), -1).astype(bool, copy=False)
        return cls(np.packbits(flat, axis=1), masks.shape[1:])

    def __len__(self) -> int:
        return len(self.bits)

    def take(self, index: Any) -> np.ndarray:
        """Masks ``index`` as a bool ``(len(index), h, w)`` array."""
        h, w = self.shape
        bits = self.bits[np.asarray(index, dtype=np.int64).reshape(-1)]
        return np.unpackbits(bits, axis=1, count=h * w).reshape(-1, h, w).view(bool)

    def subset(self, index: Any) -> PackedMasks:
        return PackedMasks(self.bits[np.asarray(index, dtype=np.int64).reshape(-1)], self.shape)

    def area(self) -> np.ndarray:
        """``(n,)`` foreground fraction of each mask (counted on the packed bytes)."""
        counts = _POPCOUNT[self.bits].sum(1, dtype=np.int64)  # pad bits are zero
        return counts / float(self.shape[0] * self.shape[1])


def image_size_of(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (PIL formats, then DICOM)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except UnidentifiedImageError:
        pass
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"cannot tell the size of {path}: neither an image PIL reads nor DICOM")
    return int(ds.Rows), int(ds.Columns)


def to_model_input(
    mask: np.ndarray, size: tuple[int, int], preprocessing: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Bring a native ``(H, W)`` mask to the encoder's input geometry, sampled at ``size``.

    Args:
        mask: bool ``(H, W)`` over the original image.
        size: ``(h, w)`` of the output (the training resolution).
        preprocessing: the encoder's :class:`~embedcache.encoders.base.Preprocessing` as a dict
            (``input_size``, ``resize``, ``resize_to``, ``crop_rounding``); ``None`` or
            ``resize`` stretches.

    Returns:
        bool ``(h, w)``: output pixel ``(i, j)`` is the source pixel under the centre of model
        input region ``(i, j)``; pixels in padding are background
        (:func:`embedcache.geometry.to_frame`).
    """
    return to_frame(np.asarray(mask, dtype=bool), size, preprocessing)


def image_to_model_input(
    image: np.ndarray, size: tuple[int, int], preprocessing: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Any ``(H, W)`` array (an X-ray, a mask) sampled nearest-neighbour into the encoder's
    input geometry at ``size``, so that it lies under the grids' and the predicted masks'
    pixels (overlays). Padding is 0. Same sampling rule as :func:`to_model_input`."""
    return to_frame(image, size, preprocessing)


def _is_empty(value: object) -> bool:
    """None, NaN, "", "-1", or the number -1 (a column of only "-1" is read as integers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return value == -1
    return isinstance(value, str) and value.strip() in ("", "-1")


class MaskSource:
    """Decodes one mask column of a manifest table, row by row.

    Args:
        manifest: the cohort manifest (relative mask paths resolve against its root).
        column: the mask column.
        table: the rows to serve, positionally (default ``manifest.table``; pass a
            FeatureSet's ``table`` to follow the store's rows).
        kind: ``path``, ``siim``, ``chexmask``, or ``auto``: ``siim`` when every non-empty cell
            is run-length text, else ``path``. CheXmask is never guessed.
        image_size: ``(height, width)`` of every raster, for RLE columns.
        height_column, width_column: per-row raster size, for RLE columns.
    """

    def __init__(
        self,
        manifest: Manifest,
        column: str,
        *,
        table: pd.DataFrame | None = None,
        kind: MaskKind = "auto",
        image_size: tuple[int, int] | None = None,
        height_column: str | None = None,
        width_column: str | None = None,
    ):
        self.manifest = manifest
        self.table = manifest.table if table is None else table
        if column not in self.table.columns:
            raise KeyError(f"no mask column {column!r}; columns: {list(self.table.columns)}")
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
        self.column = column
        self.values = self.table[column].tolist()
        self.kind = self._guess_kind() if kind == "auto" else kind
        if self.kind == "chexmask" and height_column is None and "Height" in self.table.columns:
            height_column, width_column = "Height", "Width"
        for name in (height_column, width_column):
            if name is not None and name not in self.table.columns:
                raise KeyError(f"no size column {name!r} in the manifest")
        self.image_size = image_size
        self.height_column, self.width_column = height_column, width_column

    def _guess_kind(self) -> str:
        filled = [v for v in self.values if not _is_empty(v)]
        if filled and all(isinstance(v, str) and _RLE_TEXT.match(v) for v in filled):
            return "siim"
        return "path"

    def __len__(self) -> int:
        return len(self.values)

    def raster_size(self, position: int) -> tuple[int, int]:
        """``(height, width)`` of the raster the row's RLE (or empty cell) refers to."""
        if self.image_size is not None:
            return int(self.image_size[0]), int(self.image_size[1])
        if self.height_column is not None and self.width_column is not None:
            row = self.table.iloc[position]
            return int(row[self.height_column]), int(row[self.width_column])
        return image_size_of(self.table["path"].iat[position])

    def native(self, position: int) -> np.ndarray:
        """The row's mask, bool ``(H, W)`` over the original image."""
        value = self.values[position]
        if _is_empty(value):
            return np.zeros(self.raster_size(position), dtype=bool)
        try:
            if self.kind == "path":
                return read_mask(self.manifest.resolve(self.column, value))
            height, width = self.raster_size(position)
            if self.kind == "siim":
                return siim_rle_decode(value, height, width)
            return chexmask_rle_decode(value, height, width)
        except (ValueError, OSError) as error:
            image_id = self.table["image_id"].iat[position]
            raise ValueError(f"mask {self.column!r} of image {image_id!r}: {error}") from error

    def load(
        self,
        size: tuple[int, int],
        *,
        index: Sequence[int] | np.ndarray | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        workers: int = 4,
        progress: bool = False,
    ) -> PackedMasks:
        """Decode rows ``index`` (default all), align and resize them to ``size``, bit-packed."""
        positions = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)

        def one(position: int) -> np.ndarray:
            mask = to_model_input(self.native(int(position)), size, preprocessing)
            return np.packbits(mask.reshape(-1))

        bits = np.empty((len(positions), math.ceil(size[0] * size[1] / 8)), np.uint8)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(positions), desc=f"masks {self.column}")
        with ThreadPoolExecutor(max(1, workers)) as pool:  # PNG/zlib decoding drops the GIL
            for start in range(0, len(positions), _LOAD_BLOCK):  # bounded queue of futures
                block = positions[start : start + _LOAD_BLOCK].tolist()
                for i, packed in enumerate(pool.map(one, block), start=start):
                    bits[i] = packed
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
        return PackedMasks(bits, size)


def load_masks(
    features: Any,
    column: str,
    size: tuple[int, int],
    *,
    kind: MaskKind = "auto",
    image_size: tuple[int, int] | None = None,
    height_column: str | None = None,
    width_column: str | None = None,
    geometry: Mapping[str, Any] | Literal["auto"] | None = "auto",
    workers: int = 4,
    progress: bool = False,
) -> PackedMasks:
    """Masks of ``column`` for every row of a FeatureSet, in its row order.

    Args:
        features: a :class:`probes.core.features.FeatureSet` (``manifest``, ``table``, ``group``).
        size: training resolution ``(h, w)``.
        geometry: the encoder's preprocessing dict; ``auto`` reads it from the store group's
            provenance (``encoder.preprocessing``), ``None`` stretches the mask.
    """
    if geometry == "auto":
        attrs = features.group.attrs
        geometry = (attrs.get("encoder") or attrs.get("key_material") or {}).get("preprocessing")
    source = MaskSource(
        features.manifest,
        column,
        table=features.table,
        kind=kind,
        image_size=image_size,
        height_column=height_column,
        width_column=width_column,
    )
    return source.load(size, preprocessing=geometry, workers=workers, progress=progress)


def mask_reader(y: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``take(index) -> (b, h, w)`` class labels, from PackedMasks or an ``(n, h, w)`` array."""
    if isinstance(y, PackedMasks):
        return y.take
    y = np.asarray(y)
    if y.ndim != 3:
        raise ValueError(f"masks must be (n, h, w), got shape {y.shape}")
    return lambda index: y[index]


def mask_shape(y: Any) -> tuple[int, int]:
    """``(h, w)`` of PackedMasks or of an ``(n, h, w)`` array."""
    shape = y.shape if isinstance(y, PackedMasks) else np.shape(y)[1:]
    return (int(shape[0]), int(shape[1]))
