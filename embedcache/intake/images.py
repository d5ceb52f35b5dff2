"""Read one chest X-ray (DICOM, PNG, JPEG or TIFF) as float32 (H, W) in [0, 1], bright = dense.

Every radiometric decision is listed here so that a radiologist can audit it:

1. The format is decided by the file's content (magic bytes), never by its extension: DICOM
   ("DICM" at byte 128, or a preamble-less dataset in a .dcm/.dicom/extensionless file), PNG,
   JPEG, TIFF. Anything else is refused rather than guessed at.
2. DICOM is read by embedcache.intake.dicom, whose docstring lists its decisions: the display
   pipeline of PS3.4 N.2 / PS3.3 C.11 (Modality LUT -> first VOI -> [0, 1] -> MONOCHROME1
   inverted), and without a VOI the full range the stored bits can take, NOT per-image min-max.
3. PNG/TIFF 8-bit are divided by 255, 16-bit by 65535 (the container's full scale; a 12-bit
   image stored in 16 bits therefore stays dark, as it is on any viewer). 1-bit images are 0/1.
   Float TIFFs are accepted only within [0, 1]. EXIF orientation and ICC profiles are ignored:
   pixels stay on the stored raster, where masks for them were drawn.
4. Colour (RGB, RGBA, LA, P, ...) becomes grey by ITU-R BT.601 luma (0.299 R + 0.587 G +
   0.114 B), alpha dropped, with a ColourToGreyWarning naming the file. Identical channels (grey
   saved as RGB, common for CXR JPEGs) are read from one channel, so no rounding is added.
5. Refused, with an ImageReadError naming the file: missing/empty/unrecognised files, truncated
   or undecodable data (never a half-black image), DICOMs without pixel data or with several
   frames, images under 16 px a side, NaN/inf. Decoder exceptions are wrapped, never leaked.

ImageReadError, ColourToGreyWarning and MIN_SIDE_PX live in embedcache.intake.errors and
LUMA_BT601 in embedcache.intake.pixels; all are re-exported here.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile

from embedcache.intake.dicom import _read_dicom
from embedcache.intake.errors import (
    _NOT_RECOGNISED,
    MIN_SIDE_PX,
    ColourToGreyWarning,
    ImageReadError,
    _check_size,
    _decode_failed,
)
from embedcache.intake.pixels import LUMA_BT601, _luma, _scale

__all__ = ["LUMA_BT601", "MIN_SIDE_PX", "ColourToGreyWarning", "ImageReadError", "read_image"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_DICOM_SUFFIXES = {".dcm", ".dicom", ""}  # where a preamble-less DICOM is worth trying


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a chest X-ray as float32 (H, W) in [0, 1], bright = dense (bone white, air black).

    Dispatches on the file's content (DICOM, PNG, JPEG, TIFF); see the module docstring for
    every radiometric decision. Raises ImageReadError (naming the file) for anything unusable,
    and RuntimeError if PIL was told to load truncated images (a process-wide setting).
    Warns ColourToGreyWarning when colour is converted to grey.
    """
    head = _read_head(path)
    if head[128:132] == b"DICM":
        return _read_dicom(path, preamble=True)
    if head.startswith(_PNG_MAGIC):
        return _read_pil(path, "PNG")
    if head.startswith(_JPEG_MAGIC):
        return _read_pil(path, "JPEG")
    if head[:4] in _TIFF_MAGICS:
        return _read_pil(path, "TIFF")
    if os.path.splitext(os.fsdecode(path))[1].lower() in _DICOM_SUFFIXES:
        return _read_dicom(path, preamble=False)
    raise ImageReadError(path, _NOT_RECOGNISED)


def _read_head(path: str | os.PathLike) -> bytes:
    """The first 132 bytes (enough for the DICOM preamble and every magic number)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from None
    if not head:
        raise ImageReadError(path, "empty file")
    return head


# --- PNG / JPEG / TIFF through PIL ---------------------------------------------------------


def _read_pil(path: str | os.PathLike, fmt: str) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide flag: with it, PIL pads truncated files with black instead of failing.
        # Not a per-image problem, so not an ImageReadError: the run itself must stop.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images "
            "would load as partly black pictures; set it to False before reading images"
        )
    try:
        with Image.open(path, formats=[fmt]) as img:
            _check_size(path, *img.size)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageReadError(
                    path, f"{fmt} with {frames} frames/pages; a chest radiograph is one image"
                )
            img.load()  # force the full decode now: truncation must fail here, loudly
            return _pil_to_unit(path, img, fmt)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise _decode_failed(path, fmt, exc) from exc


def _pil_to_unit(path: str | os.PathLike, img: Image.Image, fmt: str) -> np.ndarray:
    """A loaded PIL image -> float32 (H, W) in [0, 1]; one array copy plus one float array."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img).astype(np.float32)  # bool -> 0/1
    if mode == "L":
        return _scale(np.asarray(img), 255)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _scale(np.asarray(img), 65535)
    if mode == "I":
        return _scale(np.asarray(img), 2 ** _unsigned_bits(path, img, fmt) - 1)
    if mode == "F":
        return _checked_float(path, np.asarray(img))
    if mode == "LA":
        grey = _scale(np.asarray(img)[..., 0], 255)
        warnings.warn(
            f"{os.fsdecode(path)}: LA image read as grey, alpha dropped",
            ColourToGreyWarning,
            stacklevel=2,
        )
        return grey
    if mode not in ("RGB", "RGBA", "RGBX"):
        if mode.startswith("I;"):
            raise ImageReadError(path, f"unsupported {fmt} pixel mode {mode!r}")
        img = img.convert("RGB")  # palette, CMYK, YCbCr, ... (a palette's alpha is dropped)
    return _luma(path, np.asarray(img), 255, f"{fmt} {mode}", alpha="A" in mode)


def _unsigned_bits(path: str | os.PathLike, img: Image.Image, fmt: str) -> int:
    """Bit depth of a 32-bit-integer PIL image: old Pillow's 16-bit PNG, or an integer TIFF."""
    if fmt == "PNG":
        return 16  # PNG has no deeper grey; older Pillow decoded 16-bit grey to mode "I"
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (32,))
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    sample_format = tags.get(339, 1)
    sample_format = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format)
    if sample_format != 1:
        raise ImageReadError(
            path, f"signed integer {fmt} is not supported (no defined black level); use unsigned"
        )
    return bits


def _checked_float(path: str | os.PathLike, image: np.ndarray) -> np.ndarray:
    """A float image is taken as already in [0, 1]; anything else is refused, not rescaled."""
    image = image.astype(np.float32)  # also a writable native-endian copy of PIL's buffer
    if not np.isfinite(image).all():
        raise ImageReadError(path, "float image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageReadError(
            path, f"float pixel values span [{lo:g}, {hi:g}]; expected within [0, 1]"
        )
    return image
