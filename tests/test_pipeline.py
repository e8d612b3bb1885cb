"""End to end on phantoms: pipeline assembly, folder scoring, resume, shards, swapping stages.

Structure, not accuracy: tiny random-weight models from recipes, plus a ground-truth ("oracle")
detector registered the way a third-party implementation would be, so the scored path runs
and box mapping can be checked exactly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom  # noqa: F401  (bundled test files)
import pytest
from pydicom.data import get_testdata_file

from precise_baa.batch import merge_shards, score_folder
from precise_baa.data import load_coco
from precise_baa.errors import InputError, RecipeError
from precise_baa.imaging import read_radiograph
from precise_baa.interfaces import Detections
from precise_baa.pipeline import Pipeline
from precise_baa.registry import load_stage
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box, ModelInfo
from precise_baa.synth import generate_dataset

RECIPES = Path(__file__).parent / "recipes"


class OracleDetector:
    """Returns the phantom's true boxes for each hand crop it is shown (looked up by content)."""

    info = ModelInfo(stage="detect", implementation="oracle", name="ground-truth boxes")

    def __init__(self, table: dict[str, dict]):
        self.table = table
        self.calls = 0

    def detect(self, images):
        """Unknown crops (e.g. mirrored ones) find nothing: every ROI missing."""
        self.calls += len(images)
        return [Detections(boxes=dict(self.table.get(_key(im), {})), scores={k: 1.0 for k in ROI_KEYS})
                for im in images]


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, n=5, seed=2024, size=320, progress=False)
    return out


@pytest.fixture(scope="module")
def stages(phantoms):
    seg = load_stage("segment", "stages/segment/threshold.yaml")
    grade = load_stage("grade", RECIPES / "grade-densenet-tiny.yaml", device="cpu")
    score = load_stage("score", "stages/score/rus-chn.yaml")
    manifest = load_coco(phantoms / "annotations.json")
    table, truth = {}, {}
    for r in manifest.records:
        res = seg.segment([read_radiograph(r.path).pixels])[0]
        assert res.rejected is None
        table[_key(res.image)] = {k: b.shift(-res.crop_box.x0, -res.crop_box.y0) for k, b in r.boxes.items()}
        truth[r.name] = r
    return {"segment": seg, "grade": grade, "score": score, "table": table, "truth": truth}


@pytest.fixture()
def pipe(stages):
    det = OracleDetector(stages["table"])
    return Pipeline({"segment": stages["segment"], "detect": det, "grade": stages["grade"],
                     "score": stages["score"]})


def test_assess_maps_boxes_back_and_scores(pipe, phantoms, stages):
    r = next(iter(stages["truth"].values()))
    a = pipe.assess(r.path, sex=r.sex, chronological_age=r.chronological_age)
    assert a.status == "ok", a.reason
    assert a.id == r.name and a.sex == r.sex and a.standard == "rus-chn"
    assert [x.key for x in a.rois] == list(ROI_KEYS)
    for x in a.rois:  # crop coordinates mapped back to the original image
        assert x.box.as_list() == pytest.approx(r.boxes[x.key].as_list(), abs=1e-6)
        assert x.stage is not None and 0 <= x.stage < len(x.probabilities)
        assert sum(x.probabilities) == pytest.approx(1.0, abs=1e-3)
    assert a.maturity_score == sum(x.points for x in a.rois)
    # the reported age is exactly stage 4 applied to the reported stages
    again = stages["score"].score({x.key: x.stage for x in a.rois}, r.sex, r.chronological_age)
    assert a.bone_age_years == again.bone_age_years
    assert a.bone_age_minus_chronological_years == pytest.approx(a.bone_age_years - r.chronological_age, abs=0.011)
    assert np.allclose(np.sum(a.attention, axis=1), 1.0, atol=1e-3)
    assert set(a.timings_ms) == {"segment", "detect", "grade", "score"}
    assert {m.stage for m in a.models} == {"segment", "detect", "grade", "score"}


def test_missing_roi_rejects_and_names_it(stages, phantoms):
    table = {k: {**v, "dp5": None} for k, v in stages["table"].items()}
    pipe = Pipeline({"segment": stages["segment"], "detect": OracleDetector(table),
                     "grade": stages["grade"], "score": stages["score"]})
    r = next(iter(stages["truth"].values()))
    a = pipe.assess(r.path, sex=r.sex)
    assert a.status == "rejected" and "dp5" in a.reason
    assert a.bone_age_years is None and a.roi("dp5").box is None
    assert all(x.stage is None for x in a.rois)  # rejected before grading


