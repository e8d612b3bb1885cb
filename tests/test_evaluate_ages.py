"""``evaluate ages``: bone ages against reference readings, with no ROI labels.

Metrics against hand-computed values, the labels CSV (units, bad lines), and the command end to
end on a few phantoms: a tiny pipeline (threshold segmenter, ground-truth detector, random tiny
grader) for the report's structure, the bundled weights for the command line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from precise_baa.batch.ages import evaluate_ages, group_reasons, read_age_labels
from precise_baa.cli import main
from precise_baa.data import load_coco
from precise_baa.errors import InputError
from precise_baa.evaluation import age_metrics
from precise_baa.imaging import read_radiograph
from precise_baa.interfaces import Detections
from precise_baa.paths import REPO_ROOT, weights_dir
from precise_baa.pipeline import Pipeline
from precise_baa.registry import load_stage
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Flag, ModelInfo
from precise_baa.synth import generate_dataset

RECIPES = Path(__file__).parent / "recipes"


# ------------------------------------------------------------------------------ metrics
def test_bias_removed_mae_and_correlations_by_hand():
    ref = [4.0, 6.0, 8.0, 10.0]
    pred = [5.0, 8.0, 9.0, 12.0]  # errors +1, +2, +1, +2: bias 1.5, |e - 1.5| = 0.5 each
    m = age_metrics(pred, ref, ["M", "F", "M", "F"])
    a = m["all"]
    assert a["n"] == 4 and a["bias"] == pytest.approx(1.5) and a["mae"] == pytest.approx(1.5)
    assert a["bias_removed_mae"] == pytest.approx(0.5)
    assert a["rmse"] == pytest.approx(math.sqrt(2.5))
    # deviations from the means: ref (-3, -1, 1, 3), pred (-3.5, -0.5, 0.5, 3.5)
    assert a["pearson_r"] == pytest.approx(22 / math.sqrt(20 * 25))
    assert a["spearman_r"] == pytest.approx(1.0)
    # every block removes the *overall* bias: M errors (1, 1) -> 0.5, not 0
    assert m["by_sex"]["M"]["bias"] == pytest.approx(1.0)
    assert m["by_sex"]["M"]["bias_removed_mae"] == pytest.approx(0.5)
    assert m["by_age_group"]["4-7"]["n"] == 2 and m["by_age_group"]["4-7"]["pearson_r"] is None
    assert m["by_age_group"]["0-3"]["bias_removed_mae"] is None
    flat = age_metrics([7.0, 7.0, 7.0], [3.0, 5.0, 9.0], ["M"] * 3)["all"]
    assert flat["pearson_r"] is None and flat["spearman_r"] is None  # constant prediction
    assert flat["bias_removed_mae"] == pytest.approx(np.mean(np.abs(np.array([4, 2, -2]) - 4 / 3)))


def test_rejection_reasons_count_each_missing_roi():
    got = group_reasons(["ROI(s) not found or implausible: mc3, mp5",
                         "ROI(s) not found or implausible: mc3",
                         "no plausible hand: mask covers 3.1% of the image (< 5%)",
                         "no plausible hand: mask fills 20% of its box (< 30%)",
                         "4 ROIs graded with low confidence (> 2)"])
    assert got == {"ROI not found or implausible: mc3": 2, "no plausible hand": 2,
                   "# ROIs graded with low confidence (> #)": 1,
                   "ROI not found or implausible: mp5": 1}


# ------------------------------------------------------------------------------ labels CSV
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_months_and_years_read_alike(tmp_path):
    months = _write(tmp_path / "m.csv", "id,sex,bone_age_months,chronological_age_months\n"
                                        "a,F,168,170\nb,male,54,\n")
    years = _write(tmp_path / "y.csv", "id,sex,bone_age,chronological_age\na,F,14,14.1666667\nb,M,4.5,\n")
    lm, pm, um = read_age_labels(months)  # unit from the column's suffix
    ly, py, uy = read_age_labels(years, "years")
    assert (pm, py, um, uy) == ([], [], "months", "years")
    for k in ("a", "b"):
        assert lm[k].bone_age == pytest.approx(ly[k].bone_age)
        assert lm[k].sex == ly[k].sex
    assert lm["a"].chronological_age == pytest.approx(ly["a"].chronological_age)
    assert lm["b"].chronological_age is None
    assert read_age_labels(months, "months")[0]["a"].bone_age == pytest.approx(14.0)
    plain = _write(tmp_path / "p.csv", "id,sex,bone_age\na,F,168\n")
    assert read_age_labels(plain, "months")[0]["a"].bone_age == pytest.approx(14.0)


@pytest.mark.parametrize(("text", "unit", "match"), [
    ("id,sex,bone_age\na,F,10\n", None, "pass --age-unit months or --age-unit years"),
    ("id,sex,bone_age_months\na,F,10\n", "years", "pass --age-unit months"),
    ("id,sex,age\na,F,10\n", "years", "needs a column bone_age"),
    ("id,bone_age\na,10\n", "years", "needs columns id,sex"),
    ("id,sex,bone_age,bone_age_months\na,F,1,12\n", None, "keep one"),
])
def test_unusable_labels_files_are_one_line_errors(tmp_path, text, unit, match):
    with pytest.raises(InputError, match=match) as e:
        read_age_labels(_write(tmp_path / "l.csv", text), unit)
    assert "l.csv" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="not found"):
        read_age_labels(tmp_path / "none.csv", "years")


def test_bad_lines_are_listed_by_line_and_left_out(tmp_path):
    f = _write(tmp_path / "labels.csv",
               "id,sex,bone_age\n"
               "a,F,10\n"            # 2 ok
               "b,F,ten\n"           # 3 not a number
               "c,Q,9\n"             # 4 unknown sex
               "d,M,168\n"           # 5 months given as years
               "e,M,8\n"             # 6 duplicate ...
               "e,M,9\n"             # 7 ... of line 6: both left out
               ",M,9\n"              # 8 empty id
               "f,,7\n"              # 9 no sex: allowed (a DICOM may state it)
               "g,F,\n")             # 10 empty bone age
    labels, problems, _ = read_age_labels(f, "years")
    assert set(labels) == {"a", "f"} and labels["f"].sex is None
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5", "7", "8", "10"]
    assert all(p.startswith("labels.csv:") and "\n" not in p for p in problems)
    assert "'ten' is not a number" in problems[0] and "bad sex 'Q'" in problems[1]
    assert "pass --age-unit months" in problems[2] and "lines 6, 7" in problems[3]


# ------------------------------------------------------------------------------ end to end
class OracleDetector:
    """The phantoms' true boxes for each hand crop (looked up by content); a None box is a
    missing ROI."""

    info = ModelInfo(stage="detect", implementation="oracle", name="ground-truth boxes")

    def __init__(self, table: dict[str, dict], flags: dict[str, list[Flag]] | None = None):
        self.table, self.flags = table, flags or {}

    def detect(self, images):
        out = []
        for im in images:
            # an unknown crop (the pipeline's mirrored second look) finds nothing
            key = hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()
            boxes = dict(self.table.get(key, {}))
            out.append(Detections(boxes=boxes, scores={k: 1.0 for k in ROI_KEYS if boxes.get(k)},
                                  flags=list(self.flags.get(key, []))))
        return out


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ages")
    generate_dataset(root / "set", n=5, seed=31, size=320, progress=False)
    return root / "set"


@pytest.fixture(scope="module")
def pipe(phantoms):
    seg = load_stage("segment", "stages/segment/threshold.yaml")
    table, flags = {}, {}
    for r in load_coco(phantoms / "annotations.json").records:
        res = seg.segment([read_radiograph(r.path).pixels])[0]
        boxes = {k: b.shift(-res.crop_box.x0, -res.crop_box.y0) for k, b in r.boxes.items()}
        key = hashlib.sha1(np.ascontiguousarray(res.image).tobytes()).hexdigest()
        if r.name == "phantom_00002":
            boxes["mc3"] = None
        if r.name == "phantom_00001":  # as if the detector had rescued its dp1
            flags[key] = [Flag(code="roi_low_score", stage="detect", roi="dp1",
                               message="Distal phalanx I: a lower-scoring box is used")]
        table[key] = boxes
    return Pipeline({"segment": seg, "detect": OracleDetector(table, flags),
                     "grade": load_stage("grade", RECIPES / "grade-densenet-tiny.yaml", device="cpu"),
                     "score": load_stage("score", "stages/score/rus-chn.yaml")})


def _labels(phantoms: Path, path: Path, lines: dict[str, str] | None = None) -> Path:
    """Months CSV from the phantoms' manifest; ``lines`` replaces or adds rows by id."""
    rows = {r.name: f"{r.name},{r.sex},{12 * r.bone_age:.2f}"
            for r in load_coco(phantoms / "annotations.json").records}
    rows.update(lines or {})
    path.write_text("id,sex,bone_age_months\n" + "".join(f"{v}\n" for v in rows.values() if v))
    return path


