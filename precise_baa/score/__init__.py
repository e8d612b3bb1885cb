"""Stage 4: maturity scoring by RUS-CHN (default), TW3, or the paper's stage-index "levels".

``DifferentiableScorer`` (:mod:`precise_baa.score.torch`) is the table scorer in torch, for
training a grader from bone ages; it loads torch when first used.
"""

from __future__ import annotations

from typing import Any

from .scorers import LevelsScorer, ScoreRecipe, TableScorer, parse_stage_value
from .tables import StandardTables, load_tables

RECIPE_MODEL = ScoreRecipe


def create_scorer(standard: str = "rus-chn", implementation: str = "table", **kwargs) -> TableScorer:
    """A scorer by standard name: ``create_scorer("tw3")``, ``create_scorer(implementation="levels")``."""
    recipe = ScoreRecipe(implementation=implementation, standard=standard, **kwargs)
    return LevelsScorer(recipe) if implementation == "levels" else TableScorer(recipe)


def __getattr__(name: str) -> Any:
    if name == "DifferentiableScorer":
        from .torch import DifferentiableScorer

        return DifferentiableScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DifferentiableScorer", "RECIPE_MODEL", "LevelsScorer", "ScoreRecipe", "StandardTables", "TableScorer",
    "create_scorer", "load_tables", "parse_stage_value",
]
