"""DICOM in and out: laterality and compressed transfer syntaxes on reading; the Structured
Report and Secondary Capture written back, read again with highdicom / pydicom.

Phantom radiographs are wrapped as DX DICOM files here (PatientSex, PatientAge, study UIDs);
a ground-truth "table" detector (boxes looked up by the hand crop's content, as in
test_pipeline) and a tiny random-weight grader make real scored assessments in seconds. The
helpers are shared with test_dicom_node.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from precise_baa.errors import ImageReadError
from precise_baa.imaging import read_radiograph
from precise_baa.interfaces import Detections
from precise_baa.pipeline import MIRRORED, Pipeline
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box, ModelInfo

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
RECIPES = TESTS / "recipes"
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ------------------------------------------------------------------------------ helpers
def make_dicom(pixels: np.ndarray, path: Path, *, sex: str | None = "F", age: str | None = "009Y",
               study_uid: str | None = None, laterality: str | None = None, **tags) -> Path:
    """A DX DICOM file of ``pixels`` (uint8/uint16 grey) with the patient module filled in."""
    px = np.asarray(pixels)
    if px.dtype == np.uint8:
        px = (px.astype(np.float64) / 255.0 * 4095.0).round().astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "Phantom^Hand", "PH-0001"
    if sex is not None:
        ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = age
    ds.PatientBirthDate = ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240102", "101010", "ACC1", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.Manufacturer, ds.BodyPartExamined, ds.ViewPosition = "phantom", "HAND", "PA"
    ds.PatientOrientation = ["L", "H"]
    if laterality:
        ds.ImageLaterality = laterality
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = px.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(px, dtype=np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def crop_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class TableDetector:
    """Ground-truth boxes for each hand crop it is shown, looked up by the crop's content;
    an unknown crop gets no boxes (the radiograph is rejected, naming the ROIs)."""

    def __init__(self, table: dict[str, dict[str, list[float] | None]], *, phantom: bool = False,
                 sha256: str | None = None):
        self.table = table
        self.calls = 0
        self.info = ModelInfo(stage="detect", implementation="oracle", name="ground-truth boxes",
                              sha256=sha256, phantom_trained=phantom)

    def detect(self, images):
        self.calls += len(images)
        out = []
        for im in images:
            boxes = self.table.get(crop_key(im), {})
            out.append(Detections(
                boxes={k: Box.from_xyxy(boxes[k]) if boxes.get(k) else None for k in ROI_KEYS},
                scores={k: 1.0 if boxes.get(k) else None for k in ROI_KEYS}))
        return out


def register_oracle() -> None:
    """Register TableDetector as detect implementation "oracle" (recipe: ``table: FILE``), for
    the command line run in a subprocess (see :data:`LAUNCHER`)."""
    from precise_baa.registry import register

    def factory(recipe, weights=None, device=None):
        path = Path(recipe["table"])
        return TableDetector(json.loads(path.read_text()),
                             sha256=hashlib.sha256(path.read_bytes()).hexdigest())

    register("detect", "oracle")(factory)


#: ``python -c LAUNCHER ARGS``: the precise-baa command line with the oracle detector registered
#: and torch seeded, so two runs build the same random-weight grader.
LAUNCHER = (f"import sys, torch; torch.manual_seed(0); sys.path.insert(0, {str(TESTS)!r}); "
            "import test_dicom; test_dicom.register_oracle(); "
            "from precise_baa.cli import main; sys.exit(main(sys.argv[1:]))")


def launcher_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, *args]


@dataclass
class PhantomDicoms:
    """Phantoms as DICOM: a.dcm (left hand), b.dcm (right hand, stored mirrored, ImageLaterality
    R), c1.dcm + c2.dcm (two images of one study). ``truth[name]`` = boxes in the pixels as
    assessed (a left hand), ``width[name]``."""

    folder: Path
    table_file: Path
    recipe: Path
    files: dict[str, Path] = field(default_factory=dict)
    truth: dict[str, dict[str, Box]] = field(default_factory=dict)
    width: dict[str, int] = field(default_factory=dict)
    table: dict = field(default_factory=dict)


_CACHE: dict[str, PhantomDicoms] = {}


def phantom_dicoms_for(tmp_path_factory) -> PhantomDicoms:
    """Built once per session (shared by both DICOM test modules)."""
    if "set" in _CACHE:
        return _CACHE["set"]
    from precise_baa.data import load_coco
    from precise_baa.registry import load_stage
    from precise_baa.synth import generate_dataset

    base = tmp_path_factory.mktemp("dicom-phantoms")
    generate_dataset(base / "png", n=4, seed=2024, size=320, progress=False)
    records = load_coco(base / "png" / "annotations.json").records
    folder = base / "dicom"
    folder.mkdir()
    seg = load_stage("segment", ROOT / "stages/segment/threshold.yaml")
    out = PhantomDicoms(folder=folder, table_file=base / "table.json", recipe=base / "pipeline.yaml")
    study_c = generate_uid()
    plan = [("a", "L", None, False), ("b", "R", None, True), ("c1", None, study_c, False),
            ("c2", "L", study_c, False)]
    for (name, lat, study, mirror), r in zip(plan, records, strict=True):
        img = cv2.imread(str(r.path), cv2.IMREAD_UNCHANGED)
        stored = img[:, ::-1] if mirror else img
        age = f"{round(r.chronological_age * 12):03d}M"
        path = make_dicom(stored, folder / f"{name}.dcm", sex=r.sex, age=age, study_uid=study,
                          laterality=lat)
        res = seg.segment([read_radiograph(path).pixels])[0]
        assert res.rejected is None, res.rejected
        out.table[crop_key(res.image)] = {
            k: b.shift(-res.crop_box.x0, -res.crop_box.y0).as_list() for k, b in r.boxes.items()}
        out.files[name], out.truth[name], out.width[name] = path, dict(r.boxes), img.shape[1]
    out.table_file.write_text(json.dumps(out.table))
    detect = base / "oracle.yaml"
    detect.write_text(f"stage: detect\nimplementation: oracle\ntable: {out.table_file}\n")
    out.recipe.write_text(
        "name: dicom-test\n"
        "segment: {recipe: stages/segment/threshold.yaml}\n"
        f"detect: {{recipe: {detect}}}\n"
        f"grade: {{recipe: {RECIPES / 'grade-densenet-tiny.yaml'}}}\n"
        "score: {recipe: stages/score/rus-chn.yaml}\n")
    _CACHE["set"] = out
    return out


def make_pipeline(table: dict, *, phantom: bool = False) -> Pipeline:
    import torch

    from precise_baa.registry import load_stage

    torch.manual_seed(0)
    return Pipeline({
        "segment": load_stage("segment", ROOT / "stages/segment/threshold.yaml"),
        "detect": TableDetector(table, phantom=phantom, sha256="ab" * 32),
        "grade": load_stage("grade", RECIPES / "grade-densenet-tiny.yaml", device="cpu"),
        "score": load_stage("score", ROOT / "stages/score/rus-chn.yaml"),
    })


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> PhantomDicoms:
    return phantom_dicoms_for(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(dicoms) -> Pipeline:
    return make_pipeline(dicoms.table)


def polyline_box(group) -> list[float]:
    pts = np.asarray(group.roi.value, dtype=float)
    assert pts.shape == (5, 2) and np.allclose(pts[0], pts[-1])  # closed
    return [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]


def measurements(group) -> dict[str, tuple[float, str]]:
    return {m.name.meaning: (float(m.value), m.unit.value) for m in group.get_measurements()}


def evaluations(group) -> dict[str, str]:
    return {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}


def texts(item) -> dict[str, list[str]]:
    """TEXT content items directly under ``item`` (a container content item), by concept name."""
    out: dict[str, list[str]] = {}
    for sub in item.ContentSequence:
        if sub.ValueType == "TEXT":
            out.setdefault(sub.ConceptNameCodeSequence[0].CodeMeaning, []).append(sub.TextValue)
    return out


def comments(sr) -> list[str]:
    """Every (121106, DCM, "Comment") TEXT item of the report."""
    out = []

    def walk(items):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "TEXT" and name == "121106":
                out.append(it.TextValue)
            walk(it.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


# ------------------------------------------------------------------------------ reading
def test_right_hand_is_read_mirrored_and_flagged(dicoms, pipe):
    src = pydicom.dcmread(dicoms.files["b"])
    stored = src.pixel_array.astype(np.float32)
    rad = read_radiograph(dicoms.files["b"])
    assert rad.meta.laterality == "R" and rad.meta.mirrored
    expected = stored[:, ::-1]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(rad.pixels, expected, atol=1e-6)
    left = read_radiograph(dicoms.files["a"])
    assert left.meta.laterality == "L" and not left.meta.mirrored
    a = pipe.assess(rad, id="b")
    assert a.status == "ok", a.reason
    flag = next(f for f in a.flags if f.code == MIRRORED)
    assert "right hand" in flag.message and flag.stage == "input"
    for r in a.rois:  # boxes in the mirrored (left-hand) image: the phantom's own
        assert r.box.as_list() == pytest.approx(dicoms.truth["b"][r.key].as_list(), abs=1e-4)


def test_series_laterality_and_both_hands(tmp_path):
    img = np.tile(np.linspace(0, 4000, 96, dtype=np.uint16), (96, 1))
    rad = read_radiograph(make_dicom(img, tmp_path / "s.dcm", Laterality="R"))
    assert rad.meta.mirrored and np.allclose(rad.pixels[0], img[0, ::-1] / 4000.0, atol=1e-6)
    with pytest.raises(ImageReadError, match="both hands") as e:
        read_radiograph(make_dicom(img, tmp_path / "b.dcm", laterality="B"))
    assert "\n" not in e.value.reason


def test_compressed_transfer_syntaxes_decode(dicoms, tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    plain = read_radiograph(dicoms.files["a"]).pixels
    syntaxes = [RLELossless]
    try:
        import libjpeg  # noqa: F401
        import openjpeg  # noqa: F401
        import pylibjpeg  # noqa: F401

        syntaxes += [JPEG2000Lossless, JPEGLSLossless]
    except ImportError:
        pass  # the decoders are an optional extra (precise-baa[dicom-codecs])
    for ts in syntaxes:
        ds = pydicom.dcmread(dicoms.files["a"])
        ds.compress(ts)
        path = tmp_path / f"{ts.name.split()[0]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ts
        assert np.array_equal(read_radiograph(path).pixels, plain), ts.name


def test_compressed_without_a_decoder_says_what_to_install(dicoms, tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(dicoms.files["a"])
    try:
        ds.compress(JPEGLSLossless)
    except Exception:  # noqa: BLE001 - no encoder here: take the bundled JPEG-LS file
        from pydicom.data import get_testdata_file

        ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    path = tmp_path / "jls.dcm"
    ds.save_as(path, enforce_file_format=True)
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})  # as without pylibjpeg
    with pytest.raises(ImageReadError) as e:
        read_radiograph(path)
    reason = e.value.reason
    assert "no decoder here" in reason and "JPEG-LS Lossless" in reason
    assert "precise-baa[dicom-codecs]" in reason and "\n" not in reason
    # a transfer syntax pydicom cannot decode at all
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2
    ds.save_as(tmp_path / "mpeg2.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="MPEG2") as e:
        read_radiograph(tmp_path / "mpeg2.dcm")
    assert "\n" not in e.value.reason


def test_own_results_are_not_radiographs(dicoms, pipe, tmp_path):
    from precise_baa.dicom import DicomWriter

    a = pipe.assess(read_radiograph(dicoms.files["a"]), id="a")
    sc = [p for p in DicomWriter(tmp_path)(a, read_radiograph(dicoms.files["a"]).pixels)
          if p.name.endswith("_sc.dcm")][0]
    with pytest.raises(ImageReadError, match="precise-baa result"):
        read_radiograph(sc)


# ------------------------------------------------------------------------------ SR and SC
@pytest.fixture(scope="module")
def written(dicoms, pipe, tmp_path_factory):
    """SR + SC of every phantom DICOM, with their assessments."""
    from precise_baa.dicom import DicomWriter

    out = tmp_path_factory.mktemp("dicom-out")
    writer = DicomWriter(out)
    result = {}
    for name, path in dicoms.files.items():
        rad = read_radiograph(path)
        a = pipe.assess(rad, id=name)
        assert a.status == "ok", a.reason
        result[name] = (a, writer(a, rad.pixels))
    return result


def test_sr_is_a_tid1500_report_in_the_source_study(dicoms, written):
    a, paths = written["a"]
    assert [p.name for p in paths] == ["a_sr.dcm", "a_sc.dcm"]
    src = pydicom.dcmread(dicoms.files["a"])
    sr = hd.sr.srread(paths[0])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sr.SOPInstanceUID != src.SOPInstanceUID
    assert (str(sr.PatientName), sr.PatientID, sr.PatientSex) == ("Phantom^Hand", "PH-0001", src.PatientSex)
    assert sr.AccessionNumber == "ACC1" and sr.Manufacturer == "precise-baa"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ev.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert any(s.CodingSchemeDesignator == "99PRECISEBAA" for s in sr.CodingSchemeIdentificationSequence)

    image = sr.content.get_image_measurement_groups()
    assert len(image) == 1
    m = measurements(image[0])
    assert m["Bone age"] == (pytest.approx(a.bone_age_years, abs=1e-6), "a")
    assert m["Subject Age"] == (pytest.approx(a.chronological_age_years, abs=1e-6), "a")
    assert m["Bone age minus chronological age"][0] == pytest.approx(a.bone_age_minus_chronological_years)
    assert m["Bone age deviation threshold"] == (2.0, "a")
    assert m["Skeletal maturity score"] == (a.maturity_score, "{score}")
    q = evaluations(image[0])
    assert q["Assessment status"] == "Scored"
    assert q["Skeletal maturity standard"] == "RUS-CHN (China 05)"
    assert q["Bone age deviation beyond threshold"] == ("Yes" if a.deviation_beyond_threshold else "No")
    algo = texts(image[0][0])  # TID 4019 on the group (and on each measurement)
    assert algo["Algorithm Name"] == ["precise-baa"]
    assert algo["Algorithm Version"] == [a.package_version]
    assert any("oracle" in p and "sha256=" + "ab" * 32 in p for p in algo["Algorithm Parameters"])

    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 13
    by_key = {g.tracking_identifier.split("(")[-1].rstrip(")"): g for g in groups}
    assert set(by_key) == set(ROI_KEYS)
    for r in a.rois:
        g = by_key[r.key]
        assert g.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]  # SELECTED FROM the source
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert polyline_box(g) == pytest.approx(dicoms.truth["a"][r.key].as_list(), abs=1e-3)
        m = measurements(g)
        assert m["Stage (attribute)"] == (r.stage, "{stage}")
        assert m["Maturity points"] == (r.points, "{points}")
        assert m["Probability"][0] == pytest.approx(r.confidence, abs=1e-6)
        assert evaluations(g)["Maturity stage label"] == f"RUS-CHN stage {r.stage_label}"
        site = g.finding_sites[0]
        assert site.value.scheme_designator == "SCT"
        assert site.laterality.value == "7771000"  # Left, as the file states


def test_sr_of_a_right_hand_maps_boxes_back_to_the_source(dicoms, written):
    a, paths = written["b"]
    assert any(f.code == MIRRORED for f in a.flags)
    sr = hd.sr.srread(paths[0])
    w = dicoms.width["b"]
    for g in sr.content.get_planar_roi_measurement_groups():
        key = g.tracking_identifier.split("(")[-1].rstrip(")")
        t = dicoms.truth["b"][key]
        assert polyline_box(g) == pytest.approx([w - t.x1, t.y0, w - t.x0, t.y1], abs=1e-3)
        assert g.finding_sites[0].laterality.value == "24028007"  # Right
    assert any("right hand" in c for c in comments(sr))
    sc = pydicom.dcmread(paths[1])
    assert sc.Laterality == "R"


def test_sc_is_the_overlay_in_the_source_study(dicoms, written):
    a, paths = written["c2"]
    src = pydicom.dcmread(dicoms.files["c2"])
    sc = pydicom.dcmread(paths[1])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert sc.StudyInstanceUID == src.StudyInstanceUID == pydicom.dcmread(dicoms.files["c1"]).StudyInstanceUID
    assert sc.SeriesInstanceUID not in (src.SeriesInstanceUID, hd.sr.srread(paths[0]).SeriesInstanceUID)
    assert str(sc.PatientName) == "Phantom^Hand" and sc.PatientID == "PH-0001"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    px = sc.pixel_array
    assert px.shape == (src.Rows, src.Columns, 3) and px.dtype == np.uint8
    assert (px[..., 0] != px[..., 2]).any()  # coloured boxes drawn
    assert f"bone age {a.bone_age_years:.2f} y" in sc.ImageComments
    assert sc.BurnedInAnnotation == "NO" and list(sc.PatientOrientation) == ["L", "H"]


def test_uids_are_stable_and_distinct(dicoms, pipe, written, tmp_path):
    from precise_baa.dicom import DicomWriter

    a, paths = written["a"]
    again = DicomWriter(tmp_path)(a, read_radiograph(dicoms.files["a"]).pixels)
    first = [pydicom.dcmread(p) for p in paths]
    second = [pydicom.dcmread(p) for p in again]
    for x, y in zip(first, second, strict=True):
        assert (x.SOPInstanceUID, x.SeriesInstanceUID) == (y.SOPInstanceUID, y.SeriesInstanceUID)
    uids = {pydicom.dcmread(p).SOPInstanceUID for _, ps in written.values() for p in ps}
    assert len(uids) == 8 and all(u.startswith("2.25.") and len(u) <= 64 for u in uids)


def test_rejected_and_unscored_inputs_get_a_report_that_says_why(dicoms, tmp_path):
    from precise_baa.dicom import DicomWriter

    table = {k: {**v, "dp5": None} for k, v in dicoms.table.items()}
    pipe = make_pipeline(table, phantom=True)
    writer = DicomWriter(tmp_path)
    rad = read_radiograph(dicoms.files["a"])
    a = pipe.assess(rad, id="rej")
    assert a.status == "rejected"
    sr_path, sc_path = writer(a, rad.pixels)
    sr = hd.sr.srread(sr_path)
    image = sr.content.get_image_measurement_groups()[0]
    assert evaluations(image)["Assessment status"] == "Rejected: not scored"
    assert "Bone age" not in measurements(image)
    notes = comments(sr)
    assert "Rejected: ROI(s) not found or implausible: dp5" in notes
    assert any("phantom-trained" in c for c in notes)  # the phantom notice travels
    assert sr.ContentQualification == "RESEARCH" and "PHANTOM" in sr.SeriesDescription
    assert len(sr.content.get_planar_roi_measurement_groups()) == 12  # the boxes that were found
    assert "rejected" in pydicom.dcmread(sc_path).ImageComments

    nosex = make_dicom(pydicom.dcmread(dicoms.files["a"]).pixel_array, tmp_path / "nosex.dcm", sex=None)
    rad = read_radiograph(nosex)
    a = pipe.assess(rad, id="nosex")
    assert a.status == "error"
    paths = writer(a, None)  # error rows carry no pixels: SR only
    assert [p.name for p in paths] == ["nosex_sr.dcm"]
    sr = hd.sr.srread(paths[0])
    assert evaluations(sr.content.get_image_measurement_groups()[0])["Assessment status"] == "Not processed"
    assert any(c.startswith("Not processed: no sex given") for c in comments(sr))


def test_writer_skips_what_is_not_a_dicom_image(dicoms, pipe, tmp_path):
    from pydicom.data import get_testdata_file

    from precise_baa.dicom import DicomWriter

    png = tmp_path / "hand.png"
    cv2.imwrite(str(png), (read_radiograph(dicoms.files["a"]).pixels * 255).astype(np.uint8))
    writer = DicomWriter(tmp_path / "out")
    a = pipe.assess(png, sex="F", id="hand")
    assert writer(a, read_radiograph(png).pixels) == []
    plan = pipe.assess(read_radiograph(dicoms.files["a"]), id="plan").model_copy(
        update={"source": get_testdata_file("rtplan.dcm")})
    assert writer(plan, None) == []
    assert writer.skipped == ["hand", "plan"] and not (tmp_path / "out" / "dicom").exists()
    assert "2 input(s) are not DICOM images" in writer.line()
