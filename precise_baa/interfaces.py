"""The stage contracts: what each stage takes and returns.

Images are float32 ``[H, W]`` in ``[0, 1]`` (see :mod:`precise_baa.imaging`). Every stage works
on batches (lists) so implementations can batch on the device; results are frozen.

- ``Segmenter.segment(images) -> list[SegmentResult]``: mask and hand crop per original image.
- ``Detector.detect(images) -> list[Detections]``: one box (or None + a flag) per ROI, in the
  coordinates of the image it was given (the hand crop in the pipeline).
- ``Grader.grade(images, boxes, sexes) -> list[Grades]``: stage probabilities per ROI and the
  13x13 ROI attention map.
- ``Scorer.score(stages, sex, chronological_age) -> ScoreResult`` (see :mod:`precise_baa.score`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .rois import ROI_KEYS
from .schemas import Box, Flag, ModelInfo, ScoreResult


@dataclass(frozen=True)
class SegmentResult:
    mask: np.ndarray  # bool [H, W], the cleaned hand mask in original image coordinates
    image: np.ndarray  # float32 [h, w]: hand crop, background uniform, intensity normalised
    crop_box: Box  # where ``image`` lies in the original image (integer pixel edges)
    raw_mask: np.ndarray | None = None  # bool [H, W], the mask before morphological cleanup
    rejected: str | None = None  # reason when no plausible hand was found
    flags: list[Flag] = field(default_factory=list)


@dataclass(frozen=True)
class Detections:
    boxes: dict[str, Box | None]  # ROI key -> box (None when missing or implausible)
    scores: dict[str, float | None]
    flags: list[Flag] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [k for k in ROI_KEYS if self.boxes.get(k) is None]


@dataclass(frozen=True)
class Grades:
    standard: str  # the stage convention of the heads ("rus-chn" or "tw3")
    # ROI key -> [num_stages] probabilities; a ROI without a box is absent (and flagged)
    probabilities: dict[str, np.ndarray]
    attention: np.ndarray | None = None  # [13, 13] rows sum to 1, ROI_KEYS order
    flags: list[Flag] = field(default_factory=list)

    @property
    def stages(self) -> dict[str, int]:
        return {k: int(np.argmax(p)) for k, p in self.probabilities.items()}

    @property
    def confidence(self) -> dict[str, float]:
        return {k: float(np.max(p)) for k, p in self.probabilities.items()}

    @property
    def expected(self) -> dict[str, float]:
        return {k: float(np.dot(np.arange(len(p)), p)) for k, p in self.probabilities.items()}


@runtime_checkable
class Segmenter(Protocol):
    info: ModelInfo

    def segment(self, images: Sequence[np.ndarray]) -> list[SegmentResult]: ...


@runtime_checkable
class Detector(Protocol):
    info: ModelInfo

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


@runtime_checkable
class Grader(Protocol):
    info: ModelInfo
    standard: str

    def grade(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[Mapping[str, Box]],
        sexes: Sequence[str],
    ) -> list[Grades]: ...


@runtime_checkable
class Scorer(Protocol):
    standard: str

    def score(
        self, stages: Mapping[str, object], sex: str, chronological_age: float | None = None
    ) -> ScoreResult: ...