def test_a_hand_found_only_mirrored_is_assessed_mirrored_and_flagged(stages, tmp_path):
    from dataclasses import replace

    from precise_baa.batch.discovery import InputItem
    from precise_baa.batch.engines import assess_decoded
    from precise_baa.batch.metadata import Meta
    from precise_baa.imaging import Radiograph
    from precise_baa.pipeline import PipelineRecipe

    r = next(iter(stages["truth"].values()))
    rad = read_radiograph(r.path)
    flipped = Radiograph(np.ascontiguousarray(rad.pixels[:, ::-1]), rad.meta)  # thumb on the left
    det = OracleDetector(stages["table"])  # knows the hand as generated (thumb on the right)
    pipe = Pipeline({"segment": stages["segment"], "detect": det, "grade": stages["grade"],
                     "score": stages["score"]})
    straight = pipe.assess(rad, sex=r.sex)
    calls = det.calls
    assert straight.status == "ok" and calls == 1  # nothing missing: no second look
    assert "hand_mirrored" not in [f.code for f in straight.flags]
    a = pipe.assess(flipped, sex=r.sex)
    assert det.calls == calls + 2  # as read (nothing found), then mirrored
    assert a.status == "ok" and "hand_mirrored" in [f.code for f in a.flags]
    # the mirrored radiograph is the one generated: same boxes, stages and bone age
    assert a.bone_age_years == straight.bone_age_years
    assert [(x.box, x.stage) for x in a.rois] == [(x.box, x.stage) for x in straight.rois]
    assert a.crop_box == straight.crop_box
    # folder scoring hands the report the pixels the boxes refer to
    item = InputItem(id="flipped", path=r.path)
    (res, pixels), = assess_decoded(pipe, [(item, flipped, None)], {"flipped": Meta(sex=r.sex, chronological_age=None)})
    assert res.status == "ok" and np.array_equal(pixels, rad.pixels)
    # off by policy, and never for a radiograph that DICOM laterality already mirrored
    ref = {"recipe": "unused"}
    off = Pipeline({"segment": stages["segment"], "detect": det, "grade": stages["grade"],
                    "score": stages["score"]},
                   PipelineRecipe(segment=ref, detect=ref, grade=ref, score=ref,
                                  reject={"retry_mirrored": False}))
    assert off.assess(flipped, sex=r.sex).status == "rejected"
    dicom_r = Radiograph(flipped.pixels, replace(rad.meta, mirrored=True))
    b = pipe.assess(dicom_r, sex=r.sex)
    assert b.status == "rejected" and "right_hand_mirrored" in [f.code for f in b.flags]
    # a hand read the standard way with an ROI missing is not swapped for its mirror image, even
    # when the detector finds all 13 there (a thumb-on-the-left hand is not the standards' view)
    seg = stages["segment"].segment([rad.pixels])[0]
    w = seg.image.shape[1]
    table = {_key(seg.image): {**stages["table"][_key(seg.image)], "dp1": None},
             _key(np.ascontiguousarray(seg.image[:, ::-1])): {
                 k: Box(x0=w - b.x1, y0=b.y0, x1=w - b.x0, y1=b.y1)
                 for k, b in stages["table"][_key(seg.image)].items()}}
    mirror_only = Pipeline({"segment": stages["segment"], "detect": OracleDetector(table),
                            "grade": stages["grade"], "score": stages["score"]})
    c = mirror_only.assess(rad, sex=r.sex)
    assert c.status == "rejected" and "dp1" in c.reason
    assert "hand_mirrored" not in [f.code for f in c.flags]


@pytest.mark.parametrize("degrees", [0, 35, -60, 180])
def test_thumb_on_the_right_tells_the_standard_view_from_its_mirror_image(stages, degrees):
    import math

    from precise_baa.detect.anatomy import thumb_on_the_right

    boxes = next(iter(stages["truth"].values())).boxes
    a = math.radians(degrees)

    def moved(b: Box, mirror: bool) -> Box:
        pts = []
        for x, y in ((b.x0, b.y0), (b.x1, b.y1)):
            x = -x if mirror else x
            pts.append((x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)))
        (x0, y0), (x1, y1) = pts
        return Box(x0=min(x0, x1), y0=min(y0, y1), x1=max(x0, x1), y1=max(y0, y1))

    assert thumb_on_the_right({k: moved(b, False) for k, b in boxes.items()}) is True
    assert thumb_on_the_right({k: moved(b, True) for k, b in boxes.items()}) is False
    assert thumb_on_the_right({"radius": boxes["radius"]}) is None


