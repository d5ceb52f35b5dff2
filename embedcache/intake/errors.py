"""What the image readers share: their error and warning types and the checks that raise them.

Kept apart from images.py and dicom.py so that both can use it without an import cycle;
embedcache.intake.images re-exports the public names.
"""

from __future__ import annotations

import os

MIN_SIDE_PX = 16
"""Smallest accepted width and height: anything smaller is an icon or a broken export."""

_NOT_RECOGNISED = "not a recognised image (expected DICOM, PNG, JPEG or TIFF content)"


class ImageReadError(ValueError):
    """Unreadable or unusable image. str(err) names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fsdecode(path)
        self.reason = reason
        # args = (path, reason) so that the error pickles across DataLoader worker processes.
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ColourToGreyWarning(UserWarning):
    """A colour (or grey-as-RGB) image was converted to grey; filter it by this category."""


def _check_size(path: str | os.PathLike, width: int, height: int) -> None:
    if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
        raise ImageReadError(
            path,
            f"{width}x{height} pixels; too small, need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}",
        )


def _decode_failed(path: str | os.PathLike, what: str, exc: Exception) -> ImageReadError:
    return ImageReadError(path, f"{what} could not be decoded ({type(exc).__name__}: {exc})")