def test_evaluate_ages_end_to_end(pipe, phantoms, tmp_path):
    labels = _labels(phantoms, tmp_path / "labels.csv", {
        "phantom_00003": "phantom_00003,F,eleven",   # line 5: not a number
        "phantom_00004": "",                         # no label at all
        "ghost": "ghost,M,100"})                     # line 6: no image
    out = tmp_path / "ev"
    res = evaluate_ages(pipe, phantoms / "images", labels, out, progress=False, tile=128)
    c = res["counts"]
    assert (c["images"], c["evaluated"], c["scored"], c["rejected"], c["errors"]) == (5, 3, 2, 1, 0)
    assert res["rejection_reasons"] == {"ROI not found or implausible: mc3": 1}
    assert res["scored_after_repair"] == {"dp1 from a low-score box": 1}
    assert res["unlabelled_images"] == ["phantom_00003", "phantom_00004"]
    assert len(res["label_problems"]) == 2
    assert res["label_problems"][0].startswith("labels.csv:5: bone_age_months 'eleven'")
    assert res["label_problems"][1].startswith("labels.csv:6: id 'ghost' has no image")
    # the comparison is the scoring run's own bone ages against the readings, in years
    truth = {r.name: r for r in load_coco(phantoms / "annotations.json").records}
    with (out / "scored" / "results.csv").open() as f:
        scored = {r["id"]: r for r in csv.DictReader(f)}
    ok = [r for r in res["per_image"] if r["status"] == "ok"]
    for r in ok:
        assert r["predicted_years"] == pytest.approx(float(scored[r["id"]]["bone_age_years"]))
        assert r["reference_years"] == pytest.approx(truth[r["id"]].bone_age, abs=0.001)
        assert scored[r["id"]]["sex"] == truth[r["id"]].sex  # the CSV's sex fed the scoring
    expected = age_metrics([r["predicted_years"] for r in ok], [r["reference_years"] for r in ok],
                           [r["sex"] for r in ok])
    assert res["bone_age"] == expected
    assert json.loads((out / "evaluation.json").read_text())["counts"] == c
    for name in ("evaluation.md", "bone_age_scatter.png", "bland_altman.png", "contact_sheet.png",
                 "scored/report.html", "scored/overlays/phantom_00002.png"):
        assert (out / name).is_file(), name
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 3 * 128 and sheet.shape[0] > 128  # 2 scored + 1 rejected, captions below
    md = (out / "evaluation.md").read_text()
    assert "After removing the mean bias" in md and "Greulich-Pyle" in md
    assert "ROI not found or implausible: mc3 (1)" in md and "labels.csv:6" in md
    assert "scored after a detector repair (check these overlays): dp1 from a low-score box (1)" in md
    assert "Phantom-trained" not in md  # these stages were not trained on phantoms
    with pytest.raises(InputError, match="--resume"):
        evaluate_ages(pipe, phantoms / "images", labels, out, progress=False)
    again = evaluate_ages(pipe, phantoms / "images", labels, out, resume=True, progress=False, tile=128)
    assert again["per_image"] == res["per_image"]


