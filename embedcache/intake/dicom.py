"""Read one DICOM chest X-ray as float32 (H, W) in [0, 1], bright = dense.

Reached through embedcache.intake.images.read_image, which decides by content that a file is
DICOM. Every DICOM radiometric decision is listed here so that a radiologist can audit it
(the other formats' decisions are in embedcache.intake.images):

1. DICOM follows the display pipeline of PS3.4 N.2 / PS3.3 C.11, in its order:
   stored values -> Modality LUT (Rescale Slope/Intercept, or the Modality LUT Sequence)
   -> VOI (the first window or VOI LUT the modality stored, i.e. the view the acquisition
   chose for reading) -> [0, 1] -> MONOCHROME1 inverted (1 - x), so that bone is white and air
   black whatever the photometric interpretation. Presentation LUT Shape is not applied: for
   DX/CR it only restates the photometric interpretation (INVERSE goes with MONOCHROME1), so
   applying it as well would invert twice. Pixel Padding Value is left as is (it lies outside
   the collimated field).
2. Without a VOI the stored range is scaled linearly over the full range its bits can take
   (Bits Stored, Pixel Representation) passed through the modality rescale, NOT per-image
   min-max: min-max stretches each film differently, so exposure and collimation would change
   the numbers an encoder sees (the reference study's lossy choice).
3. Colour DICOMs (RGB, or YBR converted to RGB by pydicom) become grey by BT.601 luma over
   their Bits Stored full scale, with a ColourToGreyWarning (see embedcache.intake.pixels).
4. Refused, with an ImageReadError naming the file: no pixel data, truncated pixel data,
   several frames, an unknown transfer syntax or one without an installed decoder, an
   unsupported photometric interpretation. Decoder exceptions are wrapped, never leaked.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from embedcache.intake.errors import _NOT_RECOGNISED, ImageReadError, _check_size, _decode_failed
from embedcache.intake.pixels import _luma

_PIXEL_DATA_TAG = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010), LE and BE


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
