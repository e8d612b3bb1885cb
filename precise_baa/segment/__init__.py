"""Stage 1: palm segmentation and the hand crop every later stage sees.

Registered implementations (recipes in ``stages/segment/``):

- ``unet``: segmentation-models-pytorch U-Net (``unet-resnet34`` full size, ``unet-lite`` a
  MobileNetV3 encoder for CPU / demo), trained with ``precise-baa train segment``.
- ``threshold``: Otsu on a blurred image; no weights (baseline and fallback).

Both end in the same cleanup (:mod:`precise_baa.handcrop`): threshold, largest
component, hole filling, opening / closing, then a plausibility check (a rejection with the
reason, never a guess) and the hand crop (uniform background, cropped, intensity windowed)
with its box in original image coordinates.

Importing this package is light (recipes only); torch and OpenCV load when a segmenter is built.

>>> from precise_baa.registry import load_stage
>>> seg = load_stage("segment", recipe="stages/segment/threshold.yaml")  # doctest: +SKIP
>>> r = seg.segment([image])[0]                                          # doctest: +SKIP
>>> r.rejected or (r.image.shape, r.crop_box)                            # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import WeightsError
from ..registry import register
from .recipes import (
    AugmentSettings,
    CleanupSettings,
    SegmentRecipe,
    SegmentTraining,
    ThresholdRecipe,
    UnetRecipe,
)

if TYPE_CHECKING:
    from .threshold import ThresholdSegmenter
    from .unet import UnetSegmenter


@register("segment", "unet", recipe=UnetRecipe)
def _build_unet(recipe: UnetRecipe, weights=None, device=None) -> UnetSegmenter:
    from .unet import UnetSegmenter

    return UnetSegmenter.from_recipe(recipe, weights=weights, device=device)


@register("segment", "threshold", recipe=ThresholdRecipe)
def _build_threshold(recipe: ThresholdRecipe, weights=None, device=None) -> ThresholdSegmenter:
    from .threshold import ThresholdSegmenter

    if weights is not None:
        raise WeightsError(f"{weights}: the threshold segmenter has no weights; give only its recipe")
    return ThresholdSegmenter(recipe)


_LAZY = {
    "UnetSegmenter": "unet", "build_unet": "unet", "network_input": "unet",
    "ThresholdSegmenter": "threshold", "BaseSegmenter": "base", "segment_result": "base",
    "letterbox": "base", "unletterbox": "base",
    "CleanupParams": "cleanup", "clean_mask": "cleanup", "hand_crop": "cleanup",
    "implausible": "cleanup",
    "train_segmenter": "train", "segment_loss": "train", "evaluate_segmenter": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentSettings", "CleanupSettings", "SegmentRecipe", "SegmentTraining", "ThresholdRecipe",
    "UnetRecipe", *_LAZY,
]
