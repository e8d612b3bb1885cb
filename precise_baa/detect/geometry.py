"""Where each ROI sits relative to two others: the check a rescued low-score box must pass.

A ROI's box is described in the frame of two anchor ROIs, the nearest bones of its own ray
(metacarpals and phalanges only; see :data:`ANCHORS`): origin at the first anchor's centre,
x along the line to the second, y across it (towards the thumb side of a left hand seen palm
down, the standards' view), lengths in units of the anchors' distance, plus the log of its box
side over the anchors' mean side. ``geometry.json`` holds the mean and standard deviation of
these three numbers per ROI over phantom hands of every age, sex and pose
(``python -m precise_baa.synth.roi_geometry`` remakes it). Phantom hands vary less than real ones
(their standard deviations are 0.01-0.13), so the rescue allows the larger of ``rescue_sd``
standard deviations and a floor (``AnatomyParams.rescue_along`` / ``rescue_across`` /
``rescue_size``) around the mean, set from the boxes of real hands and from the boxes the
detector puts where a bone was erased (``benchmarks/rescue_false_fill.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..schemas import Box

GEOMETRY_FILE = Path(__file__).with_name("geometry.json")

#: the two ROIs each ROI is placed against (present in the hand for the check to apply). The
#: radius and ulna have none: against each other and a metacarpal their place varies with the
#: wrist's deviation (phantom standard deviation across 0.12-0.14, against 0.01-0.13 for the
#: rays' bones), too loose to tell a box on the bone from one beside it, so they are never
#: rescued (they are large and the detector rarely misses them)
ANCHORS: dict[str, tuple[str, str]] = {
    "mc1": ("pp1", "dp1"), "pp1": ("mc1", "dp1"), "dp1": ("mc1", "pp1"),
    "mc3": ("pp3", "mp3"), "pp3": ("mc3", "mp3"), "mp3": ("pp3", "dp3"), "dp3": ("pp3", "mp3"),
    "mc5": ("pp5", "mp5"), "pp5": ("mc5", "mp5"), "mp5": ("pp5", "dp5"), "dp5": ("pp5", "mp5"),
}


def box_side(b: Box) -> float:
    """The square root of a box's area (0 for an empty box): its size on one scale."""
    return math.sqrt(max(b.width, 0.0) * max(b.height, 0.0))


def local_coords(boxes: Mapping[str, Box | None], key: str, box: Box | None = None) -> np.ndarray | None:
    """``(x, y, log size)`` of ``box`` (default ``boxes[key]``) in the frame of ``key``'s
    anchors in ``boxes``; ``None`` for a ROI without anchors, when an anchor is missing or both
    sit on one point."""
    if key not in ANCHORS:
        return None
    a_key, b_key = ANCHORS[key]
    a, b, c = boxes.get(a_key), boxes.get(b_key), box if box is not None else boxes.get(key)
    if a is None or b is None or c is None:
        return None
    pa, pb, pc = (np.asarray(x.center, dtype=np.float64) for x in (a, b, c))
    d = pb - pa
    n = float(np.hypot(*d))
    if n < 1e-6:
        return None
    u = d / n
    perp = np.array([u[1], -u[0]])  # image y grows downwards: this is u turned towards the thumb
    v = pc - pa
    return np.array([float(v @ u) / n, float(v @ perp) / n,
                     math.log(max(box_side(c), 1e-9) / max(0.5 * (box_side(a) + box_side(b)), 1e-9))])


def fit(hands: Sequence[Mapping[str, Box]]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation of :func:`local_coords` per ROI over ``hands``."""
    out = {}
    for key in ANCHORS:
        rows = [c for h in hands if (c := local_coords(h, key)) is not None]
        arr = np.array(rows)
        out[key] = {"mean": [round(float(v), 5) for v in arr.mean(0)],
                    "sd": [round(float(v), 5) for v in arr.std(0)], "n": len(rows)}
    return out


@lru_cache(maxsize=1)
def shipped() -> dict[str, dict[str, list[float]]]:
    """The statistics in ``geometry.json``."""
    return json.loads(GEOMETRY_FILE.read_text())["rois"]


def fits(boxes: Mapping[str, Box | None], key: str, box: Box, floors: Sequence[float],
         n_sd: float, stats: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> bool:
    """Whether ``box`` sits where ROI ``key`` sits against its anchors in ``boxes``: each of its
    three numbers within ``max(n_sd x sd, floor)`` of the phantom hands' mean. False without
    anchors (or with one missing)."""
    c = local_coords(boxes, key, box)
    if c is None:
        return False
    s = (stats or shipped())[key]
    tol = np.maximum(n_sd * np.asarray(s["sd"]), np.asarray(floors, dtype=np.float64))
    return bool(np.all(np.abs(c - np.asarray(s["mean"])) <= tol))