def test_evaluate_ages_refuses_what_it_cannot_compare(pipe, phantoms, tmp_path):
    none_match = _write(tmp_path / "l.csv", "id,sex,bone_age\nphantom_00000.png,F,9\n")
    with pytest.raises(InputError, match="no id matches an image"):
        evaluate_ages(pipe, phantoms / "images", none_match, tmp_path / "o", age_unit="years")
    with pytest.raises(InputError, match="outside it"):
        evaluate_ages(pipe, phantoms / "images", _labels(phantoms, tmp_path / "m.csv"),
                      phantoms / "images" / "eval")


# ------------------------------------------------------------------------------ command line
def test_command_line_exit_codes(pipe, phantoms, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("precise_baa.batch.cli._build", lambda args: pipe)  # the tiny pipeline
    common = ["--images", str(phantoms / "images"), "--quiet"]
    good = _labels(phantoms, tmp_path / "good.csv")
    assert main(["evaluate", "ages", *common, "--labels", str(good), "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr()
    assert "bias-removed MAE" in text.out and "evaluation.md" in text.out and not text.err
    bad = _labels(phantoms, tmp_path / "bad.csv", {"phantom_00001": "phantom_00001,X,100"})
    assert main(["evaluate", "ages", *common, "--labels", str(bad), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "bad.csv:3: bad sex 'X'" in err and "without a usable label" in err
    # unusable files and folders: exit 2 with one line
    for extra in (["--labels", str(good), "--age-unit", "years"],
                  ["--labels", str(tmp_path / "nope.csv")]):
        assert main(["evaluate", "ages", *common, *extra, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("precise-baa: error: ") and err.count("\n") == 1


BUNDLED = ("segment-unet-lite", "detect-detectors-lite", "grade-densenet-attention-lite")


@pytest.mark.skipif(not all((weights_dir() / n / "model.safetensors").is_file() for n in BUNDLED),
                    reason="bundled weights not present")
def test_bundled_weights_carry_the_phantom_notice(phantoms, tmp_path, capsys):
    labels = _labels(phantoms, tmp_path / "l.csv")
    rc = main(["evaluate", "ages", "--images", str(phantoms / "images"), "--labels", str(labels),
               "--out", str(tmp_path / "a"), "--pipeline", str(REPO_ROOT / "stages/pipelines/default.yaml"),
               "--device", "cpu", "--quiet"])
    assert rc == 0 and "phantom-trained" in capsys.readouterr().err
    md = (tmp_path / "a" / "evaluation.md").read_text()
    assert "Phantom-trained weights" in md and "not for clinical use" in md
    res = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert res["phantom"] and res["counts"]["evaluated"] == 5
