"""Stage 4 against hand-computed expectations (tables in percentile_curves/)."""

from __future__ import annotations

import json

import pytest

from precise_baa.errors import InputError
from precise_baa.rois import ROI_KEYS, stage_counts
from precise_baa.score import create_scorer

MIXED = {"radius": 7, **{k: 5 for k in ROI_KEYS[1:]}}


def all_stages(value):
    return {k: value for k in ROI_KEYS}


def top_stages(standard="rus-chn"):
    return {k: n - 1 for k, n in stage_counts(standard).items()}


def test_rus_chn_girls_mixed_stages():
    # points: 91+73+23+14+15+17+15+18+16+19+20+16+18 = 355; girls' curve 348 @ 9.0 y,
    # 399 @ 9.5 y -> 9.0 + 0.5 * 7/51 = 9.0686
    r = create_scorer("rus-chn").score(MIXED, "F")
    assert r.points["radius"] == 91 and r.points["ulna"] == 73 and r.points["dp5"] == 18
    assert r.maturity_score == 355
    assert r.bone_age_years == pytest.approx(9.07, abs=0.005)
    assert r.flags == []


def test_rus_chn_boys_mixed_stages():
    # points: 76+61+22+13+14+17+14+16+14+17+19+15+17 = 315; boys' curve 305 @ 11.0 y,
    # 359 @ 11.5 y -> 11.0 + 0.5 * 10/54 = 11.0926
    r = create_scorer("rus-chn").score(MIXED, "male")
    assert r.sex == "M" and r.maturity_score == 315
    assert r.bone_age_years == pytest.approx(11.09, abs=0.005)


def test_rus_chn_exact_curve_point():
    # girls: radius 8 (125) + ulna 7 (120) + mc1..dp5 at stage 1 ... hit 268 = 8.0 y exactly?
    # simpler: all stage 0 except radius 2 (15) and ulna 2 (31): 46 points -> between
    # 40 @ 1.0 y and 64 @ 1.5 y: 1.0 + 0.5 * 6/24 = 1.125
    st = all_stages(0) | {"radius": 2, "ulna": 2}
    r = create_scorer("rus-chn").score(st, "F")
    assert r.maturity_score == 46
    assert r.bone_age_years == pytest.approx(1.125, abs=0.005)


@pytest.mark.parametrize("sex,end", [("F", 17.0), ("M", 18.0)])
def test_adult_end_is_clamped_and_flagged(sex, end):
    r = create_scorer("rus-chn").score(top_stages(), sex)
    assert r.maturity_score == 1000
    assert r.bone_age_years == end
    assert [f.code for f in r.flags] == ["above_curve"]
    assert f"{end:.1f} y" in r.flags[0].message


def test_no_ossification_is_age_zero():
    r = create_scorer("rus-chn").score(all_stages(0), "M")
    assert (r.maturity_score, r.bone_age_years, r.flags) == (0, 0.0, [])


# TW3: points from percentile_curves/tw3_points.csv (Tables A5/A6), bone age from
# percentile_curves/tw3_p50.csv (Tables A1/A3, rows "sex,age_years,maturity_score", 0.1 y apart).


def test_tw3_girls_all_stage_e():
    # E = index 4: 56+45+24+16+17+20+19+18+18+18+22+15+15 = 303; rows F,6.3,301 and
    # F,6.4,305 -> 6.3 + 0.1 * (303-301)/(305-301) = 6.35
    r = create_scorer("tw3").score(all_stages("E"), "F")
    assert r.maturity_score == 303
    assert r.bone_age_years == pytest.approx(6.35, abs=0.005)
    assert r.stages["radius"] == 4 and r.flags == []


def test_tw3_boys_all_stage_e_is_a_table_row():
    # E = index 4: 39+40+21+12+14+17+15+15+15+15+17+13+13 = 246 = row M,8.1,246 -> 8.1 exactly
    r = create_scorer("tw3").score(all_stages("E"), "M")
    assert (r.maturity_score, r.bone_age_years, r.flags) == (246, 8.1, [])


def test_tw3_girl_at_578_points_is_10_9():
    # all F (index 5): 78+74+31+23+23+31+27+26+27+28+33+22+22 = 445; radius I (218, +140) and
    # mc1 E (24, -7): 445 + 140 - 7 = 578; rows F,10.8,570 and F,10.9,579 ->
    # 10.8 + 0.1 * 8/9 = 10.889 (the old two-yearly curve read 12.0 y here)
    st = all_stages("F") | {"radius": "I", "mc1": "E"}
    r = create_scorer("tw3").score(st, "F")
    assert r.maturity_score == 578
    assert r.bone_age_years == pytest.approx(10.89, abs=0.005)
    assert r.flags == []


