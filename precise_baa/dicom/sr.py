"""The bone-age Structured Report: an Assessment as a DICOM TID 1500 measurement report.

A Comprehensive SR in the source image's study (same Study Instance UID, patient and study
modules copied from the source, a new series):

- one image-level group (TID 1501): bone age, chronological age, bone age minus age, the
  threshold and whether it is exceeded, maturity score, standard, status, and comments (the
  rejection reason, the phantom-weights notice, a mirrored right hand, other flags);
- one planar ROI group (TID 1410) per found ROI: the box as a closed POLYLINE on the source
  image, the bone as finding and finding site, stage (+ its label), points, confidence and
  detection score;
- the algorithm (TID 4019: precise-baa, its version and each stage's weights sha256) on every
  group.

Codes are listed in :mod:`precise_baa.dicom.codes`. A rejected or unprocessed radiograph gets
the same report with status and reason and whatever ROI boxes were found.

>>> sr = build_sr(assessment, source_header, series_uid="2.25.1", sop_uid="2.25.2")  # doctest: +SKIP
>>> sr.save_as("OUT/dicom/p001_sr.dcm")                                         # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pcodes

from .. import __version__
from ..schemas import Assessment, Box, RoiResult
from . import codes as C
from .uids import derived_uid

SR_SERIES_NUMBER = 9901
#: comments are TEXT; keep each one readable
_MAX_COMMENT = 1024


def is_mirrored(a: Assessment) -> bool:
    """Whether the assessed pixels were the source mirrored left-right (a right hand)."""
    from ..pipeline import MIRRORED

    return any(f.code == MIRRORED for f in a.flags)


def source_box(box: Box, a: Assessment) -> Box:
    """A box of the assessment in the source image's pixel columns/rows (undoes mirroring)."""
    if not is_mirrored(a) or a.image_size is None:
        return box
    w = float(a.image_size[1])
    return Box(x0=w - box.x1, y0=box.y0, x1=w - box.x0, y1=box.y1)


def algorithm(a: Assessment) -> AlgorithmIdentification:
    """precise-baa, its version and what each stage ran (implementation, weights sha256)."""
    params = []
    for m in a.models:
        text = f"{m.stage}: {m.implementation} {m.name}".strip()
        if m.sha256:
            text += f" sha256={m.sha256}"
        if m.phantom_trained:
            text += " (phantom-trained)"
        params.append(text)
    return AlgorithmIdentification(name=C.MANUFACTURER, version=a.package_version or __version__,
                                   parameters=params or None)


def _measure(name, value, unit) -> Measurement:
    return Measurement(name=name, value=float(value), unit=unit)


def _comments(a: Assessment) -> list[str]:
    out = []
    if a.status != "ok" and a.reason:
        out.append(f"{'Rejected' if a.status == 'rejected' else 'Not processed'}: {a.reason}")
    seen = set()
    for f in a.flags:
        if f.message not in seen:
            seen.add(f.message)
            out.append(f.message)
    return [c[:_MAX_COMMENT] for c in out]


def _image_group(a: Assessment, key: str, algo) -> MeasurementsAndQualitativeEvaluations:
    ms = []
    if a.bone_age_years is not None:
        ms.append(_measure(C.BONE_AGE, a.bone_age_years, C.YEARS))
    if a.chronological_age_years is not None:
        ms.append(_measure(C.CHRONOLOGICAL_AGE, a.chronological_age_years, C.YEARS))
    if a.bone_age_minus_chronological_years is not None:
        ms.append(_measure(C.BA_MINUS_CA, a.bone_age_minus_chronological_years, C.YEARS))
    if a.deviation_threshold_years is not None:
        ms.append(_measure(C.THRESHOLD, a.deviation_threshold_years, C.YEARS))
    if a.maturity_score is not None:
        ms.append(_measure(C.MATURITY_SCORE, a.maturity_score, C.SCORE_UNIT))
    qs = [QualitativeEvaluation(C.STATUS, C.STATUSES[a.status])]
    if a.standard in C.STANDARDS:
        qs.append(QualitativeEvaluation(C.STANDARD, C.STANDARDS[a.standard]))
    if a.deviation_beyond_threshold is not None:
        qs.append(QualitativeEvaluation(C.BEYOND, C.YES if a.deviation_beyond_threshold else C.NO))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier="Bone age",
                                               uid=derived_uid(key, "group", "image")),
        finding_type=C.BONE_AGE_FINDING, algorithm_id=algo,
        finding_sites=[FindingSite(C.std(pcodes.SCT.Hand))],
        measurements=ms or None, qualitative_evaluations=qs,
    )
    container = group[0]
    for text in _comments(a):
        container.ContentSequence.append(
            TextContentItem(name=C.COMMENT, value=text, relationship_type="CONTAINS"))
    return group


