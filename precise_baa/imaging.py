"""Reading radiographs: PNG / JPEG / TIFF / BMP (8- or 16-bit) and DICOM.

One image convention everywhere downstream: ``float32`` array ``[H, W]`` in ``[0, 1]``,
bright = dense (bone), dark = background, as a radiograph is read on a light box.

Every failure is an :class:`~precise_baa.errors.ImageReadError` carrying the file name and a
one-line reason. Patient names are read only when asked (``keep_patient_name=True``).

Decompression bombs: the size a file declares (PNG/JPEG/TIFF/BMP header, DICOM Rows x Columns)
is checked against a limit *before* any pixel is decoded: :data:`DEFAULT_MAX_PIXELS` (100
megapixels), or ``PRECISE_BAA_MAX_PIXELS``, or ``max_pixels=`` per call. Decoders are kept
quiet: what libpng / OpenCV would print on stderr for a broken file goes into the reason.

>>> rad = read_radiograph("examples/phantom_000.png")  # doctest: +SKIP
>>> rad.pixels.shape, rad.pixels.dtype                 # doctest: +SKIP
((512, 512), dtype('float32'))
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import ImageReadError

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
MIN_SIDE = 64  # pixels; smaller images cannot show 13 ROIs
DEFAULT_MAX_PIXELS = 100_000_000  # declared width x height above this is refused undecoded
MAX_PIXELS_ENV = "PRECISE_BAA_MAX_PIXELS"


@dataclass(frozen=True)
class RadiographMeta:
    """What the file says about the image and the patient (all optional)."""

    source: str | None = None
    format: str | None = None  # "png", "tiff", "dicom", ...
    bits: int | None = None  # stored bits per pixel
    sex: str | None = None  # "M" / "F" when the file states it
    chronological_age_years: float | None = None
    patient_id: str | None = None
    patient_name: str | None = None  # only with keep_patient_name=True
    photometric: str | None = None
    pixel_spacing_mm: float | None = None
    extra: dict = field(default_factory=dict)
    #: the hand the file states (DICOM ImageLaterality / Laterality): "L", "R" or None
    laterality: str | None = None
    #: True when the pixels were mirrored left-right on reading (a right hand, assessed as a
    #: left one as the standards are defined); column x of ``pixels`` is column W-1-x of the file
    mirrored: bool = False


@dataclass(frozen=True)
class Radiograph:
    pixels: np.ndarray  # float32 [H, W] in [0, 1], bright = bone
    meta: RadiographMeta = RadiographMeta()

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def is_dicom_file(path: Path) -> bool:
    """DICOM by suffix, or by the ``DICM`` magic at byte 128 (exports often lack a suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_candidate(path: Path) -> bool:
    """Whether a folder scan should treat ``path`` as an input radiograph."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and is_dicom_file(path)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Scale to ``[0, 1]`` float32: by the dtype's range for 8-bit, by the image's own range
    otherwise (16-bit files rarely use the whole 0..65535 range)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    a = arr.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return (a - lo) / (hi - lo)


def _check_pixels(path: str, arr: np.ndarray) -> None:
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise ImageReadError(path, f"3-D volume ({arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]}); "
                                   "a single 2-D radiograph is needed")
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"{arr.ndim}-D pixel array; a single 2-D radiograph is needed")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ImageReadError(path, "empty image (no pixels)")
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(path, f"too small ({w}x{h} px); at least {MIN_SIDE} px per side needed")


def _to_gray(path: str, arr: np.ndarray) -> np.ndarray:
    import cv2

    if arr.ndim == 2:
        return arr
    if arr.shape[2] == 1:
        return arr[:, :, 0]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    # OpenCV gives BGR; radiographs stored as colour are grey in all three channels.
    return cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)


def _finish(path: str, arr: np.ndarray, meta: RadiographMeta) -> Radiograph:
    _check_pixels(path, arr)
    gray = _to_gray(path, arr)
    if gray.dtype.kind == "f" and not np.isfinite(gray).all():
        raise ImageReadError(path, "pixel values include NaN or infinity")
    if gray.min() == gray.max():
        raise ImageReadError(path, "blank image (every pixel has the same value)")
    return Radiograph(np.ascontiguousarray(to_unit_float(gray), dtype=np.float32), meta)


# --------------------------------------------------------------------------------------------
def parse_max_pixels(text: str | int | float) -> int:
    """``"100M"`` / ``"2.5e8"`` / ``250000000`` -> pixels (a positive whole number); ``M`` means
    megapixels. Raises ``ValueError`` with a one-line reason."""
    raw = str(text).strip()
    scale = 1
    if raw[-1:] in ("M", "m"):
        raw, scale = raw[:-1], 1_000_000
    try:
        value = float(raw) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a pixel count (e.g. 100M or 100000000)") from None
    if not np.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} is not a positive pixel count (e.g. 100M or 100000000)")
    return int(value)


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The limit in force: ``max_pixels``, else ``PRECISE_BAA_MAX_PIXELS``, else 100 MP."""
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            return parse_max_pixels(env)
        except ValueError as e:
            from .errors import InputError

            raise InputError(f"{MAX_PIXELS_ENV}: {e}") from None
    return DEFAULT_MAX_PIXELS


def _check_declared_size(path: Path, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageReadError(
            path, f"image too large: {width} x {height} px declared ({width * height / 1e6:.0f} MP) "
                  f"> limit {limit / 1e6:g} MP (--max-pixels)")


def declared_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG / JPEG / TIFF / BMP header, without decoding pixels (None
    when no header can be read: the decoder then says what is wrong)."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    # The plugins' classes parse the header only; PIL.Image.open would add its own
    # decompression-bomb error (above ~179 MP), without the width and height.
    readers = (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile,
               TiffImagePlugin.TiffImageFile, BmpImagePlugin.BmpImageFile)
    try:
        with open(path, "rb") as f:
            for cls in readers:
                f.seek(0)
                try:
                    w, h = cls(f).size
                except Exception:  # noqa: BLE001 - not this format, or a broken header
                    continue
                return int(w), int(h)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def quiet_decoder() -> Iterator[list[str]]:
    """Run a decoder with stderr (file descriptor 2) captured: libpng and OpenCV print there
    directly. Yields a list that receives the captured lines when the block ends."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hide
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(x.strip() for x in sink.read(8192).decode("utf-8", "replace").splitlines()
                         if x.strip())


def _decoder_detail(lines: list[str]) -> str:
    """The decoder's own words for a failure (``libpng error: IDAT: CRC error``), one line."""
    if not lines:
        return ""
    first = next((x for x in lines if "error" in x.lower()), lines[0])
    # "[ WARN:0@0.05] global grfmt_png.cpp:793 readFromStreamOrBuffer PNG input ..." -> "PNG input ..."
    text = re.sub(r"^\[\s*\w+:[^\]]*\]\s*(global\s+\S+\s+\S+\s+)?", "", first)
    return "; " + text[:160]


def _read_raster(path: Path, max_pixels: int | None = None) -> Radiograph:
    import cv2

    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    limit = max_pixels_limit(max_pixels)
    size = declared_size(path)
    if size is not None:
        _check_declared_size(path, *size, limit)
    data = np.fromfile(str(path), dtype=np.uint8)
    suffix = path.suffix.lower()
    with quiet_decoder() as said:
        try:
            pages = None
            if suffix in (".tif", ".tiff"):
                ok, pages = cv2.imdecodemulti(data, cv2.IMREAD_UNCHANGED)
            arr = None if pages is not None and len(pages) > 1 else \
                cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:  # OpenCV's own size limit and assertions: a multi-line message
            arr = None
    if pages is not None and len(pages) > 1:
        raise ImageReadError(path, f"multi-page TIFF ({len(pages)} pages, a 3-D volume); "
                                   "a single 2-D radiograph is needed")
    if arr is None:
        raise ImageReadError(path, "not an image (unreadable or unsupported format"
                                   f"{_decoder_detail(said)})")
    _check_declared_size(path, arr.shape[1], arr.shape[0], limit)
    bits = 8 * arr.dtype.itemsize if arr.dtype.kind in "ui" else 32
    fmt = {".jpg": "jpeg", ".tif": "tiff"}.get(suffix, suffix.lstrip("."))
    return _finish(str(path), arr, RadiographMeta(source=str(path), format=fmt, bits=bits))


# --------------------------------------------------------------------------------------------
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.I)


def parse_dicom_age(value: str | None) -> float | None:
    """DICOM AS value (``"012Y"``, ``"006M"``, ``"030W"``, ``"100D"``) in years."""
    if not value:
        return None
    m = _AGE_RE.match(str(value))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2).upper()
    return round(n / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[unit], 3)


