"""Read one chest X-ray (DICOM, PNG, JPEG or TIFF) as float32 (H, W) in [0, 1], bright = dense.

Every radiometric decision is listed here so that a radiologist can audit it:

1. The format is decided by the file's content (magic bytes), never by its extension: DICOM
   ("DICM" at byte 128, or a preamble-less dataset in a .dcm/.dicom/extensionless file), PNG,
   JPEG, TIFF. Anything else is refused rather than guessed at.
2. DICOM follows the display pipeline of PS3.4 N.2 / PS3.3 C.11, in its order:
   stored values -> Modality LUT (Rescale Slope/Intercept, or the Modality LUT Sequence)
   -> VOI (the first window or VOI LUT the modality stored, i.e. the view the acquisition
   chose for reading) -> [0, 1] -> MONOCHROME1 inverted (1 - x), so that bone is white and air
   black whatever the photometric interpretation. Presentation LUT Shape is not applied: for
   DX/CR it only restates the photometric interpretation (INVERSE goes with MONOCHROME1), so
   applying it as well would invert twice. Pixel Padding Value is left as is (it lies outside
   the collimated field).
3. Without a VOI the stored range is scaled linearly over the full range its bits can take
   (Bits Stored, Pixel Representation) passed through the modality rescale, NOT per-image
   min-max: min-max stretches each film differently, so exposure and collimation would change
   the numbers an encoder sees (the reference study's lossy choice).
4. PNG/TIFF 8-bit are divided by 255, 16-bit by 65535 (the container's full scale; a 12-bit
   image stored in 16 bits therefore stays dark, as it is on any viewer). 1-bit images are 0/1.
   Float TIFFs are accepted only within [0, 1]. EXIF orientation and ICC profiles are ignored:
   pixels stay on the stored raster, where masks for them were drawn.
5. Colour (RGB, RGBA, LA, P, ...) becomes grey by ITU-R BT.601 luma (0.299 R + 0.587 G +
   0.114 B), alpha dropped, with a ColourToGreyWarning naming the file. Identical channels (grey
   saved as RGB, common for CXR JPEGs) are read from one channel, so no rounding is added.
6. Refused, with an ImageReadError naming the file: missing/empty/unrecognised files, truncated
   or undecodable data (never a half-black image), DICOMs without pixel data or with several
   frames, images under 16 px a side, NaN/inf. Decoder exceptions are wrapped, never leaked.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

MIN_SIDE_PX = 16
"""Smallest accepted width and height: anything smaller is an icon or a broken export."""

LUMA_BT601 = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights for R, G, B (the same weights PIL's convert("L") uses)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_DICOM_SUFFIXES = {".dcm", ".dicom", ""}  # where a preamble-less DICOM is worth trying
_PIXEL_DATA_TAG = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010), LE and BE
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


def _check_size(path: str | os.PathLike, width: int, height: int) -> None:
    if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
        raise ImageReadError(
            path,
            f"{width}x{height} pixels; too small, need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}",
        )


def _decode_failed(path: str | os.PathLike, what: str, exc: Exception) -> ImageReadError:
    return ImageReadError(path, f"{what} could not be decoded ({type(exc).__name__}: {exc})")


# --- DICOM ---------------------------------------------------------------------------------


def _read_dicom(path: str | os.PathLike, *, preamble: bool) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path, force=not preamble)
    except MemoryError:
        raise
    except Exception as exc:
        if not preamble:
            raise ImageReadError(path, _NOT_RECOGNISED) from exc
        raise _decode_failed(path, "DICOM", exc) from exc
    # A forced read of a non-DICOM file "succeeds" with junk tags: demand image-like elements.
    if not preamble and not any(k in ds for k in ("PixelData", "Rows", "SOPClassUID")):
        raise ImageReadError(path, _NOT_RECOGNISED)
    if "PixelData" not in ds:
        raise ImageReadError(path, _missing_pixel_data_reason(path))
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"multi-frame DICOM ({frames} frames); a chest radiograph is a single frame, "
            "so this is some other acquisition (fluoroscopy, tomosynthesis, a series)",
        )
    _check_size(path, int(ds.get("Columns") or 0), int(ds.get("Rows") or 0))
    syntax = _transfer_syntax(ds)
    try:
        compressed = syntax.is_compressed
    except ValueError:  # a private or misspelt UID: no decoder can know its encoding
        raise ImageReadError(path, f"unknown transfer syntax {syntax!s}") from None
    if compressed:
        _require_decoder(path, syntax)
    else:
        _check_native_length(path, ds)
    try:
        stored = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        raise _decode_failed(path, f"DICOM pixel data ({syntax.name})", exc) from exc

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            image = _dicom_grey_to_unit(ds, stored)
        except ImageReadError:
            raise
        except Exception as exc:
            raise _decode_failed(path, "DICOM modality/VOI transform", exc) from exc
        if photometric == "MONOCHROME1":
            # MONOCHROME1: the minimum value is displayed white (PS3.3 C.7.6.3.1.2), i.e. low
            # values are dense. Inverted after VOI, as the standard's pipeline does.
            np.subtract(np.float32(1.0), image, out=image)
        return image
    if stored.ndim == 3 and stored.shape[-1] == 3:
        # RGB or YBR (pydicom converts YBR to RGB): secondary captures; no VOI is defined.
        full_scale = 2 ** int(ds.BitsStored) - 1
        return _luma(path, stored, full_scale, f"DICOM {photometric}", alpha=False)
    raise ImageReadError(path, f"unsupported Photometric Interpretation {photometric!r}")


def _check_native_length(path: str | os.PathLike, ds: pydicom.Dataset) -> None:
    """Uncompressed pixel data shorter than Rows x Columns x samples x bits: a truncated file."""
    expected = (
        int(ds.get("Rows") or 0)
        * int(ds.get("Columns") or 0)
        * int(ds.get("SamplesPerPixel") or 1)
        * int(ds.get("BitsAllocated") or 8)
        // 8
    )
    got = len(ds.PixelData)
    if got < expected:
        raise ImageReadError(
            path, f"DICOM file is truncated: pixel data holds {got} of {expected} bytes"
        )


def _missing_pixel_data_reason(path: str | os.PathLike) -> str:
    """Tell 'no pixel data' from 'pixel data present but cut off' (pydicom drops the latter)."""
    with open(path, "rb") as f:
        raw = f.read()
    if any(tag in raw for tag in _PIXEL_DATA_TAG):
        return "DICOM Pixel Data (7FE0,0010) is present but unreadable; the file is truncated"
    return "DICOM has no Pixel Data (7FE0,0010); not an image (or truncated before its pixels)"


def _transfer_syntax(ds: pydicom.Dataset) -> pydicom.uid.UID:
    """The transfer syntax; for a preamble-less file, inferred from how pydicom parsed it."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if not little:
            syntax = ExplicitVRBigEndian
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return pydicom.uid.UID(syntax)