def test_partial_report_without_autorejection_grades_what_was_found(stages):
    from precise_baa.pipeline import PipelineRecipe

    table = {k: {**v, "dp5": None} for k, v in stages["table"].items()}
    ref = {"recipe": "unused"}
    recipe = PipelineRecipe(segment=ref, detect=ref, grade=ref, score=ref,
                            reject={"reject_on_missing_roi": False})
    pipe = Pipeline({"segment": stages["segment"], "detect": OracleDetector(table),
                     "grade": stages["grade"], "score": stages["score"]}, recipe)
    r = next(iter(stages["truth"].values()))
    a = pipe.assess(r.path, sex=r.sex)
    assert a.status == "rejected" and "dp5" in a.reason and "graded" in a.reason
    assert a.bone_age_years is None and a.maturity_score is None
    assert a.roi("dp5").stage is None
    assert all(x.stage is not None for x in a.rois if x.key != "dp5")


def test_missing_sex_is_an_error_not_a_guess(pipe, stages):
    r = next(iter(stages["truth"].values()))
    a = pipe.assess(r.path)
    assert a.status == "error" and "no sex" in a.reason


def test_unverified_weights_load_only_when_allowed_and_flag_every_result(stages, tmp_path):
    from precise_baa.errors import WeightsError

    folder = stages["grade"].save_pretrained(tmp_path / "grade")
    (folder / "card.json").unlink()
    with pytest.raises(WeightsError, match="no card.json"):
        load_stage("grade", weights=folder, device="cpu")
    grade = load_stage("grade", weights=folder, device="cpu", allow_unverified=True)
    pipe = Pipeline({"segment": stages["segment"], "detect": OracleDetector(stages["table"]),
                     "grade": grade, "score": stages["score"]})
    assert pipe.unverified == ["grade"]
    r = next(iter(stages["truth"].values()))
    for a in (pipe.assess(r.path, sex=r.sex), pipe.assess(r.path)):  # scored, and an error row
        flags = [f for f in a.flags if f.code == "weights_unverified"]
        assert [f.stage for f in flags] == ["grade"] and "card.json" in flags[0].message


def test_grader_and_scorer_standards_must_agree(stages):
    with pytest.raises(RecipeError, match="predicts rus-chn stages but the score stage expects tw3"):
        Pipeline({"segment": stages["segment"], "detect": OracleDetector({}),
                  "grade": stages["grade"], "score": load_stage("score", "stages/score/tw3.yaml")})


def test_recipe_pipeline_with_tiny_mmdet_detector(tmp_path, phantoms, stages, detect_tiny):
    """The real stage-2 implementation from a recipe, random weights: runs, and either scores
    or rejects naming the ROIs (never an unexplained failure)."""
    recipe = {
        "name": "tiny",
        "segment": {"recipe": "stages/segment/threshold.yaml"},
        "detect": {"recipe": str(detect_tiny)},
        "grade": {"recipe": str(RECIPES / "grade-densenet-tiny.yaml")},
        "score": {"recipe": "stages/score/rus-chn.yaml"},
    }
    pipe = Pipeline.from_recipe(recipe, device="cpu", trust=True)  # detect-tiny.py is outside stages/
    recs = list(stages["truth"].values())[:2]
    out = pipe.assess_batch([read_radiograph(r.path) for r in recs], [r.sex for r in recs],
                            [None, None], [r.name for r in recs])
    for a in out:
        assert a.status in ("ok", "rejected")
        assert len(a.rois) == 13
        if a.status == "rejected":
            assert any(k in a.reason for k in ROI_KEYS)
    swapped = Pipeline.from_recipe(recipe, overrides={"segment": str(RECIPES / "segment-unet-tiny.yaml")},
                                   device="cpu", trust=True)
    assert swapped.stages["segment"].info.implementation == "unet"


