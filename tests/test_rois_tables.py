from __future__ import annotations

import numpy as np
import pytest

from precise_baa.rois import ROI_KEYS, ROIS, num_stages, stage_counts, stage_label
from precise_baa.score import load_tables


def test_roi_keys_and_paper_levels():
    assert ROI_KEYS == ("radius", "ulna", "mc1", "mc3", "mc5", "pp1", "pp3", "pp5",
                        "mp3", "mp5", "dp1", "dp3", "dp5")
    # the precise-BAA paper's "levels": 15 radius; 13 ulna, PP, MP; 12 MC1, DP; 11 MC3, MC5
    assert stage_counts("rus-chn") == {
        "radius": 15, "ulna": 13, "mc1": 12, "mc3": 11, "mc5": 11, "pp1": 13, "pp3": 13,
        "pp5": 13, "mp3": 13, "mp5": 13, "dp1": 12, "dp3": 12, "dp5": 12}
    assert num_stages("ulna", "tw3") == 8 and num_stages("mc3", "tw3") == 9
    assert stage_label("radius", 4, "tw3") == "E" and stage_label("radius", 4) == "4"
    hand = [r for r in ROIS if r.ray > 0]  # every hand ROI has its own place on a ray
    assert len({(r.ray, r.level) for r in hand}) == 11
    with pytest.raises(KeyError, match="unknown ROI"):
        num_stages("mc2")
    with pytest.raises(ValueError, match="unknown standard"):
        num_stages("radius", "gp")


@pytest.mark.parametrize("standard", ["rus-chn", "tw3"])
@pytest.mark.parametrize("sex", ["M", "F"])
def test_top_stages_sum_to_1000(standard, sex):
    t = load_tables(standard)
    assert sum(p[-1] for p in t.points[sex].values()) == 1000
    assert t.max_score(sex) == 1000
    for key, pts in t.points[sex].items():
        assert len(pts) == num_stages(key, standard)
        assert pts[0] == 0
        # non-decreasing (TW3 boys' PP3 scores B and C both 4)
        assert all(a <= b for a, b in zip(pts, pts[1:])), f"{key} points decrease"


@pytest.mark.parametrize("standard", ["rus-chn", "tw3"])
@pytest.mark.parametrize("sex", ["M", "F"])
def test_curves_monotone(standard, sex):
    ages, scores = load_tables(standard).curve[sex]
    assert np.all(np.diff(ages) > 0) and np.all(np.diff(scores) > 0)


def test_curve_ranges_match_the_standard():
    rus = load_tables("rus-chn")
    assert rus.curve["M"][0][0] == 0 and rus.curve["M"][0][-1] == 18.0
    assert rus.curve["F"][0][-1] == 17.0
    # the corrected girls' 12.0 y value (705, not the transcription's 597)
    ages, scores = rus.curve["F"]
    assert scores[list(ages).index(12.0)] == 705


@pytest.mark.parametrize(
    "sex,rows,first,last",
    # TW3 Table A1 (boys): 2.0-16.5 y, 42-1000 points; Table A3 (girls): 2.0-15.0 y, 126-1000
    [("M", 146, (2.0, 42), (16.5, 1000)), ("F", 131, (2.0, 126), (15.0, 1000))],
)
def test_tw3_curve_is_the_tw3_table(sex, rows, first, last):
    ages, scores = load_tables("tw3").curve[sex]
    assert len(ages) == rows
    assert (ages[0], scores[0]) == first and (ages[-1], scores[-1]) == last
    # every 0.1 y, no gap, no repeated score
    np.testing.assert_allclose(ages, np.round(np.arange(rows) * 0.1 + 2.0, 1))
    assert len(set(scores.tolist())) == rows
    assert np.all(scores == np.round(scores))  # whole points


def test_table_loader_rejects_a_broken_curve(tmp_path):
    from precise_baa.errors import PreciseBaaError
    from precise_baa.paths import curves_dir

    for name in ("rus-chn_points.csv", "rus-chn_p50.csv"):
        (tmp_path / name).write_text((curves_dir() / name).read_text())
    text = (tmp_path / "rus-chn_p50.csv").read_text().replace("F,12.0,705", "F,12.0,597")
    (tmp_path / "rus-chn_p50.csv").write_text(text)
    with pytest.raises(PreciseBaaError, match="not increasing"):
        load_tables("rus-chn", str(tmp_path))


def copy_tables(tmp_path, standard):
    from precise_baa.paths import curves_dir

    for name in (f"{standard}_points.csv", f"{standard}_p50.csv"):
        (tmp_path / name).write_text((curves_dir() / name).read_text())
    return tmp_path / f"{standard}_p50.csv"


@pytest.mark.parametrize(
    "old,new,where",
    [
        # one score shared by two ages (a flat step): score -> age would be ambiguous
        ("M,12.6,470\n", "M,12.6,462\n", "M,12.6,462 (after M,12.5,462)"),
        # a score going down
        ("F,10.9,579\n", "F,10.9,569\n", "F,10.9,569 (after F,10.8,570)"),
        # an age given twice
        ("F,2.1,130\n", "F,2.0,130\n", "F,2.0,130 (after F,2.0,126)"),
    ],
)
def test_tw3_loader_refuses_a_table_that_is_not_one_to_one(tmp_path, old, new, where):
    from precise_baa.errors import PreciseBaaError

    curve = copy_tables(tmp_path, "tw3")
    text = curve.read_text()
    assert old in text
    curve.write_text(text.replace(old, new))
    with pytest.raises(PreciseBaaError, match="tw3_p50.csv: curve for sex .* not increasing") as e:
        load_tables("tw3", str(tmp_path))
    assert where in str(e.value)
