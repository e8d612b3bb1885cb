"""Stage 2: 13-ROI detection with mmdet, one checked box per ROI.

Registered implementation ``mmdet``: any mmdet 3.x config in ``stages/detect/`` (the recipe
is the ``.py`` file, or a YAML naming it with settings, see :mod:`.recipe`):

- ``detectors-cascade-rcnn-r50.py``: DetectoRS (Cascade R-CNN + RFP + SAC), the precise-BAA
  detector; ``detectors-cascade-rcnn-lite.py``: the same architecture, narrow and at a small
  scale (demo, CPU);
- ``faster-rcnn-r50.py``: a plain Faster R-CNN, to show a swap.

Importing this package is light (recipe and anatomy checks); torch and mmdet load when a
detector is built.

>>> from precise_baa.registry import load_stage
>>> det = load_stage("detect", recipe="stages/detect/detectors-cascade-rcnn-lite.py")  # doctest: +SKIP
>>> detections = det.detect([crop])                                                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..registry import register
from .anatomy import (
    AnatomyParams,
    check_anatomy,
    choose_boxes,
    detections_from_raw,
    finalize,
    hand_frame,
    rank_candidates,
    select_best,
)
from .recipe import DetectRecipe

if TYPE_CHECKING:
    from .model import MmdetDetector


@register("detect", "mmdet", recipe=DetectRecipe)
def _build(recipe: DetectRecipe, weights=None, device=None) -> MmdetDetector:
    from .model import MmdetDetector

    return MmdetDetector.from_recipe(recipe, weights=weights, device=device)


_LAZY = {
    "MmdetDetector": "model", "RawDetections": "model",
    "train_detector": "train", "evaluate_detector": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnatomyParams", "DetectRecipe", "check_anatomy", "choose_boxes", "detections_from_raw",
    "finalize", "hand_frame", "rank_candidates", "select_best",
    *_LAZY,
]