def _roi_group(a: Assessment, r: RoiResult, source: Dataset, laterality: str | None, key: str,
               algo):
    b = source_box(r.box, a)
    polyline = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]],
                        dtype=float)
    region = ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
        source_image=SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID)),
    )
    ms = []
    if r.stage is not None:
        ms.append(_measure(C.STAGE, r.stage, C.STAGE_UNIT))
    if r.points is not None:
        ms.append(_measure(C.POINTS, r.points, C.POINTS_UNIT))
    if r.confidence is not None:
        ms.append(_measure(C.CONFIDENCE, r.confidence, C.NO_UNITS))
    if r.detection_score is not None:
        ms.append(_measure(C.DETECTION_SCORE, r.detection_score, C.NO_UNITS))
    qs = []
    if r.stage_label is not None and a.standard:
        qs.append(QualitativeEvaluation(C.STAGE_LABEL, C.stage_label_code(a.standard, r.stage_label)))
    site = FindingSite(C.roi_site(r.key), laterality=C.LATERALITY.get(laterality or ""))
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier=f"{r.name} ({r.key})",
                                               uid=derived_uid(key, "group", r.key)),
        referenced_region=region, finding_type=C.roi_finding(r.key), algorithm_id=algo,
        finding_sites=[site], measurements=ms or None, qualitative_evaluations=qs or None,
    )


def source_laterality(a: Assessment, source: Dataset) -> str | None:
    """"L"/"R" as the source file states it (a mirrored assessment was a right hand)."""
    if is_mirrored(a):
        return "R"
    for tag in ("ImageLaterality", "Laterality"):
        v = str(source.get(tag, "") or "").strip().upper()
        if v in ("L", "R"):
            return v
    return None


#: patient and study attributes (Type 2) an SR copies from its evidence: empty when absent
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def evidence_header(source: Dataset) -> Dataset:
    """A copy of the source header with every patient/study attribute the SR copies present
    (empty when the source lacks it, or holds a value DICOM does not allow)."""
    ds = Dataset()
    ds.update(source)  # shallow: the header's elements, no pixel data
    for kw in _TYPE2:
        if kw not in ds or ds[kw].value is None:
            setattr(ds, kw, "")
    if str(ds.PatientSex).upper() not in ("M", "F", "O", ""):
        ds.PatientSex = ""
    return ds


def build_sr(a: Assessment, source: Dataset, *, series_uid: str, sop_uid: str,
             series_number: int = SR_SERIES_NUMBER, now: dt.datetime | None = None) -> ComprehensiveSR:
    """The Comprehensive SR of assessment ``a`` of the image whose header is ``source``."""
    source = evidence_header(source)
    algo = algorithm(a)
    phantom = any(f.code == "phantom_weights" for f in a.flags)
    laterality = source_laterality(a, source)
    groups = [_image_group(a, sop_uid, algo)]
    groups += [_roi_group(a, r, source, laterality, sop_uid, algo) for r in a.rois if r.box is not None]
    observer = ObserverContext(
        observer_type=pcodes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", C.MANUFACTURER, a.package_version or __version__),
            name=C.MANUFACTURER, manufacturer_name=C.MANUFACTURER,
            model_name=f"{C.MANUFACTURER} {a.package_version or __version__}"),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=C.PROCEDURES, imaging_measurements=groups, title=C.TITLE,
    )
    now = now or dt.datetime.now()
    description = "precise-baa bone age SR"
    if phantom:
        description += " (PHANTOM WEIGHTS, NOT CLINICAL)"
    elif a.status != "ok":
        description += f" ({a.status})"
    sr = ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=C.MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=description[:64], manufacturer_model_name=C.MANUFACTURER,
        software_versions=a.package_version or __version__,
        content_qualification="RESEARCH" if phantom else "PRODUCT",
        content_date=now.date(), content_time=now.time().replace(microsecond=0),
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=C.SCHEME, name=C.SCHEME_NAME, responsible_organization=C.MANUFACTURER)],
    )
    return sr