def test_tw3_boy_at_472_points_is_12_6():
    # all F (index 5): 59+58+26+19+18+26+23+21+22+23+26+18+18 = 357; ulna H (181, +123) and
    # pp3 E (15, -8): 357 + 123 - 8 = 472; rows M,12.6,470 and M,12.7,478 ->
    # 12.6 + 0.1 * 2/8 = 12.625 (the old two-yearly curve read 14.0 y here)
    st = all_stages("F") | {"ulna": "H", "pp3": "E"}
    r = create_scorer("tw3").score(st, "M")
    assert r.maturity_score == 472
    assert r.bone_age_years == pytest.approx(12.625, abs=0.006)
    assert r.flags == []


@pytest.mark.parametrize(
    "sex,score,expected",
    [
        ("F", 127, 2.025),  # F,2.0,126 / F,2.1,130: 2.0 + 0.1 * 1/4
        ("F", 221, 4.0 + 0.1 * 2 / 3),  # F,4.0,219 / F,4.1,222: 4.0667 (old curve: 4.0)
        ("F", 303, 6.35),  # F,6.3,301 / F,6.4,305: 6.3 + 0.1 * 2/4
        ("F", 578, 10.8 + 0.1 * 8 / 9),  # F,10.8,570 / F,10.9,579: 10.8889 (old curve: 12.0)
        ("F", 891, 14.0),  # row F,14.0,891
        ("F", 999, 14.9 + 0.1 * 10 / 11),  # F,14.9,989 / F,15.0,1000: 14.9909
        ("M", 43, 2.025),  # M,2.0,42 / M,2.1,46: 2.0 + 0.1 * 1/4
        ("M", 132, 4.1),  # row M,4.1,132 (old curve: 4.0)
        ("M", 472, 12.625),  # M,12.6,470 / M,12.7,478: 12.6 + 0.1 * 2/8 (old curve: 14.0)
        ("M", 744, 15.0 + 0.1 * 3 / 14),  # M,15.0,741 / M,15.1,755: 15.0214 (old curve: 16.0)
        ("M", 891, 16.0),  # row M,16.0,891 (old curve: 16.0 flagged for anything >= 744)
        ("M", 999, 16.4 + 0.1 * 22 / 23),  # M,16.4,977 / M,16.5,1000: 16.4957
    ],
)
def test_tw3_score_to_bone_age_interpolates_the_table(sex, score, expected):
    age, flags = create_scorer("tw3").bone_age(score, sex)
    assert age == pytest.approx(expected, abs=1e-9)
    assert flags == []


@pytest.mark.parametrize(
    "sex,score,end",
    [
        ("F", 0, 2.0),  # nothing ossified
        ("F", 96, 2.0),  # under the first row F,2.0,126: no TW3 age below 2.0 y
        ("F", 126, 2.0),  # the first row itself: "at or below", as for RUS-CHN
        ("M", 0, 2.0),
        ("M", 41, 2.0),  # under the first row M,2.0,42
        ("M", 42, 2.0),
    ],
)
def test_tw3_below_the_table_is_clamped_and_flagged(sex, score, end):
    age, flags = create_scorer("tw3").bone_age(score, sex)
    assert age == end
    assert [f.code for f in flags] == ["below_curve"]
    assert "bone age <= 2.0 y" in flags[0].message


def test_tw3_girl_at_96_points_is_below_the_table():
    # all B (index 1): 23+30+8+5+6+9+5+6+6+7+7+7+7 = 126; ulna A (0, -30): 96 points.
    # TW3 Table A3 starts at F,2.0,126, so 96 points has no TW3 age: clamped to 2.0 y and flagged.
    st = all_stages("B") | {"ulna": "A"}
    r = create_scorer("tw3").score(st, "F", chronological_age=1.25)
    assert r.maturity_score == 96 and r.bone_age_years == 2.0
    assert [f.code for f in r.flags] == ["below_curve"]
    assert r.bone_age_minus_chronological_years == pytest.approx(0.75)


def test_tw3_no_ossification_is_below_the_table():
    r = create_scorer("tw3").score(all_stages(0), "M")
    assert (r.maturity_score, r.bone_age_years) == (0, 2.0)
    assert [f.code for f in r.flags] == ["below_curve"]


@pytest.mark.parametrize("sex,end", [("F", 15.0), ("M", 16.5)])
def test_tw3_adult_end_is_clamped_and_flagged(sex, end):
    r = create_scorer("tw3").score(top_stages("tw3"), sex)
    assert r.maturity_score == 1000 and r.bone_age_years == end
    assert [f.code for f in r.flags] == ["above_curve"]
    assert f"bone age >= {end:.1f} y" in r.flags[0].message


def test_tw3_every_table_row_reads_back_its_own_age():
    s = create_scorer("tw3")
    for sex in ("F", "M"):
        ages, scores = s.tables.curve[sex]
        for age, score in zip(ages[1:-1], scores[1:-1]):
            got, flags = s.bone_age(int(score), sex)
            assert (got, flags) == (pytest.approx(age, abs=1e-9), []), (sex, score)