def _require_decoder(path: str | os.PathLike, syntax: pydicom.uid.UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            path, f"no pixel data decoder exists for transfer syntax {syntax.name} ({syntax})"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            path,
            f"no installed decoder for transfer syntax {syntax.name} ({syntax}); "
            f"install pylibjpeg with its libjpeg/openjpeg/rle plugins ({missing})",
        )


def _dicom_grey_to_unit(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI, mapped to [0, 1] (before any MONOCHROME1 inversion).

    stored: (H, W) integers as decoded. Returns float32 (H, W) in [0, 1], increasing with the
    modality value (for MONOCHROME2: brighter).
    """
    out_lo, out_hi = _modality_output_range(ds)
    if ds.get("ModalityLUTSequence"):
        values = apply_modality_lut(stored, ds)  # uint LUT output, range [0, 2**depth - 1]
    else:
        slope, intercept = _rescale(ds)
        values = stored.astype(np.float32)  # the one float copy; all later steps in place
        if (slope, intercept) != (1.0, 0.0):
            values *= np.float32(slope)
            values += np.float32(intercept)

    voi = _voi_kind(ds)
    if voi == "linear window":
        image = _linear_window(values, ds)
    elif voi is not None:  # VOI LUT Sequence, or a SIGMOID / LINEAR_EXACT window: pydicom
        if voi == "lut" and values.dtype.kind == "f":
            # A VOI LUT is indexed by integer modality values; pydicom would truncate floats.
            values = np.rint(values).astype(np.int64)
        voi_out = apply_voi_lut(values, ds, index=0)
        if voi == "lut":
            depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            # The LUT's output is defined over its nominal bit range (PS3.3 C.11.2.1.1).
            image = voi_out.astype(np.float32)
            image /= np.float32(2**depth - 1)
        else:
            # pydicom's window output spans the modality output range (out_lo -> out_hi).
            image = ((voi_out - out_lo) / (out_hi - out_lo)).astype(np.float32)
    else:
        # No VOI: full range the stored bits can take, through the modality transform.
        lo, hi = min(out_lo, out_hi), max(out_lo, out_hi)
        image = values.astype(np.float32, copy=False)
        image -= np.float32(lo)
        image /= np.float32(hi - lo)
    # Values outside the declared range (garbage in unused high bits) saturate, as on a viewer.
    return np.clip(image, 0.0, 1.0, out=image)


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        return 1.0, 0.0  # absent (usual for CR/DX): modality values are the stored values
    return float(slope), float(intercept)


def _modality_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Modality values of the lowest and highest stored value the bits allow.

    Mirrors the range pydicom's apply_windowing maps a window onto: a Modality LUT Sequence
    gives [0, 2**depth - 1]; otherwise Bits Stored / Pixel Representation, rescaled.
    Not sorted: with a negative slope the first value is the larger.
    """
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0, 2**bits - 1
    else:  # two's complement
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    slope, intercept = _rescale(ds)
    return lo * slope + intercept, hi * slope + intercept


def _voi_kind(ds: pydicom.Dataset) -> str | None:
    """Which VOI the first view uses: 'lut', 'linear window', 'other window' or None.

    A VOI LUT Sequence wins over a window when both exist (pydicom's prefer_lut default).
    """
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    return "linear window" if function == "LINEAR" else "other window"


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element (several windows: the first view)."""
    return float(value[0]) if isinstance(value, (list, tuple, MultiValue)) else float(value)


def _linear_window(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1) straight to [0, 1], in float32, in place.

    y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]: x <= c - 0.5 - (w-1)/2 -> 0,
    x > c - 0.5 + (w-1)/2 -> 1. The same function as pydicom.pixels.apply_voi_lut (a test
    checks it) at a tenth of its cost: pydicom works in float64 with boolean masks.
    """
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if width < 1:
        raise ValueError(f"Window Width {width} < 1 is invalid for the LINEAR VOI function")
    image = values.astype(np.float32, copy=False)
    if width == 1:  # the standard's limit case: a threshold at c - 0.5
        return (image > np.float32(center - 0.5)).astype(np.float32)
    image -= np.float32(center - 0.5)
    image /= np.float32(width - 1)
    image += np.float32(0.5)
    return image


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


def _scale(stored: np.ndarray, full_scale: int) -> np.ndarray:
    """Integers over [0, full_scale] -> float32 [0, 1].

    A correctly rounded division, so 0 and full scale map exactly to 0 and 1 and nothing can
    leave [0, 1]: no clip pass needed.
    """
    image = stored.astype(np.float32)
    image /= np.float32(full_scale)
    return image


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
