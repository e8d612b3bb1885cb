"""Writing the DICOM results of each assessment: ``OUT/dicom/<id>_sr.dcm`` and ``<id>_sc.dcm``.

:class:`DicomWriter` is the scoring loop's ``on_result`` hook (``score --dicom-out`` and the
node). For each input that is a DICOM image it writes the Structured Report (scored, rejected or
not processed, with the reason) and, when there are pixels, the Secondary Capture of the overlay.
Inputs that are not DICOM images (PNG, an SR, a file whose header does not read) get nothing and
are counted. UIDs are derived from the source SOP Instance UID and what scored it
(:mod:`.uids`), so a rerun replaces rather than duplicates. Files are written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..imaging import is_dicom_file
from ..paths import atomic_open
from ..report.files import safe_name, safe_path
from ..schemas import Assessment
from . import codes as C
from .uids import derived_uid

log = logging.getLogger(__name__)
DICOM_DIR = "dicom"


def read_header(path: str | Path):
    """The DICOM header of ``path`` (no pixel data) or None when it is not a readable DICOM."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable is an answer here, not an error
        return None


def is_image_header(ds) -> bool:
    """An image object with the UIDs a result must reference."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class or not ds.get("SOPInstanceUID") or not ds.get("StudyInstanceUID"):
        return False
    from pydicom.uid import UID

    return "Image Storage" in UID(sop_class).name or "Rows" in ds


def is_own_result(ds) -> bool:
    """A DICOM object precise-baa wrote (never scored again)."""
    return str(ds.get("Manufacturer", "") or "") == C.MANUFACTURER


def _weights_key(a: Assessment) -> str:
    return ",".join(f"{m.stage}={m.sha256 or m.implementation}" for m in a.models)


def result_uids(a: Assessment, source) -> dict[str, str]:
    """Series and instance UIDs of the SR and the SC of ``a`` (deterministic, see :mod:`.uids`)."""
    base = (str(source.SOPInstanceUID), a.package_version or __version__, _weights_key(a))
    return {k: derived_uid(*base, k) for k in ("sr_series", "sr", "sc_series", "sc")}


def _atomic_save(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", fsync=True) as f:
        ds.save_as(f, enforce_file_format=True)


@dataclass
class DicomWriter:
    """``on_result(assessment, pixels)`` hook writing SR + SC into ``out_dir/dicom``.

    ``written`` lists every file written, ``skipped`` the ids of inputs without DICOM results.
    """

    out_dir: Path
    secondary_capture: bool = True
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)

    def __call__(self, a: Assessment, pixels: np.ndarray | None) -> list[Path]:
        return self.write(a, pixels)

    def write(self, a: Assessment, pixels: np.ndarray | None) -> list[Path]:
        from .sc import build_sc
        from .sr import build_sr

        src = Path(a.source) if a.source else None
        header = read_header(src) if src is not None and src.is_file() and is_dicom_file(src) else None
        if header is None or not is_image_header(header) or is_own_result(header):
            self.skipped.append(a.id)
            return []
        uids = result_uids(a, header)
        name = safe_name(a.id)
        out = []
        sr = build_sr(a, header, series_uid=uids["sr_series"], sop_uid=uids["sr"])
        path = safe_path(self.out_dir, DICOM_DIR, f"{name}_sr.dcm")
        _atomic_save(sr, path)
        out.append(path)
        if self.secondary_capture and pixels is not None:
            sc = build_sc(a, pixels, header, series_uid=uids["sc_series"], sop_uid=uids["sc"])
            path = safe_path(self.out_dir, DICOM_DIR, f"{name}_sc.dcm")
            _atomic_save(sc, path)
            out.append(path)
        self.written += out
        return out

    def line(self) -> str:
        """One summary line for the command line."""
        n_sr = sum(p.name.endswith("_sr.dcm") for p in self.written)
        n_sc = sum(p.name.endswith("_sc.dcm") for p in self.written)
        text = f"DICOM results: {n_sr} SR, {n_sc} SC in {self.out_dir / DICOM_DIR}"
        if self.skipped:
            text += f"; {len(self.skipped)} input(s) are not DICOM images and have none"
        return text