def _dicom_date(value: object) -> _dt.date | None:
    text = str(value or "").strip()
    try:
        return _dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _age_from_dates(ds) -> float | None:
    birth = _dicom_date(ds.get("PatientBirthDate"))
    study = None
    for tag in ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate"):
        study = _dicom_date(ds.get(tag))
        if study:
            break
    if birth and study and study >= birth:
        return round((study - birth).days / 365.25, 3)
    return None


CODECS_HINT = ("install the decoders: pip install 'precise-baa[dicom-codecs]' (pylibjpeg, "
               "pylibjpeg-libjpeg, pylibjpeg-openjpeg), or have the sender use an uncompressed "
               "transfer syntax (Explicit VR Little Endian)")


def _decode_failure(ds, e: Exception) -> str:
    """One line saying why the pixel data did not decode and, for compressed data, what to do."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if ts is None or not getattr(ts, "is_compressed", False):
        return f"DICOM pixel data cannot be decoded ({type(e).__name__}: {first})"
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(ts).is_available
    except (NotImplementedError, ValueError):
        available = False
    name = f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    if not available:
        return f"no decoder here for the compressed transfer syntax {name}: {CODECS_HINT}"
    return f"compressed pixel data ({name}) cannot be decoded, corrupt or unsupported: {first}"


def _laterality(ds) -> str | None:
    """"L" / "R" / "B" (both) from ImageLaterality, else the series' Laterality; None if unstated."""
    for tag in ("ImageLaterality", "Laterality"):
        value = str(ds.get(tag, "") or "").strip().upper()
        if value in ("L", "R", "B"):
            return value
    return None


