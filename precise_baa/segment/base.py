"""What every segmenter shares: input checks, resizing for a network, and probability map ->
:class:`~precise_baa.interfaces.SegmentResult` (cleanup, plausibility check, hand crop).

An implementation only provides ``probabilities(images) -> list of float32 [H, W] maps`` in
the original image sizes; :class:`BaseSegmenter.segment` does the rest the same way for all.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..handcrop import CleanupParams, clean_mask, hand_crop, implausible, normalise_in_mask
from ..interfaces import SegmentResult
from ..schemas import Box, Flag, ModelInfo


def check_image(image: object, index: int = 0) -> np.ndarray:
    """A 2-D float32 array in [0, 1], or an ``InputError`` saying what was given."""
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"segment: image {index} has shape {arr.shape}; a 2-D grey image "
                         "[H, W] is expected (read files with precise_baa.imaging.read_radiograph)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"segment: image {index} is {arr.dtype}; float32 in [0, 1] is expected "
                         "(precise_baa.imaging.to_unit_float converts integer pixels)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of an image of ``shape`` resized so its longest side is ``size``."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize to ``(h, w)``: area averaging when shrinking, bilinear when enlarging."""
    h, w = hw
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def letterbox(image: np.ndarray, size: int, window: tuple[float, float] | None = None
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """The network input: longest side resized to ``size``, placed top-left on a zero square.

    ``window``: percentile window (of the resized image) stretched to [0, 1] first. Returns the
    ``[size, size]`` float32 canvas and the ``(h, w)`` of the image part of it.
    """
    hw = fit_size(image.shape, size)
    small = resize(np.asarray(image, np.float32), hw)
    if window is not None:
        small = normalise_in_mask(small, np.ones(small.shape, bool), window)
    canvas = np.zeros((size, size), np.float32)
    canvas[: hw[0], : hw[1]] = small
    return canvas, hw


def unletterbox(prob: np.ndarray, hw: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`letterbox` for an output map: the image part, resized to ``shape``."""
    part = np.ascontiguousarray(prob[: hw[0], : hw[1]], dtype=np.float32)
    return cv2.resize(part, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def segment_result(image: np.ndarray, prob: np.ndarray, params: CleanupParams) -> SegmentResult:
    """Probability map -> cleaned mask, plausibility check and hand crop.

    A rejected result keeps the full image (crop box = whole image) and says why in
    ``rejected`` and a ``no_plausible_hand`` flag; later stages must not run on it.
    """
    raw = np.asarray(prob) >= params.threshold
    mask = clean_mask(prob, params)
    reason = implausible(mask, params)
    if reason is not None:
        h, w = image.shape
        return SegmentResult(
            mask=mask, image=image, crop_box=Box(x0=0, y0=0, x1=w, y1=h), raw_mask=raw,
            rejected=reason,
            flags=[Flag(code="no_plausible_hand", message=reason, stage="segment")],
        )
    crop, box = hand_crop(image, mask, params)
    return SegmentResult(mask=mask, image=crop, crop_box=box, raw_mask=raw)


class BaseSegmenter:
    """``segment(images)`` for an implementation that provides ``probabilities(images)``."""

    info: ModelInfo
    cleanup: CleanupParams

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Hand probability per pixel, float32 ``[H, W]`` in [0, 1], one per input image."""
        raise NotImplementedError

    def segment(self, images: Sequence[np.ndarray]) -> list[SegmentResult]:
        """One :class:`SegmentResult` per image (float32 ``[H, W]`` in [0, 1], any size)."""
        checked = [check_image(im, i) for i, im in enumerate(images)]
        if not checked:
            return []
        probs = self.probabilities(checked)
        return [segment_result(im, p, self.cleanup) for im, p in zip(checked, probs, strict=True)]
