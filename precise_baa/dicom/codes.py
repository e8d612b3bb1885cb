"""Coded concepts of the bone-age Structured Report.

Standard codes come from pydicom's copy of the DICOM content mapping resource (DCM, SCT, UCUM),
so every one of them is a code the standard lists. What no standard code names (bone age, the
maturity score, the RUS-CHN/TW3 standards, the 13 ROIs as single bones) uses the private coding
scheme ``99PRECISEBAA`` (the "99" prefix is DICOM's convention for private schemes), declared in
the SR's Coding Scheme Identification Sequence.

=====================  ======================================  ====================================
Concept                Code                                    Where
=====================  ======================================  ====================================
report title           (126000, DCM, Imaging Measurement       TID 1500 root
                       Report)
procedure reported     (363679005, SCT, Imaging procedure)     TID 1500
                       + (BAA, 99PRECISEBAA, Bone age
                       assessment)
image-level group      finding (BAA, 99PRECISEBAA)             TID 1501, one per SR
bone age               (BONE-AGE, 99PRECISEBAA) in (a, UCUM)   TID 1501 measurement
chronological age      (121033, DCM, Subject Age) in a         TID 1501 measurement
bone age - age         (BA-CA, 99PRECISEBAA) in a              TID 1501 measurement
threshold              (BA-CA-THRESHOLD, 99PRECISEBAA) in a    TID 1501 measurement
maturity score         (MATURITY-SCORE, 99PRECISEBAA)          TID 1501 measurement, {score}
beyond threshold       (BA-CA-BEYOND, 99PRECISEBAA) =          TID 1501 qualitative evaluation
                       (373066001, SCT, Yes) / (373067005,
                       SCT, No)
standard               (STANDARD, 99PRECISEBAA) =              TID 1501 qualitative evaluation
                       (RUS-CHN | TW3, 99PRECISEBAA)
status                 (STATUS, 99PRECISEBAA) = (OK |          TID 1501 qualitative evaluation
                       REJECTED | ERROR, 99PRECISEBAA)
reason, notices        (121106, DCM, Comment) TEXT             TID 1501 (rejection reason, phantom
                                                               weights, right hand mirrored, flags)
ROI group              finding = (ROI-<key>, 99PRECISEBAA),    TID 1410, one per found ROI, with
                       site = SCT bone (radius 62413002,       the box as a closed POLYLINE on the
                       ulna 23416004, metacarpal 36455000,     source image (its pixel columns and
                       thumb 76505004, finger 7569003),        rows, mirrored back for a right
                       laterality (7771000 Left / 24028007     hand)
                       Right) when the file states it
stage                  (258214002, SCT, Stage) in {stage}      TID 1410 measurement (0-based)
stage label            (STAGE-LABEL, 99PRECISEBAA) =           TID 1410 qualitative evaluation
                       (<STANDARD>-<label>, 99PRECISEBAA)
points                 (POINTS, 99PRECISEBAA) in {points}      TID 1410 measurement
confidence             (122157, DCM, Probability) in 1         TID 1410 measurement (top stage
                                                               probability)
detection score        (DETECTION-SCORE, 99PRECISEBAA) in 1    TID 1410 measurement
algorithm              TID 4019: name precise-baa, version,    every measurement group
                       parameters = each stage's
                       implementation and weights sha256
=====================  ======================================  ====================================
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from ..rois import ROI_BY_KEY

SCHEME = "99PRECISEBAA"
SCHEME_NAME = "precise-baa private codes"
#: Manufacturer and device name written in every DICOM object the package makes
MANUFACTURER = "precise-baa"


def private(value: str, meaning: str) -> CodedConcept:
    """A concept of the private coding scheme."""
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


def std(code) -> CodedConcept:
    """A pydicom dictionary code as a highdicom CodedConcept."""
    return CodedConcept(value=code.value, scheme_designator=code.scheme_designator,
                        meaning=code.meaning)


# Report
TITLE = std(codes.cid7021.ImagingMeasurementReport)
PROCEDURES = [std(codes.SCT.ImagingProcedure), private("BAA", "Bone age assessment")]
BONE_AGE_FINDING = private("BAA", "Bone age assessment")

# Image-level measurements and evaluations
BONE_AGE = private("BONE-AGE", "Bone age")
CHRONOLOGICAL_AGE = std(codes.DCM.SubjectAge)
BA_MINUS_CA = private("BA-CA", "Bone age minus chronological age")
THRESHOLD = private("BA-CA-THRESHOLD", "Bone age deviation threshold")
BEYOND = private("BA-CA-BEYOND", "Bone age deviation beyond threshold")
MATURITY_SCORE = private("MATURITY-SCORE", "Skeletal maturity score")
STANDARD = private("STANDARD", "Skeletal maturity standard")
STANDARDS = {"rus-chn": private("RUS-CHN", "RUS-CHN (China 05)"),
             "tw3": private("TW3", "TW3 RUS (Tanner-Whitehouse 3)")}
STATUS = private("STATUS", "Assessment status")
STATUSES = {"ok": private("OK", "Scored"),
            "rejected": private("REJECTED", "Rejected: not scored"),
            "error": private("ERROR", "Not processed")}
COMMENT = std(codes.DCM.Comment)
YES, NO = std(codes.SCT.Yes), std(codes.SCT.No)

# Per-ROI
STAGE = std(codes.SCT.Stage)
STAGE_LABEL = private("STAGE-LABEL", "Maturity stage label")
POINTS = private("POINTS", "Maturity points")
CONFIDENCE = std(codes.DCM.Probability)
DETECTION_SCORE = private("DETECTION-SCORE", "ROI detection score")
LATERALITY = {"L": std(codes.SCT.Left), "R": std(codes.SCT.Right)}

# Units
YEARS = ucum("a", "year")
NO_UNITS = ucum("1", "no units")
STAGE_UNIT = ucum("{stage}", "stage")
POINTS_UNIT = ucum("{points}", "points")
SCORE_UNIT = ucum("{score}", "score")

_SITES = {
    "radius": std(codes.SCT.RadiusBone), "ulna": std(codes.SCT.Ulna),
    "mc1": std(codes.SCT.Metacarpal), "mc3": std(codes.SCT.Metacarpal),
    "mc5": std(codes.SCT.Metacarpal),
    "pp1": std(codes.SCT.Thumb), "dp1": std(codes.SCT.Thumb),
}


def roi_finding(key: str) -> CodedConcept:
    """The ROI itself (one bone of one ray): private, as no standard code names each one."""
    return private(f"ROI-{key.upper()}", ROI_BY_KEY[key].name)


def roi_site(key: str) -> CodedConcept:
    """The closest standard anatomic structure of the ROI (SCT)."""
    return _SITES.get(key, std(codes.SCT.Finger))


def stage_label_code(standard: str, label: str) -> CodedConcept:
    name = standard.upper()
    return private(f"{name}-{label}", f"{name} stage {label}")


