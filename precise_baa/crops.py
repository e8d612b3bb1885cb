"""The one ROI crop: box -> fixed-size square, aspect kept, used by training, inference and reports.

A crop is the ROI box grown by ``context`` (on each side's length), scaled so that its longer
side fills ``size`` pixels and centred; the rest of the square (the short side's padding, and
anything beyond the image edge) is ``fill``. The bone is never stretched, so a thin phalanx and
a wide radius keep their shapes. Downscaling is anti-aliased (Gaussian pre-filter), and the
warp is one affine map, so training-time jitter (shift, scale, rotation) costs no extra
resampling.

>>> crop = crop_roi(image, Box(x0=40, y0=60, x1=70, y1=120), 64)     # doctest: +SKIP
>>> crops = crop_rois(image, detections.boxes, 64)                   # [13, 64, 64]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from .rois import ROI_KEYS
from .schemas import Box


@dataclass(frozen=True)
class Jitter:
    """Random box perturbation so ground-truth crops look like detector crops.

    ``scale``: the box size is multiplied by ``exp(U(-log(1+scale), log(1+scale)))`` (each axis,
    with ``aspect`` extra independent spread); ``shift``: the centre moves by ``U(-shift, shift)``
    times the box width/height; ``rotation``: the crop is rotated by ``U(-rotation, rotation)``
    degrees about the box centre.
    """

    scale: float = 0.1
    shift: float = 0.08
    rotation: float = 0.0
    aspect: float = 0.05


def _sample(jitter: Jitter, rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """(dx, dy) in box units, (sx, sy) size factors, angle in degrees."""
    ls = math.log1p(max(0.0, jitter.scale))
    la = math.log1p(max(0.0, jitter.aspect))
    common = rng.uniform(-ls, ls) if ls else 0.0
    ax = rng.uniform(-la, la) if la else 0.0
    dx, dy = (rng.uniform(-jitter.shift, jitter.shift, 2) if jitter.shift else (0.0, 0.0))
    angle = rng.uniform(-jitter.rotation, jitter.rotation) if jitter.rotation else 0.0
    return float(dx), float(dy), math.exp(common + ax), math.exp(common - ax), float(angle)


def crop_roi(
    image: np.ndarray,
    box: Box,
    size: int,
    *,
    context: float = 1.2,
    jitter: Jitter | None = None,
    rng: np.random.Generator | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Cut ``box`` (grown by ``context``) out of ``image`` into a ``[size, size]`` float32 square.

    The region keeps its aspect ratio: its longer side spans the square, the shorter side is
    centred and padded with ``fill``; parts of the region outside the image are ``fill`` too, so
    boxes touching or crossing the image edge are fine. ``jitter`` (with ``rng``) perturbs the
    box for training.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"crop_roi expects a 2-D grayscale image, got shape {img.shape}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    cx, cy = box.center
    w, h = max(box.width, 1.0) * context, max(box.height, 1.0) * context
    angle = 0.0
    if jitter is not None:
        dx, dy, sx, sy, angle = _sample(jitter, rng if rng is not None else np.random.default_rng())
        cx, cy = cx + dx * box.width, cy + dy * box.height
        w, h = w * sx, h * sy
    side = max(w, h)
    scale = size / side  # output pixels per source pixel
    # Source patch holding the (possibly rotated) square window, so filtering stays local.
    half = 0.5 * side * (math.sqrt(2.0) if angle else 1.0) + 2.0
    sigma = 0.5 * (1.0 / scale - 1.0) if scale < 1.0 else 0.0
    pad = half + math.ceil(3 * sigma)
    H, W = img.shape
    px0, py0 = max(0, int(math.floor(cx - pad))), max(0, int(math.floor(cy - pad)))
    px1, py1 = min(W, int(math.ceil(cx + pad))), min(H, int(math.ceil(cy + pad)))
    out = np.full((size, size), fill, dtype=np.float32)
    if px1 <= px0 or py1 <= py0:
        return out  # the window lies entirely outside the image
    patch = img[py0:py1, px0:px1]
    if sigma > 0.3:
        patch = cv2.GaussianBlur(patch, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                 borderType=cv2.BORDER_REPLICATE)
    # Output pixel centre (u + 0.5) maps to source point c + R(angle) (u + 0.5 - size/2) / scale;
    # array index = continuous coordinate - 0.5.
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    off = 0.5 - 0.5 * size
    m = np.array([
        [cos, -sin, cx - 0.5 - px0 + cos * off - sin * off],
        [sin, cos, cy - 0.5 - py0 + sin * off + cos * off],
    ], dtype=np.float64)
    warped = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
    # Keep the region only: pad its shorter side.
    rw, rh = w * scale, h * scale
    x0, x1 = int(round(0.5 * (size - rw))), int(round(0.5 * (size + rw)))
    y0, y1 = int(round(0.5 * (size - rh))), int(round(0.5 * (size + rh)))
    x0, y0 = max(0, x0), max(0, y0)
    out[y0:y1, x0:x1] = warped[y0:y1, x0:x1]
    return out


def crop_rois(
    image: np.ndarray,
    boxes: Mapping[str, Box | None],
    size: int,
    *,
    context: float = 1.2,
    jitter: Jitter | None = None,
    rng: np.random.Generator | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """All 13 ROI crops of one image, ``[13, size, size]`` float32 in ``ROI_KEYS`` order.

    A missing ROI (key absent or ``None``) gives a crop of ``fill``; callers track which ROIs
    were present (see :func:`present_mask`).
    """
    out = np.full((len(ROI_KEYS), size, size), fill, dtype=np.float32)
    for i, key in enumerate(ROI_KEYS):
        box = boxes.get(key)
        if box is not None:
            out[i] = crop_roi(image, box, size, context=context, jitter=jitter, rng=rng, fill=fill)
    return out


def present_mask(boxes: Mapping[str, Box | None]) -> np.ndarray:
    """bool ``[13]``: which ROIs have a box, in ``ROI_KEYS`` order."""
    return np.array([boxes.get(k) is not None for k in ROI_KEYS], dtype=bool)
