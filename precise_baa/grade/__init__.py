"""Stage 3: per-ROI maturity grading.

Registered implementations (recipes in ``stages/grade/``):

- ``densenet-attention``: DenseNet121 on each ROI crop, 13x13 self-attention across ROIs, one
  head per ROI (the precise-BAA grader; ``densenet-attention-lite`` is a narrow DenseNet).
- ``resnet-shuffle``: ResNet with shuffle attention and dual pooling (an "improved ResNet"
  RUS-CHN grader), same interface.

Importing this package is light (recipes only); torch loads when a grader is built.

>>> from precise_baa.registry import load_stage
>>> grader = load_stage("grade", recipe="stages/grade/densenet-attention-lite.yaml")  # doctest: +SKIP
>>> grades = grader.grade(images, boxes, sexes)                                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import register
from .recipes import (
    DenseNetAttentionRecipe,
    GradeRecipe,
    GradeTraining,
    JitterSettings,
    ResNetShuffleRecipe,
)

if TYPE_CHECKING:
    from .predictor import RoiGrader


def _build(recipe: GradeRecipe, weights=None, device=None) -> RoiGrader:
    from .predictor import RoiGrader

    return RoiGrader.from_recipe(recipe, weights=weights, device=device)


register("grade", "densenet-attention", recipe=DenseNetAttentionRecipe)(_build)
register("grade", "resnet-shuffle", recipe=ResNetShuffleRecipe)(_build)

_LAZY = {
    "RoiGrader": "predictor", "GraderNet": "models", "GraderOutput": "models",
    "RoiSelfAttention": "models", "ShuffleAttention": "models", "build_model": "models",
    "train_grader": "train", "grade_loss": "train", "evaluate_grader": "evaluate",
    "grading_metrics": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DenseNetAttentionRecipe", "GradeRecipe", "GradeTraining", "JitterSettings",
    "ResNetShuffleRecipe", *_LAZY,
]
