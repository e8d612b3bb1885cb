"""Morphological cleanup of a palm mask, and the hand crop every later stage sees.

A layer below the stages: stage 1 (:mod:`precise_baa.segment`) produces the hand crop with it
at inference, and :func:`precise_baa.data.prepared_example` produces the same crop from a
ground-truth mask for training stages 2 and 3.

``clean_mask`` turns a probability map (or a rough mask) into one solid hand: threshold,
opening, largest connected component, hole filling, closing. ``hand_crop`` applies a mask to
the radiograph: background, border strips and markers set to a uniform value, the image cropped
to the hand with a margin and its intensity window set from the pixels inside the mask.

Detection and grading are trained on ``hand_crop`` of the ground-truth mask, so at inference
they see the same kind of image the segmenter produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .schemas import Box


@dataclass(frozen=True)
class CleanupParams:
    threshold: float = 0.5
    opening_px: int = 3  # removes specks and thin bridges (odd kernel size; 0 = off)
    closing_px: int = 5  # smooths the outline, closes small gaps (0 = off)
    margin: float = 0.04  # crop margin as a fraction of the hand box's longer side
    background: float = 0.0  # value outside the mask after normalisation
    window: tuple[float, float] = (0.5, 99.5)  # percentile window inside the mask
    min_area: float = 0.05  # plausible hand area, fraction of the image
    max_area: float = 0.95
    min_fill: float = 0.2  # hand area / its box area


def _kernel(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (px, px))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not 4-connected to the border filled.

    The same result as ``scipy.ndimage.binary_fill_holes`` (default structure), several times
    faster on full-size radiographs (one OpenCV flood fill from outside the image).
    """
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = np.asarray(mask, dtype=bool)
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)  # background reachable from the border -> 2
    return outside[1:-1, 1:-1] != 2


def clean_mask(prob: np.ndarray, params: CleanupParams = CleanupParams()) -> np.ndarray:
    """Probability map or mask -> one solid boolean hand mask."""
    mask = (np.asarray(prob, dtype=np.float32) >= params.threshold).astype(np.uint8)
    if params.opening_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(params.opening_px))
    mask = fill_holes(largest_component(mask))
    if params.closing_px > 1:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, _kernel(params.closing_px)) > 0
        mask = fill_holes(mask)
    return np.asarray(mask, dtype=bool)


def implausible(mask: np.ndarray, params: CleanupParams = CleanupParams()) -> str | None:
    """Why ``mask`` cannot be a hand (area or shape out of bounds), or None."""
    area = float(mask.mean())
    if area == 0.0:
        return "no hand found (empty mask)"
    if area < params.min_area:
        return f"no plausible hand: mask covers {area:.1%} of the image (< {params.min_area:.0%})"
    if area > params.max_area:
        return f"no plausible hand: mask covers {area:.1%} of the image (> {params.max_area:.0%})"
    x0, y0, bw, bh = mask_bounds(mask)
    fill = mask.sum() / float(bw * bh)
    if fill < params.min_fill:
        return f"no plausible hand: mask fills {fill:.0%} of its box (< {params.min_fill:.0%})"
    return None


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, width, height)`` of the smallest box holding every true pixel of a 2-D mask
    (all zeros when it is empty): OpenCV's bounding rectangle, a fraction of ``np.nonzero``'s
    time on full-size radiographs."""
    m = np.ascontiguousarray(mask)
    m = m.view(np.uint8) if m.dtype == np.bool_ else (m != 0).astype(np.uint8)
    return tuple(int(v) for v in cv2.boundingRect(m))


def mask_box(mask: np.ndarray, margin: float = 0.0) -> Box:
    """Integer-edged box around a mask, grown by ``margin`` x its longer side, clipped."""
    h, w = mask.shape
    x0, y0, bw, bh = mask_bounds(mask)
    if bw == 0 or bh == 0:
        return Box(x0=0, y0=0, x1=w, y1=h)
    y1, x1 = y0 + bh, x0 + bw
    pad = int(round(margin * max(y1 - y0, x1 - x0)))
    return Box(x0=max(0, x0 - pad), y0=max(0, y0 - pad), x1=min(w, x1 + pad), y1=min(h, y1 + pad))


def normalise_in_mask(image: np.ndarray, mask: np.ndarray, window=(0.5, 99.5), background=0.0) -> np.ndarray:
    """Percentile window of the pixels inside ``mask`` -> [0, 1]; outside set to ``background``."""
    inside = image[mask]
    if inside.size == 0:
        return np.full_like(image, background, dtype=np.float32)
    lo, hi = np.percentile(inside, window)
    if hi <= lo:
        hi = lo + 1e-6
    out = np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~mask] = background
    return out


def hand_crop(
    image: np.ndarray, mask: np.ndarray, params: CleanupParams = CleanupParams()
) -> tuple[np.ndarray, Box]:
    """Apply ``mask`` to ``image``: uniform background, crop to the hand (+margin), normalise.

    Returns the crop and its box in ``image`` coordinates (``image[y0:y1, x0:x1]``).
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    box = mask_box(mask, params.margin)
    y0, y1, x0, x1 = int(box.y0), int(box.y1), int(box.x0), int(box.x1)
    crop = normalise_in_mask(image[y0:y1, x0:x1], mask[y0:y1, x0:x1], params.window, params.background)
    return crop, box