def test_cli_tw3_letters_and_age(cli):
    # all E girls: 303 points -> 6.35 y (see test_tw3_girls_all_stage_e); 6.35 - 10 = -3.65
    p = cli("stage-score", "--standard", "tw3", "--sex", "F", "--stages",
            stages_arg(all_stages("E")), "--age", "10")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["standard"] == "tw3" and out["maturity_score"] == 303
    assert out["bone_age_years"] == pytest.approx(6.35, abs=0.005)
    assert out["bone_age_minus_chronological_years"] == pytest.approx(-3.65, abs=0.005)
    assert [f["code"] for f in out["flags"]] == ["bone_age_delayed"]


def test_levels_scorer_sums_stage_indices_and_says_so():
    s = create_scorer(implementation="levels")
    assert s.max_levels() == 150
    r = s.score(MIXED, "F")
    assert r.maturity_score == 7 + 5 * 12 and r.points["radius"] == 7
    # 67/150 of 1000 = 446.67 -> girls 399 @ 9.5, 453 @ 10.0 -> 9.5 + 0.5 * 47.67/54
    assert r.bone_age_years == pytest.approx(9.94, abs=0.01)
    assert r.flags[0].code == "levels_approximation"


def test_chronological_age_difference_and_threshold():
    s = create_scorer("rus-chn")
    r = s.score(MIXED, "F", chronological_age=6.0)
    assert r.bone_age_minus_chronological_years == pytest.approx(3.07, abs=0.005)
    assert r.deviation_beyond_threshold is True
    assert any(f.code == "bone_age_advanced" for f in r.flags)
    r = s.score(MIXED, "F", chronological_age=8.5)
    assert r.deviation_beyond_threshold is False and r.flags == []
    loose = create_scorer("rus-chn", deviation_threshold_years=4.0).score(MIXED, "F", 6.0)
    assert loose.deviation_beyond_threshold is False
    delayed = s.score(MIXED, "F", chronological_age=12.0)
    assert any(f.code == "bone_age_delayed" for f in delayed.flags)


@pytest.mark.parametrize(
    "stages,sex,match",
    [
        ({k: 1 for k in ROI_KEYS if k != "mc3"}, "F", "missing ROI key.*mc3"),
        (all_stages(1) | {"mc2": 1}, "F", "unknown ROI key.*mc2"),
        (all_stages(1) | {"radius": 15}, "F", "out of range for radius.*0..14"),
        (all_stages(1) | {"mc3": 11}, "M", "out of range for mc3.*0..10"),
        (all_stages(1) | {"ulna": -1}, "M", "out of range for ulna"),
        (all_stages(1) | {"dp1": "x"}, "M", "whole number"),
        (all_stages(1), "X", "bad sex"),
    ],
)
def test_bad_input_is_named(stages, sex, match):
    with pytest.raises(InputError, match=match):
        create_scorer("rus-chn").score(stages, sex)


def stages_arg(stages):
    return ",".join(f"{k}={v}" for k, v in stages.items())


def test_cli_contract_json(cli):
    p = cli("stage-score", "--standard", "rus-chn", "--sex", "F", "--stages", stages_arg(MIXED),
                "--age", "8")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert isinstance(out["maturity_score"], int) and out["maturity_score"] == 355
    assert isinstance(out["bone_age_years"], float)
    assert set(out["points"]) == set(ROI_KEYS)
    assert out["flags"] == [] and out["bone_age_minus_chronological_years"] == pytest.approx(1.07)


@pytest.mark.parametrize("sex", ["M", "F", "male", "female"])
def test_cli_every_bone_both_sexes(cli, sex):
    for std in ("rus-chn", "tw3"):
        top = top_stages(std)
        p = cli("stage-score", "--standard", std, "--sex", sex, "--stages", stages_arg(top))
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["maturity_score"] == 1000


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sex", "F", "--stages", "radius=7"], "missing ROI key"),
        (["--sex", "F", "--stages", stages_arg(MIXED) + ",hamate=3"], "unknown ROI key(s) in stages: hamate"),
        (["--sex", "F", "--stages", stages_arg(MIXED | {"mc5": 11})], "out of range for mc5"),
        (["--sex", "Q", "--stages", stages_arg(MIXED)], "bad sex 'Q'"),
        (["--sex", "F", "--stages", "radius7"], "expected ROI=STAGE"),
        (["--sex", "F", "--stages", stages_arg(MIXED) + ",radius=3"], "given twice"),
    ],
)
def test_cli_errors_are_one_line(cli, args, needle):
    p = cli("stage-score", *args)
    assert p.returncode != 0
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stdout == ""
