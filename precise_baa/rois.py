"""The 13 RUS regions of interest (ROIs) and what each standard says about them.

Keys are stable identifiers used everywhere: COCO category names, report columns, recipe keys
and the ``--stages`` argument of ``precise-baa stage-score``.

>>> ROI_KEYS[:3]
('radius', 'ulna', 'mc1')
>>> num_stages("radius", "rus-chn"), num_stages("radius", "tw3")
(15, 9)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Standard = Literal["rus-chn", "tw3"]
STANDARDS: tuple[str, ...] = ("rus-chn", "tw3")


@dataclass(frozen=True)
class Roi:
    key: str
    name: str
    #: ray (digit) 1..5 for hand bones; 0 for the forearm (radius, ulna)
    ray: int
    #: position along the ray from wrist to fingertip: 0 forearm, 1 metacarpal,
    #: 2 proximal, 3 middle, 4 distal phalanx
    level: int
    #: number of stages including stage 0 (RUS-CHN) / stage A (TW3)
    stages_rus_chn: int
    stages_tw3: int


ROIS: tuple[Roi, ...] = (
    Roi("radius", "Radius", 0, 0, 15, 9),
    Roi("ulna", "Ulna", 0, 0, 13, 8),
    Roi("mc1", "Metacarpal I", 1, 1, 12, 9),
    Roi("mc3", "Metacarpal III", 3, 1, 11, 9),
    Roi("mc5", "Metacarpal V", 5, 1, 11, 9),
    Roi("pp1", "Proximal phalanx I", 1, 2, 13, 9),
    Roi("pp3", "Proximal phalanx III", 3, 2, 13, 9),
    Roi("pp5", "Proximal phalanx V", 5, 2, 13, 9),
    Roi("mp3", "Middle phalanx III", 3, 3, 13, 9),
    Roi("mp5", "Middle phalanx V", 5, 3, 13, 9),
    Roi("dp1", "Distal phalanx I", 1, 4, 12, 9),
    Roi("dp3", "Distal phalanx III", 3, 4, 12, 9),
    Roi("dp5", "Distal phalanx V", 5, 4, 12, 9),
)

ROI_KEYS: tuple[str, ...] = tuple(r.key for r in ROIS)
ROI_BY_KEY: dict[str, Roi] = {r.key: r for r in ROIS}
NUM_ROIS = len(ROIS)

#: TW3 stage letters, index = stage number (A = 0)
TW3_LETTERS = "ABCDEFGHI"


def roi(key: str) -> Roi:
    """The ROI for ``key``; a clear error listing the valid keys otherwise."""
    try:
        return ROI_BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown ROI {key!r}; expected one of: {', '.join(ROI_KEYS)}") from None


def check_standard(standard: str) -> str:
    if standard not in STANDARDS:
        raise ValueError(f"unknown standard {standard!r}; expected one of: {', '.join(STANDARDS)}")
    return standard


def num_stages(key: str, standard: str = "rus-chn") -> int:
    """Number of stages of ROI ``key`` in ``standard``, stage 0 included."""
    r = roi(key)
    return r.stages_rus_chn if check_standard(standard) == "rus-chn" else r.stages_tw3


def stage_counts(standard: str = "rus-chn") -> dict[str, int]:
    """``{roi_key: number of stages}`` in ROI order."""
    return {k: num_stages(k, standard) for k in ROI_KEYS}


def stage_label(key: str, stage: int, standard: str = "rus-chn") -> str:
    """Human label of a stage: the number for RUS-CHN, the letter for TW3."""
    if standard == "tw3":
        return TW3_LETTERS[stage]
    return str(stage)
