"""Stage 4: per-bone stages + sex -> points, total maturity score, bone age.

>>> from precise_baa.score import create_scorer
>>> s = create_scorer("rus-chn")
>>> r = s.score({k: 0 for k in s.stage_counts()}, "F")
>>> r.maturity_score, r.bone_age_years
(0, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from ..errors import InputError
from ..registry import register
from ..rois import ROI_BY_KEY, ROI_KEYS, TW3_LETTERS, stage_counts
from ..schemas import Flag, Recipe, ScoreResult, check_roi_mapping, parse_sex
from .tables import StandardTables, load_tables


class ScoreRecipe(Recipe):
    stage: Literal["score"] = "score"
    implementation: Literal["table", "levels"] = "table"
    #: the standard whose stage definitions the inputs follow (and whose tables score them)
    standard: Literal["rus-chn", "tw3"] = "rus-chn"
    #: |bone age - chronological age| beyond this is flagged (years)
    deviation_threshold_years: float = 2.0


def parse_stage_value(key: str, value: object, standard: str) -> int:
    """A stage as an int; TW3 stages may also be given as letters (A..I)."""
    if isinstance(value, bool):
        raise InputError(f"stage of {key} must be a whole number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    if standard == "tw3" and len(text) == 1 and text.upper() in TW3_LETTERS:
        return TW3_LETTERS.index(text.upper())
    try:
        return int(text)
    except ValueError:
        raise InputError(f"stage of {key} must be a whole number, got {value!r}") from None


class TableScorer:
    """Score by a standard's points table and invert its sex-specific P50 curve."""

    implementation = "table"

    def __init__(self, recipe: ScoreRecipe | None = None):
        self.recipe = recipe or ScoreRecipe(implementation="table")
        self.standard = self.recipe.standard
        self.name = self.recipe.name or self.standard
        self.tables: StandardTables = load_tables(self.standard)

    # -- inputs ---------------------------------------------------------------------------
    def stage_counts(self) -> dict[str, int]:
        return stage_counts(self.standard)

    def check_stages(self, stages: Mapping[str, object]) -> dict[str, int]:
        """All 13 ROI keys, each a valid stage of that bone; an ``InputError`` naming the problem."""
        check_roi_mapping(dict(stages), "stages")
        out = {}
        counts = self.stage_counts()
        for key in ROI_KEYS:
            s = parse_stage_value(key, stages[key], self.standard)
            if not 0 <= s < counts[key]:
                raise InputError(
                    f"stage {stages[key]!r} out of range for {key} ({ROI_BY_KEY[key].name}): "
                    f"{self.standard} stages are 0..{counts[key] - 1}"
                )
            out[key] = s
        return out

    # -- scoring --------------------------------------------------------------------------
    def points(self, stages: Mapping[str, int], sex: str) -> dict[str, int]:
        table = self.tables.points[sex]
        return {k: table[k][stages[k]] for k in ROI_KEYS}

    def _curve(self, sex: str) -> tuple[np.ndarray, np.ndarray]:
        return self.tables.curve[sex]

    def _curve_score(self, total: int, sex: str) -> float:
        return float(total)

    def bone_age(self, total: int, sex: str) -> tuple[float, list[Flag]]:
        """Invert the P50 curve piecewise-linearly; clamp and flag outside its range."""
        ages, scores = self._curve(sex)
        x = self._curve_score(total, sex)
        flags: list[Flag] = []
        if x >= scores[-1]:
            flags.append(Flag(
                code="above_curve",
                message=f"maturity at or above the adult end of the {self.standard} curve: "
                f"bone age >= {ages[-1]:.1f} y",
                stage="score",
            ))
            return float(ages[-1]), flags
        if x < scores[0] or (x == scores[0] and scores[0] > 0):
            flags.append(Flag(
                code="below_curve",
                message=f"maturity at or below the start of the {self.standard} curve: "
                f"bone age <= {ages[0]:.1f} y",
                stage="score",
            ))
            return float(ages[0]), flags
        return float(np.interp(x, scores, ages)), flags

    def score(
        self,
        stages: Mapping[str, object],
        sex: str,
        chronological_age: float | None = None,
    ) -> ScoreResult:
        sex = parse_sex(sex)
        st = self.check_stages(stages)
        pts = self.points(st, sex)
        total = int(sum(pts.values()))
        age, flags = self.bone_age(total, sex)
        age = round(age, 2)
        diff = beyond = None
        thr = self.recipe.deviation_threshold_years
        if chronological_age is not None:
            if not (0 <= chronological_age <= 30):
                raise InputError(f"chronological age {chronological_age!r} y is outside 0..30 y")
            diff = round(age - float(chronological_age), 2)
            beyond = abs(diff) > thr
            if beyond:
                word = "advanced" if diff > 0 else "delayed"
                flags.append(Flag(
                    code=f"bone_age_{word}",
                    message=f"bone age {word} by {abs(diff):.2f} y (threshold {thr:g} y)",
                    stage="score",
                ))
        return ScoreResult(
            standard=self.standard,
            scorer=self.implementation,
            sex=sex,
            stages=st,
            points=pts,
            maturity_score=total,
            bone_age_years=age,
            chronological_age_years=chronological_age,
            bone_age_minus_chronological_years=diff,
            deviation_threshold_years=thr,
            deviation_beyond_threshold=beyond,
            flags=flags,
        )


class LevelsScorer(TableScorer):
    """The paper's "levels": the plain sum of the 13 stage indices, for comparison only.

    The level sum has no published age curve, so its bone age is read off the RUS-CHN P50 curve
    after rescaling the sum to 0..1000 (level sum / maximum level sum * 1000). Every result
    carries a ``levels_approximation`` flag saying so.
    """

    implementation = "levels"

    def points(self, stages: Mapping[str, int], sex: str) -> dict[str, int]:
        return {k: int(stages[k]) for k in ROI_KEYS}

    def max_levels(self) -> int:
        return sum(n - 1 for n in self.stage_counts().values())

    def _curve_score(self, total: int, sex: str) -> float:
        return total / self.max_levels() * self.tables.max_score(sex)

    def bone_age(self, total: int, sex: str) -> tuple[float, list[Flag]]:
        age, flags = super().bone_age(total, sex)
        flags.insert(0, Flag(
            code="levels_approximation",
            message=f"levels scorer: stage-index sum rescaled onto the {self.standard} curve "
            "(a comparison method, not a published standard)",
            stage="score",
        ))
        return age, flags


@register("score", "table", recipe=ScoreRecipe)
def _table(recipe: ScoreRecipe, weights=None, device=None) -> TableScorer:
    return TableScorer(recipe)


@register("score", "levels", recipe=ScoreRecipe)
def _levels(recipe: ScoreRecipe, weights=None, device=None) -> LevelsScorer:
    return LevelsScorer(recipe)
