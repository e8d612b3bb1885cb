"""The overlay as a DICOM Secondary Capture image in the source image's study.

The picture is :func:`precise_baa.report.figures.overlay` (ROI boxes, names, stages, bone age or
the rejection reason, the phantom notice) drawn on the radiograph as the source shows it: a
right hand that was assessed mirrored is shown unmirrored again, its boxes mapped back. RGB,
8 bits, at most 1024 px a side, in a new series; patient and study modules copied from the
source, which it also lists as its source image. No patient identity is burned in.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset

from .. import __version__
from ..schemas import Assessment
from . import codes as C
from .sr import is_mirrored, source_box, source_laterality

SC_SERIES_NUMBER = 9902


def source_view(a: Assessment, pixels: np.ndarray) -> tuple[Assessment, np.ndarray]:
    """The assessment and pixels as the source image shows them (a mirrored right hand flipped
    back, boxes with it)."""
    if not is_mirrored(a):
        return a, pixels
    rois = [r.model_copy(update={"box": source_box(r.box, a)}) if r.box is not None else r
            for r in a.rois]
    crop = source_box(a.crop_box, a) if a.crop_box is not None else None
    return a.model_copy(update={"rois": rois, "crop_box": crop}), np.ascontiguousarray(pixels[:, ::-1])


def build_sc(a: Assessment, pixels: np.ndarray, source: Dataset, *, series_uid: str, sop_uid: str,
             series_number: int = SC_SERIES_NUMBER) -> SCImage:
    """The Secondary Capture of the overlay of ``a`` on ``pixels`` (float [0, 1], as assessed)."""
    from ..report.figures import overlay

    shown, px = source_view(a, pixels)
    rgb = np.ascontiguousarray(overlay(px, shown)[:, :, ::-1])  # BGR -> RGB
    phantom = any(f.code == "phantom_weights" for f in a.flags)
    description = "precise-baa bone age overlay"
    if phantom:
        description += " (PHANTOM WEIGHTS, NOT CLINICAL)"
    sc = SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=C.MANUFACTURER,
        patient_orientation=("L", "H"), laterality=source_laterality(a, source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=description[:64], manufacturer_model_name=C.MANUFACTURER,
        software_versions=a.package_version or __version__,
        content_qualification="RESEARCH" if phantom else "PRODUCT",
    )
    # Orientation as the source states it (Type 2: empty when the source does not say).
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else None
    sc.BurnedInAnnotation = "NO"  # boxes and results only; nothing identifies the patient
    sc.ImageComments = (("phantom-trained weights: not for clinical use; " if phantom else "")
                        + (f"bone age {a.bone_age_years:.2f} y" if a.status == "ok"
                           else f"{a.status}: {a.reason or ''}"))[:10240]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc
