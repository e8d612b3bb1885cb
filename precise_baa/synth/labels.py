"""Phantom labels: sex, chronological age and per-bone stages consistent with the standards.

A phantom's maturity is one latent fraction ``f`` (0 = newborn, 1 = adult) shared by all 13
ROIs, plus a little per-bone noise so bones of one hand disagree the way real bones do. A
bone's stage is the highest stage whose points fraction (its points / its top-stage points) is
at most that bone's fraction. ``f`` is found by bisection so that the RUS-CHN total score is
close to the score the sex's P50 curve gives at the drawn bone age. TW3 stages follow from the
same per-bone fractions through the TW3 tables, so both label sets describe one hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..errors import InputError
from ..rois import ROI_KEYS, num_stages
from ..schemas import parse_sex
from ..score import create_scorer, load_tables

#: chronological age ranges (years) drawn uniformly, per sex (the curves' ranges)
AGE_RANGE = {"M": (1.0, 18.0), "F": (1.0, 17.0)}
#: spread of bone age around chronological age (years)
BONE_AGE_SD = 0.8
#: spread of a bone's maturity fraction around the hand's latent fraction
BONE_NOISE_SD = 0.04


@dataclass(frozen=True)
class Labels:
    """Everything a phantom's annotation says about maturity."""

    sex: str
    chronological_age: float
    stages: dict[str, int]  # RUS-CHN
    stages_tw3: dict[str, int]
    bone_age: float  # what the RUS-CHN scorer gives for ``stages``
    maturity_score: int  # RUS-CHN total score
    #: maturity of the whole hand in [0, 1] (drives the carpals and the non-graded bones)
    maturity: float


@cache
def points_fractions(standard: str, sex: str) -> dict[str, np.ndarray]:
    """Per ROI: points of each stage / points of the top stage (increasing, 0 at stage 0)."""
    pts = load_tables(standard).points[sex]
    return {k: np.asarray(pts[k], dtype=float) / float(pts[k][-1]) for k in ROI_KEYS}


def stages_from_fractions(fractions: Mapping[str, float], standard: str, sex: str) -> dict[str, int]:
    """Each bone's highest stage whose points fraction is at most its maturity fraction."""
    table = points_fractions(standard, sex)
    out = {}
    for k in ROI_KEYS:
        s = int(np.searchsorted(table[k], fractions[k], side="right")) - 1
        out[k] = min(max(s, 0), len(table[k]) - 1)
    return out


def total_score(stages: Mapping[str, int], standard: str, sex: str) -> int:
    pts = load_tables(standard).points[sex]
    return int(sum(pts[k][stages[k]] for k in ROI_KEYS))


def score_at_age(age: float, sex: str, standard: str = "rus-chn") -> float:
    """The P50 total score at ``age`` (years), clamped to the curve's range."""
    ages, scores = load_tables(standard).curve[sex]
    return float(np.interp(age, ages, scores))


def fit_latent(target: float, noise: Mapping[str, float], sex: str) -> tuple[float, dict[str, int]]:
    """Bisection for the latent fraction whose RUS-CHN stages total closest to ``target``."""
    def stages_at(f: float) -> dict[str, int]:
        return stages_from_fractions({k: f + noise[k] for k in ROI_KEYS}, "rus-chn", sex)

    lo, hi = -0.3, 1.3  # total(lo) == 0, total(hi) == max
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if total_score(stages_at(mid), "rus-chn", sex) >= target:
            hi = mid
        else:
            lo = mid
    s_hi, s_lo = stages_at(hi), stages_at(lo)
    t_hi, t_lo = total_score(s_hi, "rus-chn", sex), total_score(s_lo, "rus-chn", sex)
    if abs(t_lo - target) < abs(t_hi - target):
        return float(np.clip(lo, 0.0, 1.0)), s_lo
    return float(np.clip(hi, 0.0, 1.0)), s_hi


def check_forced_stages(stages: Mapping[str, object]) -> dict[str, int]:
    """Validate a (possibly partial) ``{roi: RUS-CHN stage}`` mapping given by a caller."""
    out = {}
    for k, v in stages.items():
        if k not in ROI_KEYS:
            raise InputError(f"stages: unknown ROI {k!r}; expected some of: {', '.join(ROI_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"stages: stage of {k} must be a whole number, got {v!r}")
        if not 0 <= int(v) < num_stages(k):
            raise InputError(f"stages: {k} stage {v} out of range 0..{num_stages(k) - 1} (RUS-CHN)")
        out[k] = int(v)
    return out


def sample_labels(
    rng: np.random.Generator,
    *,
    sex: str | None = None,
    chronological_age: float | None = None,
    stages: Mapping[str, int] | None = None,
) -> Labels:
    """Draw one hand's labels; any of sex, age and (some or all) stages may be fixed.

    Random draws happen in a fixed order whatever is fixed, so fixing one thing leaves the
    others as they would have been.
    """
    u_sex, u_age = rng.random(), rng.random()
    z_bone_age = rng.standard_normal()
    noise = {k: BONE_NOISE_SD * float(z) for k, z in zip(ROI_KEYS, rng.standard_normal(len(ROI_KEYS)))}

    sex = parse_sex(sex) if sex is not None else ("M" if u_sex < 0.5 else "F")
    lo, hi = AGE_RANGE[sex]
    forced = check_forced_stages(stages or {})
    ages, _ = load_tables("rus-chn").curve[sex]

    if chronological_age is not None:
        age = float(chronological_age)
        if not 0.0 <= age <= 30.0:
            raise InputError(f"chronological_age {age!r} y is outside 0..30 y")
    else:
        age = lo + (hi - lo) * u_age
    target_age = float(np.clip(age + BONE_AGE_SD * z_bone_age, 0.25, ages[-1]))
    latent, rus = fit_latent(score_at_age(target_age, sex), noise, sex)
    fracs_rus = points_fractions("rus-chn", sex)
    if forced:
        rus.update(forced)
        if len(forced) == len(ROI_KEYS):
            # the hand's maturity follows the given stages (mean points fraction)
            latent = float(np.mean([fracs_rus[k][rus[k]] for k in ROI_KEYS]))
    bone_fracs = {k: latent + noise[k] for k in ROI_KEYS}
    for k, s in forced.items():
        bone_fracs[k] = fracs_rus[k][s]  # TW3 stage read at the given stage's maturity
    tw3 = stages_from_fractions(bone_fracs, "tw3", sex)

    result = create_scorer("rus-chn").score(rus, sex)
    if forced and chronological_age is None:
        # stages fixed by the caller: the child's age is drawn around the bone age they imply
        age = float(np.clip(result.bone_age_years - BONE_AGE_SD * z_bone_age, lo, hi))
    return Labels(
        sex=sex,
        chronological_age=round(age, 2),
        stages=rus,
        stages_tw3=tw3,
        bone_age=result.bone_age_years,
        maturity_score=result.maturity_score,
        maturity=float(np.clip(latent, 0.0, 1.0)),
    )


def age_for_maturity(latent: float, sex: str) -> float:
    """The bone age (years) that a hand of latent maturity ``latent`` shows on the P50 curve.

    Drives what grows with the skeleton rather than with one bone's stage: hand size and
    proportions, carpals, the thumb sesamoid. A forced single stage leaves it unchanged.
    """
    stages = stages_from_fractions({k: float(latent) for k in ROI_KEYS}, "rus-chn", sex)
    ages, scores = load_tables("rus-chn").curve[sex]
    return float(np.interp(total_score(stages, "rus-chn", sex), scores, ages))