# ---------------------------------------------------------------------------- folder scoring
@pytest.fixture()
def inbox(tmp_path, phantoms, stages) -> tuple[Path, Path]:
    """A folder with good phantoms and every kind of bad input."""
    src = tmp_path / "in"
    (src / "ward").mkdir(parents=True)
    names = sorted(stages["truth"])
    for n in names[:3]:
        shutil.copy(phantoms / "images" / f"{n}.png", src / "ward" / f"{n}.png")
    shutil.copy(phantoms / "images" / f"{names[3]}.png", src / "nosex.png")
    shutil.copy(phantoms / "images" / f"{names[4]}.png", src / "dup.png")
    shutil.copy(phantoms / "images" / f"{names[4]}.png", src / "dup.tif")
    (src / "corrupt.png").write_bytes((phantoms / "images" / f"{names[0]}.png").read_bytes()[:300])
    (src / "notes.png").write_text("this is a text file\n")
    shutil.copy(get_testdata_file("rtdose.dcm"), src / "volume.dcm")
    meta = tmp_path / "meta.csv"
    rows = [f"ward/{n},{stages['truth'][n].sex},{stages['truth'][n].chronological_age}" for n in names[:3]]
    meta.write_text("id,sex,chronological_age\n" + "\n".join(rows + ["dup,F,9", "corrupt,F,", "notes,M,"]) + "\n")
    return src, meta