def _read_dicom(path: Path, keep_patient_name: bool, max_pixels: int | None = None) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file (no DICOM header)") from None
    except Exception as e:  # truncated / corrupt files raise many different things
        raise ImageReadError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM without pixel data (not an image object)")
    if str(ds.get("Manufacturer", "") or "") == "precise-baa":
        raise ImageReadError(path, "a precise-baa result (overlay image), not a radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"3-D/multi-frame DICOM ({frames} frames); "
                                   "a single 2-D radiograph is needed")
    laterality = _laterality(ds)
    if laterality == "B":
        raise ImageReadError(path, "both hands in one image (DICOM laterality B); one hand per "
                                   "image is needed: send the left hand alone")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        rows = cols = 0
    _check_declared_size(path, cols, rows, max_pixels_limit(max_pixels))
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ImageReadError(path, _decode_failure(ds, e)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and photometric.startswith("MONOCHROME"):
        raise ImageReadError(path, f"3-D DICOM volume {arr.shape}; a single 2-D radiograph is needed")
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)  # VOI LUT sequence, else window centre/width if present
        arr = np.asarray(arr, dtype=np.float32)
        if photometric == "MONOCHROME1":  # low values are bright: invert
            arr = arr.max() - arr
    elif arr.ndim == 3:
        arr = np.asarray(arr, dtype=np.float32).mean(axis=2)  # RGB / YBR stored greyscale
    if laterality == "R" and arr.ndim == 2:  # a right hand: assessed as a mirrored left hand
        arr = arr[:, ::-1]
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    age = parse_dicom_age(ds.get("PatientAge")) or _age_from_dates(ds)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    meta = RadiographMeta(
        source=str(path),
        format="dicom",
        bits=int(ds.get("BitsStored", 0) or 0) or None,
        sex=sex if sex in ("M", "F") else None,
        chronological_age_years=age,
        patient_id=str(ds.get("PatientID", "") or "") or None,
        patient_name=(str(ds.get("PatientName", "") or "") or None) if keep_patient_name else None,
        photometric=photometric,
        pixel_spacing_mm=float(spacing[0]) if spacing else None,
        laterality=laterality,
        mirrored=laterality == "R" and arr.ndim == 2,
    )
    return _finish(str(path), arr, meta)


# --------------------------------------------------------------------------------------------
def read_radiograph(path: str | Path, keep_patient_name: bool = False,
                    max_pixels: int | None = None) -> Radiograph:
    """Read one radiograph file into the float32 ``[0, 1]`` convention.

    ``max_pixels``: refuse images declaring more pixels (default: see :func:`max_pixels_limit`).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file" if not path.is_symlink()
                             else "broken symbolic link (its target does not exist)")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file (a pipe, socket or device)")
    if is_dicom_file(path):
        return _read_dicom(path, keep_patient_name, max_pixels)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return _read_raster(path, max_pixels)
    # Unknown suffix: try as a raster image, then fail with a clear reason.
    try:
        return _read_raster(path, max_pixels)
    except ImageReadError as e:
        if e.reason.startswith("not an image"):
            raise ImageReadError(
                path, f"not a supported image (suffix {path.suffix or 'none'}; "
                      "PNG, JPEG, TIFF, BMP or DICOM expected)") from None
        raise


def as_radiograph(image: object, keep_patient_name: bool = False) -> Radiograph:
    """A :class:`Radiograph` from a path, a Radiograph, or a 2-D array (uint8/uint16/float)."""
    if isinstance(image, Radiograph):
        return image
    if isinstance(image, (str, Path)):
        return read_radiograph(image, keep_patient_name)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype.kind == "f":
            _check_pixels("<array>", arr)
            if not np.isfinite(arr).all():
                raise ImageReadError("<array>", "pixel values include NaN or infinity")
            gray = arr if arr.ndim == 2 else arr.mean(axis=2)
            lo, hi = float(gray.min()), float(gray.max())
            if lo >= 0.0 and hi <= 1.0 and hi > lo:
                return Radiograph(np.ascontiguousarray(gray, dtype=np.float32))
            return _finish("<array>", gray.astype(np.float32), RadiographMeta())
        return _finish("<array>", arr, RadiographMeta())
    raise TypeError(f"expected a path, a Radiograph or a numpy array, got {type(image).__name__}")


def with_meta(rad: Radiograph, **changes) -> Radiograph:
    return Radiograph(rad.pixels, replace(rad.meta, **changes))


def save_png(path: str | Path, image: np.ndarray, bits: int = 8) -> None:
    """Write a float ``[0, 1]`` image (or uint8 / BGR) as PNG; ``bits=16`` for 16-bit."""
    import cv2

    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        arr = np.clip(arr, 0.0, 1.0)
        arr = (arr * 65535.0 + 0.5).astype(np.uint16) if bits == 16 else (arr * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), arr):
        raise OSError(f"{path}: could not write PNG")
