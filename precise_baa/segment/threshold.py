"""The ``threshold`` segmenter: Otsu on a blurred image + the shared cleanup (no weights).

A baseline and a fallback: the hand is brighter than the dark background of a radiograph, so
Otsu's threshold separates the two; the cleanup keeps the largest component, which drops
markers and text lying apart from the hand. White collimator strips along the image edges are
cut away first: rows (columns) at an edge that are almost entirely above the threshold are not
anatomy (a forearm crossing the edge fills a fraction of it). Strips that do not span an edge,
or a hand filling the whole width, fool it; the U-Net learns such cases.

>>> seg = load_stage("segment", recipe="stages/segment/threshold.yaml")  # doctest: +SKIP
>>> result = seg.segment([image])[0]                                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..schemas import ModelInfo
from .base import BaseSegmenter, fit_size, resize
from .recipes import ThresholdRecipe


class ThresholdSegmenter(BaseSegmenter):
    def __init__(self, recipe: ThresholdRecipe | None = None):
        self.recipe = recipe or ThresholdRecipe()
        self.cleanup = self.recipe.cleanup.params()
        self.info = ModelInfo(stage="segment", implementation="threshold",
                              name=self.recipe.name or "threshold")

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """1.0 where the blurred image is above Otsu's threshold (soft at the edges after
        resizing back to the original size)."""
        r = self.recipe
        out = []
        for image in images:
            hw = fit_size(image.shape, min(r.working_size, max(image.shape)))
            small = resize(np.asarray(image, np.float32), hw)
            if r.blur > 0:
                small = cv2.GaussianBlur(small, (0, 0), r.blur * max(hw))
            u8 = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
            t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
            binary = u8 > min(254.0, t * r.threshold_scale)
            if r.strip_depth > 0:
                binary = remove_edge_strips(binary, r.strip_depth, r.strip_fraction)
            binary = binary.astype(np.float32)
            out.append(cv2.resize(binary, (image.shape[1], image.shape[0]),
                                  interpolation=cv2.INTER_LINEAR))
        return out


def remove_edge_strips(binary: np.ndarray, depth: float, fraction: float) -> np.ndarray:
    """``binary`` without bands along its edges that are white across the image.

    From each edge inward (at most ``depth`` x the side), the rows (columns) whose share of
    set pixels is at least ``fraction`` form a strip; the strip and a sliver as deep as a
    third of it beyond (a slightly tilted strip's tapering edge) are cleared.
    """
    out = binary.copy()
    h, w = out.shape
    for axis, n in ((1, h), (0, w)):  # axis 1: fraction per row (top / bottom edges)
        share = out.mean(axis=axis)
        limit = max(1, int(round(depth * n)))
        for edge in (0, 1):
            idx = np.arange(limit) if edge == 0 else np.arange(n - 1, n - 1 - limit, -1)
            full = share[idx] >= fraction
            k = int(np.argmin(full)) if not full.all() else limit  # strip rows from the edge
            if k == 0:
                continue
            k = min(n, k + max(2, k // 3))
            cut = idx[0] + np.arange(k) if edge == 0 else idx[0] - np.arange(k)
            if axis == 1:
                out[cut, :] = False
            else:
                out[:, cut] = False
    return out