def _rows(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_score_folder_isolates_every_bad_input(pipe, inbox, tmp_path):
    src, meta = inbox
    out = tmp_path / "out"
    summary = score_folder(pipe, src, out, meta=meta, batch_size=2, progress=False)
    rows = _rows(out)
    # dup.png and dup.tif would share the id "dup": both keep their suffix, one row each
    assert set(rows) == {"ward/phantom_00000", "ward/phantom_00001", "ward/phantom_00002", "nosex",
                         "dup.png", "dup.tif", "corrupt", "notes", "volume"}
    assert rows["dup.png"]["source"].endswith("dup.png") and rows["dup.tif"]["source"].endswith("dup.tif")
    ok = [k for k, r in rows.items() if r["status"] == "ok"]
    assert sorted(ok) == ["ward/phantom_00000", "ward/phantom_00001", "ward/phantom_00002"]
    assert float(rows["ward/phantom_00000"]["bone_age_years"]) >= 0
    assert "no sex" in rows["nosex"]["message"]
    # the metadata row "dup" names neither of them: a warning, and no sex for either
    assert "no sex" in rows["dup.png"]["message"] and "no sex" in rows["dup.tif"]["message"]
    assert any("metadata row 'dup' matches several inputs" in w for w in summary.warnings)
    assert rows["notes"]["status"] == "error" and "not an image" in rows["notes"]["message"]
    assert rows["corrupt"]["status"] == "error"
    assert "multi-frame" in rows["volume"]["message"]
    assert summary.failed and summary.counts["ok"] == 3
    lines = (out / "assessments.jsonl").read_text().splitlines()
    assert len(lines) == 9  # dup.png and dup.tif are both reported
    for n in ok:
        name = n.replace("/", "__")
        assert any(p.name.startswith(name) for p in (out / "overlays").iterdir())
    assert (out / "report.html").is_file()
    with pytest.raises(InputError, match="--resume"):
        score_folder(pipe, src, out, meta=meta, progress=False)


def test_decoding_in_worker_processes_gives_the_same_rows(pipe, inbox, tmp_path):
    # decoded pixels come back from the workers as shared-memory tensors, then numpy again
    src, meta = inbox
    here = score_folder(pipe, src, tmp_path / "here", meta=meta, batch_size=2, progress=False,
                        pictures=False)
    workers = score_folder(pipe, src, tmp_path / "workers", meta=meta, batch_size=2, workers=2,
                           progress=False, pictures=False)
    assert here.counts == workers.counts and workers.counts["ok"] == 3
    a, b = _rows(tmp_path / "here"), _rows(tmp_path / "workers")
    assert a.keys() == b.keys()
    for k in a:
        same = {c: v for c, v in a[k].items() if "second" not in c and "time" not in c}
        assert same == {c: b[k][c] for c in same}, k


def test_resume_after_an_interrupted_run(pipe, inbox, tmp_path):
    src, meta = inbox
    meta.write_text(meta.read_text().replace("ward/", ""))  # ids relative to src/ward
    out = tmp_path / "out"
    real = pipe.assess_batch
    seen = []

    def crashing(rads, sexes, ages, ids, **kw):
        if len(seen) >= 2:
            raise KeyboardInterrupt  # the machine goes down mid-run
        seen.extend(ids)
        return real(rads, sexes, ages, ids, **kw)

    pipe.assess_batch = crashing
    with pytest.raises(KeyboardInterrupt):
        score_folder(pipe, src / "ward", out, meta=meta, batch_size=1, progress=False, pictures=False)
    done_before = [json.loads(line)["id"] for line in (out / "assessments.jsonl").read_text().splitlines()]
    assert len(done_before) == 2
    assert all(json.loads(x)["status"] == "ok" for x in (out / "assessments.jsonl").read_text().splitlines())
    calls = []

    def counting(rads, sexes, ages, ids, **kw):
        calls.extend(ids)
        return real(rads, sexes, ages, ids, **kw)

    pipe.assess_batch = counting
    summary = score_folder(pipe, src / "ward", out, meta=meta, batch_size=1, progress=False,
                           resume=True, pictures=False)
    assert summary.already_done == 2 and calls == ["phantom_00002"]
    rows = _rows(out)
    assert sorted(rows) == ["phantom_00000", "phantom_00001", "phantom_00002"]
    assert all(r["status"] == "ok" for r in rows.values())


def test_shards_cover_everything_once_and_merge(pipe, inbox, tmp_path):
    src, meta = inbox
    out = tmp_path / "out"
    for k in (1, 2, 3):
        score_folder(pipe, src, out / f"shard-{k}-of-3", meta=meta, shard=f"{k}/3", progress=False)
    ids = []
    for k in (1, 2, 3):
        ids += [json.loads(x)["id"] for x in (out / f"shard-{k}-of-3" / "assessments.jsonl").read_text().splitlines()]
    assert len(ids) == 9 and len(set(ids)) == 9  # dup.png and dup.tif keep their suffixes
    merge_shards(out)
    assert len(_rows(out)) == 9 and (out / "report.html").is_file()


def test_score_command_line(tmp_path, inbox, cli, detect_tiny):
    src, meta = inbox
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\n"
        "segment: {recipe: stages/segment/threshold.yaml}\n"
        f"detect: {{recipe: {detect_tiny}}}\n"
        f"grade: {{recipe: {RECIPES / 'grade-densenet-tiny.yaml'}}}\n"
        "score: {recipe: stages/score/rus-chn.yaml}\n")
    out = tmp_path / "out"
    ward_meta = tmp_path / "ward-meta.csv"  # ids are relative to the folder being scored
    ward_meta.write_text(meta.read_text().replace("ward/", ""))
    p = cli("score", str(src / "ward"), "--out", str(out), "--meta", str(ward_meta), "--pipeline", str(recipe),
            "--device", "cpu", "--quiet", "--no-pictures")
    assert p.returncode == 2 and "a .py recipe is Python code" in p.stderr and "--trust-recipe" in p.stderr
    assert not out.exists() or not (out / "assessments.jsonl").exists()
    p = cli("score", str(src / "ward"), "--out", str(out), "--meta", str(ward_meta), "--pipeline", str(recipe),
            "--device", "cpu", "--quiet", "--no-pictures", "--trust-recipe")
    assert p.returncode == 0, p.stderr  # every input scored or rejected with a reason
    assert len(_rows(out)) == 3
    p = cli("score", str(src), "--out", str(tmp_path / "out2"), "--meta", str(meta), "--pipeline",
            str(recipe), "--device", "cpu", "--quiet", "--no-pictures", "--trust-recipe")
    assert p.returncode == 1  # error rows present
    assert "error(s)" in p.stderr and "Traceback" not in p.stderr
    p = cli("score", str(src), "--out", str(out), "--pipeline", str(recipe), "--quiet", "--trust-recipe")
    assert p.returncode == 2 and "--resume" in p.stderr


def test_a_worker_builds_only_the_stage_it_runs():
    """``load=``: the other stages stay unbuilt; the weights' cards still say what they are."""
    from precise_baa.paths import REPO_ROOT
    from precise_baa.pipeline import Pipeline

    recipe = REPO_ROOT / "stages/pipelines/default.yaml"
    if not (REPO_ROOT / "weights/detect-detectors-lite/model.safetensors").is_file():
        pytest.skip("bundled weights not present")
    p = Pipeline.from_recipe(recipe, device="cpu", load={"segment"})
    assert p.stages["segment"].obj is not None
    assert all(p.stages[s].obj is None for s in ("detect", "grade", "score"))
    full = Pipeline.from_recipe(recipe, device="cpu")
    assert [m.sha256 for m in p.models] == [m.sha256 for m in full.models]
    assert p.phantom_trained == full.phantom_trained and p.unverified == full.unverified == []
