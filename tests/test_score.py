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


def test_tw3_girls_all_stage_e():
    # E = index 4: 56+45+24+16+17+20+19+18+18+18+22+15+15 = 303; girls' TW3 275 @ 6 y,
    # 337 @ 8 y -> 6 + 2 * 28/62 = 6.903
    r = create_scorer("tw3").score(all_stages("E"), "F")
    assert r.maturity_score == 303
    assert r.bone_age_years == pytest.approx(6.90, abs=0.005)
    assert r.stages["radius"] == 4


def test_tw3_below_curve_start_is_flagged():
    r = create_scorer("tw3").score(all_stages(0), "M")
    assert r.bone_age_years == 4.0
    assert [f.code for f in r.flags] == ["below_curve"]


def test_tw3_boys_top_is_above_curve():
    r = create_scorer("tw3").score(top_stages("tw3"), "M")
    assert r.maturity_score == 1000 and r.bone_age_years == 16.0
    assert r.flags[0].code == "above_curve"


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
