"""From raw detections to exactly one checked box per ROI.

Three steps, all independent of the detector that produced the boxes:

1. :func:`rank_candidates` keeps, per ROI class, the best few distinct boxes above a threshold
   (:func:`select_best`: only the top one).
2. :func:`choose_boxes` starts from each class's top box; where the checks below find top boxes
   implausible, it tries lower-ranked candidates of those classes (one ROI, or two at once for a
   swapped pair) and keeps the repair that leaves the fewest implausible ROIs (anatomical order
   along the rays and across them, relative size, no overlap), the best-scoring among equals.
   Each replacement is reported with a ``roi_alternative`` flag.
3. :func:`rescue_missing` (optional): a ROI with no box above the threshold takes its best
   lower-scoring box (down to a floor) when that box fits the hand found so far, sits where its
   ROI sits relative to two bones of its ray (:mod:`precise_baa.detect.geometry`) and the hand
   shows the standards' view; flagged ``roi_low_score``.
4. :func:`check_anatomy` drops boxes whose place in the hand is still impossible and says why.

The checks work in hand coordinates, not image coordinates: the wrist -> fingertip axis is
estimated from the boxes themselves (median direction of bone pairs known to lie along the
long and little fingers and from the forearm to them), and the thumb side from where ray I
lies relative to rays III and V. A hand rotated by tens of degrees, or mirrored (a right hand),
passes; a swapped, misplaced or duplicated ROI does not.

Constraints (each with a tolerance of ``order_tolerance`` x the median box side):

- radius and ulna lie proximal to every hand bone;
- along each ray, MC -> PP -> MP -> DP run away from the wrist;
- digit order I, III, V from the thumb side, comparing bones of the same or neighbouring rows
  (MC, PP, MP, DP); the radius lies on the thumb side of the ulna;
- no two ROIs claim the same bone (IoU above ``max_overlap``);
- a box's side (square root of its area) is within ``size_factor`` of the median side.

A violated constraint links two ROIs; the ROIs flagged form the smallest set that explains
all violations (a minimum vertex cover). When several smallest sets tie, all their members are
flagged: with a swapped pair nothing tells which label is right, so neither is trusted. Each dropped
ROI gets a ``roi_implausible`` flag naming the violated constraints; a ROI without a box gets
``roi_missing``. Nothing is ever guessed: a box is either the detector's or absent.

>>> boxes, scores = select_best(bboxes, scores, labels, score_threshold=0.3)  # doctest: +SKIP
>>> checked, flags = check_anatomy(boxes, scores)                                # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..interfaces import Detections
from ..rois import ROI_BY_KEY, ROI_KEYS
from ..schemas import Box, Flag
from .geometry import box_side, fits

#: flag code of a ROI filled from a box below the score threshold (:func:`rescue_missing`)
LOW_SCORE = "roi_low_score"
FOREARM = ("radius", "ulna")
#: ROI keys of each ray (digit), wrist -> fingertip
RAYS: dict[int, tuple[str, ...]] = {
    ray: tuple(k for k in sorted(ROI_KEYS, key=lambda k: ROI_BY_KEY[k].level)
               if ROI_BY_KEY[k].ray == ray)
    for ray in (1, 3, 5)
}
#: rays whose bones lie along the hand's long axis (the thumb is abducted)
AXIAL_RAYS = (3, 5)


class AnatomyParams(BaseModel):
    """Tolerances of the anatomical plausibility checks (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    size_factor: float = Field(3.0, gt=1.0, description="box side within median side x/÷ this")
    order_tolerance: float = Field(
        0.25, ge=0.0, description="allowed reversal of an order, fraction of the median box side")
    max_overlap: float = Field(0.5, gt=0.0, le=1.0, description="IoU above which two ROIs collide")
    min_boxes: int = Field(4, ge=2, description="fewer boxes than this: no relative checks")
    rescue_along: float = Field(
        0.15, gt=0.0, description="least tolerance of a rescued box's centre along the line of "
                                  "its ROI's two anchor ROIs, in units of their distance "
                                  "(precise_baa.detect.geometry)")
    rescue_across: float = Field(0.2, gt=0.0, description="the same across that line")
    rescue_size: float = Field(
        0.3, gt=0.0, description="least tolerance of the log of a rescued box's side relative "
                                 "to its anchors' sides")
    rescue_sd: float = Field(4.0, gt=0.0, description="tolerances grow to this many of the "
                                                       "phantom hands' standard deviations")


DEFAULT_PARAMS = AnatomyParams()


# --------------------------------------------------------------------------------------------
def rank_candidates(
    bboxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    score_threshold: float = 0.0,
    max_per_class: int = 5,
    same_box_iou: float = 0.7,
) -> dict[str, list[tuple[Box, float]]]:
    """Per ROI class (label ``i`` = ``ROI_KEYS[i]``), up to ``max_per_class`` boxes scoring at
    least ``score_threshold``, best first; a box overlapping a better one of its class by IoU
    above ``same_box_iou`` is the same bone and left out.

    ``bboxes`` ``[N, 4]`` xyxy, ``scores`` ``[N]``, ``labels`` ``[N]``.
    """
    bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    out: dict[str, list[tuple[Box, float]]] = {k: [] for k in ROI_KEYS}
    for i, key in enumerate(ROI_KEYS):
        idx = np.flatnonzero((labels == i) & (scores >= score_threshold))
        for j in idx[np.argsort(-scores[idx], kind="stable")]:
            box = Box.from_xyxy(bboxes[j])
            if all(_iou(box, b) <= same_box_iou for b, _ in out[key]):
                out[key].append((box, float(scores[j])))
                if len(out[key]) >= max_per_class:
                    break
    return out


def select_best(
    bboxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    score_threshold: float = 0.0,
) -> tuple[dict[str, Box | None], dict[str, float | None]]:
    """The highest-scoring box of each ROI class (label ``i`` = ``ROI_KEYS[i]``).

    ``bboxes`` ``[N, 4]`` xyxy, ``scores`` ``[N]``, ``labels`` ``[N]``. A class without a box
    scoring at least ``score_threshold`` maps to ``None``.
    """
    cands = rank_candidates(bboxes, scores, labels, score_threshold=score_threshold, max_per_class=1)
    boxes: dict[str, Box | None] = {k: c[0][0] if c else None for k, c in cands.items()}
    best: dict[str, float | None] = {k: c[0][1] if c else None for k, c in cands.items()}
    return boxes, best


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HandFrame:
    """Unit vectors of the hand in image coordinates: ``axis`` wrist -> fingertips, ``thumb``
    perpendicular to it, towards ray I (``None`` when the boxes do not tell)."""

    axis: np.ndarray
    thumb: np.ndarray | None


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.hypot(*v))
    return v / n if n > 1e-9 else None


def hand_frame(boxes: Mapping[str, Box | None]) -> HandFrame | None:
    """Estimate the hand's axes from its boxes; ``None`` when no axial pair is present.

    The axis is the component-wise median of unit vectors between boxes whose order along the
    hand is certain (forearm -> rays III/V, and pairs within rays III and V), so a minority of
    wrong boxes does not tilt it.
    """
    c = {k: np.array(b.center) for k, b in boxes.items() if b is not None}
    pairs = []
    for ray in AXIAL_RAYS:
        chain = [k for k in RAYS[ray] if k in c]
        pairs += list(itertools.combinations(chain, 2))
        pairs += [(f, k) for f in FOREARM if f in c for k in chain]
    dirs = [u for a, b in pairs if (u := _unit(c[b] - c[a])) is not None]
    if not dirs:
        return None
    axis = _unit(np.median(np.array(dirs), axis=0))
    if axis is None:
        return None
    perp = np.array([-axis[1], axis[0]])
    lateral = {k: float(v @ perp) for k, v in c.items()}
    thumb_side = [lateral[k] for k in RAYS[1] if k in lateral]
    other = [lateral[k] for r in AXIAL_RAYS for k in RAYS[r] if k in lateral]
    if thumb_side and other:
        sign = np.sign(np.median(thumb_side) - np.median(other))
    elif "radius" in lateral and "ulna" in lateral:
        sign = np.sign(lateral["radius"] - lateral["ulna"])
    else:
        sign = 0.0
    return HandFrame(axis=axis, thumb=perp * sign if sign else None)


def thumb_on_the_right(boxes: Mapping[str, Box | None]) -> bool | None:
    """Whether the boxes show the standards' view, a left hand seen palm down (fingers up,
    thumb on the right, whatever the rotation); ``False`` for its mirror image (thumb on the
    left: a right hand, or a left hand imaged from the other side); ``None`` when the boxes
    do not tell."""
    frame = hand_frame(boxes)
    if frame is None or frame.thumb is None:
        return None
    # image coordinates (y down): fingers up and thumb right give axis x thumb > 0
    return bool(frame.axis[0] * frame.thumb[1] - frame.axis[1] * frame.thumb[0] > 0)


# --------------------------------------------------------------------------------------------
def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = iw * ih
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


def _order_pairs() -> list[tuple[str, str, str]]:
    """``(a, b, kind)``: ``a`` must be proximal (kind ``axial``) / thumb-side (``lateral``) of ``b``."""
    out: list[tuple[str, str, str]] = []
    hand = [k for k in ROI_KEYS if k not in FOREARM]
    out += [(f, k, "axial") for f in FOREARM for k in hand]
    for chain in RAYS.values():
        out += [(a, b, "axial") for a, b in itertools.combinations(chain, 2)]
    # digit order within each row and between neighbouring rows (a thumb's metacarpal base
    # may lie level with a spread middle finger's tip, so rows far apart are not compared)
    for r1, r2 in ((1, 3), (1, 5), (3, 5)):
        out += [(a, b, "lateral") for a in RAYS[r1] for b in RAYS[r2]
                if abs(ROI_BY_KEY[a].level - ROI_BY_KEY[b].level) <= 1]
    out.append(("radius", "ulna", "lateral"))
    return out


ORDER_PAIRS = _order_pairs()


def _describe(a: str, b: str, kind: str) -> str:
    na, nb = ROI_BY_KEY[a].name, ROI_BY_KEY[b].name
    if kind == "axial":
        return f"{na} is not proximal to {nb}"
    if kind == "lateral":
        return f"{na} is not on the thumb side of {nb}"
    return f"{na} overlaps {nb}"


def _minimum_covers(edges: Sequence[tuple[str, str]]) -> set[str]:
    """Union of all minimum vertex covers of the graph ``edges`` (small graphs only)."""
    nodes = sorted({n for e in edges for n in e})
    for size in range(1, len(nodes) + 1):
        covers = [set(s) for s in itertools.combinations(nodes, size)
                  if all(a in s or b in s for a, b in edges)]
        if covers:
            return set().union(*covers)
    return set(nodes)


def _reasons(boxes: Mapping[str, Box | None], params: AnatomyParams) -> dict[str, list[str]]:
    """Why each implausible box is implausible (boxes absent or None are not judged)."""
    reasons: dict[str, list[str]] = {}
    present = [k for k in ROI_KEYS if boxes.get(k) is not None]
    if params.enabled and len(present) >= params.min_boxes:
        median = float(np.median([box_side(boxes[k]) for k in present]))  # type: ignore[arg-type]
        for k in present:
            ratio = box_side(boxes[k]) / median if median > 0 else 1.0  # type: ignore[arg-type]
            if not 1.0 / params.size_factor <= ratio <= params.size_factor:
                reasons.setdefault(k, []).append(
                    f"box size {ratio:.2g} x the median ROI size (allowed 1/{params.size_factor:g}"
                    f" to {params.size_factor:g})")
        kept = {k: boxes[k] for k in present if k not in reasons}
        edges, why = _violations(kept, median * params.order_tolerance, params.max_overlap)
        for k in _minimum_covers(edges) if edges else ():
            reasons.setdefault(k, []).extend(w for (a, b), w in why if k in (a, b))
    return reasons


def check_anatomy(
    boxes: Mapping[str, Box | None],
    scores: Mapping[str, float | None] | None = None,
    params: AnatomyParams = DEFAULT_PARAMS,
) -> tuple[dict[str, Box | None], list[Flag]]:
    """Drop implausible boxes; return the checked boxes (all 13 keys) and the flags raised.

    Missing ROIs (``None`` or absent) are flagged ``roi_missing``; dropped ones
    ``roi_implausible`` with the reason, their box and score in the message.
    """
    out: dict[str, Box | None] = {k: boxes.get(k) for k in ROI_KEYS}
    scores = scores or {}
    reasons = _reasons(out, params)
    flags: list[Flag] = []
    for k in ROI_KEYS:
        name = ROI_BY_KEY[k].name
        if out[k] is None:
            flags.append(Flag(code="roi_missing", stage="detect", roi=k,
                              message=f"{name}: not found"))
        elif k in reasons:
            b, s = out[k], scores.get(k)
            where = ", ".join(f"{v:.0f}" for v in b.as_list())  # type: ignore[union-attr]
            score = f", score {s:.2f}" if s is not None else ""
            flags.append(Flag(code="roi_implausible", stage="detect", roi=k,
                              message=f"{name}: implausible box ({where}{score}): "
                                      + _summary(reasons[k])))
            out[k] = None
    return out, flags


def _best_move(moves, boxes, scores, reasons, params):
    """The move leaving the fewest implausible ROIs (fewer than ``reasons``), best-scoring
    among equals: ``(key, move, new reasons)`` or None."""
    best = None
    for move in moves:
        r = _reasons({**boxes, **{k: c[0] for k, c in move}}, params)
        gain = sum(c[1] - (scores[k] or 0.0) for k, c in move)
        key = (len(r), -gain)
        if len(r) < len(reasons) and (best is None or key < best[0]):
            best = (key, move, r)
    return best


def choose_boxes(
    candidates: Mapping[str, Sequence[tuple[Box, float]]],
    params: AnatomyParams = DEFAULT_PARAMS,
    max_rounds: int = 6,
) -> tuple[dict[str, Box | None], dict[str, float | None], list[Flag]]:
    """One box per ROI from ranked candidates (:func:`rank_candidates`): the top boxes, repaired
    where the anatomical checks find some implausible.

    A repair replaces the box of one implausible ROI by a lower-ranked candidate of its class,
    or, when no such single change helps, of two ROIs at once (an implausible ROI takes a box
    another ROI holds, that one moves to its own next candidate: a swapped pair); among the
    repairs that leave the fewest implausible ROIs (strictly fewer than before), the one with
    the highest total score wins. Returns ``(boxes, scores, flags)``, a ``roi_alternative`` flag per
    replaced top box; the result still goes through :func:`check_anatomy`.
    """
    cands = {k: list(candidates.get(k) or ()) for k in ROI_KEYS}
    top = {k: (c[0] if c else (None, None)) for k, c in cands.items()}
    boxes: dict[str, Box | None] = {k: top[k][0] for k in ROI_KEYS}
    scores: dict[str, float | None] = {k: top[k][1] for k in ROI_KEYS}
    why_top: dict[str, str] = {}  # why each replaced top box was implausible
    reasons = _reasons(boxes, params)
    for _ in range(max_rounds if params.enabled else 0):
        if not reasons:
            break
        # one ROI at a time first; two at once (k takes a box that j holds, j moves on) only
        # when no single replacement helps
        singles = [((k, c),) for k in sorted(reasons) for c in cands[k] if c[0] != boxes[k]]
        best = _best_move(singles, boxes, scores, reasons, params)
        if best is None:
            pairs = [((k, c), (j, cj)) for k in sorted(reasons) for c in cands[k] if c[0] != boxes[k]
                     for j, b in boxes.items() if j != k and b is not None
                     and _iou(c[0], b) > params.max_overlap
                     for cj in cands[j] if cj[0] != b and _iou(cj[0], c[0]) <= params.max_overlap]
            best = _best_move(pairs, boxes, scores, reasons, params)
        if best is None:
            break
        _, move, new_reasons = best
        for k, (box, score) in move:
            why_top.setdefault(k, _summary(reasons[k], most=1) if k in reasons
                               else "its box was needed by another ROI")
            boxes[k], scores[k] = box, score
        reasons = new_reasons
    flags = [Flag(code="roi_alternative", stage="detect", roi=k,
                  message=f"{ROI_BY_KEY[k].name}: the top box (score {top[k][1]:.2f}) was "
                          f"implausible ({why_top[k]}); a lower-ranked box that fits the hand "
                          f"(score {scores[k]:.2f}) is used")
             for k in ROI_KEYS if k in why_top and boxes[k] != top[k][0]]
    return boxes, scores, flags


def rescue_missing(
    boxes: Mapping[str, Box | None],
    scores: Mapping[str, float | None],
    low: Mapping[str, Sequence[tuple[Box, float]]],
    params: AnatomyParams = DEFAULT_PARAMS,
    *,
    max_missing: int = 2,
) -> tuple[dict[str, Box | None], dict[str, float | None], list[Flag]]:
    """Fill ROIs without a box from ``low``, their candidates below the score threshold.

    Only for a hand that is otherwise found (at most ``max_missing`` ROIs without a box, the
    rest anatomically plausible) and shows the standards' view (:func:`thumb_on_the_right`; a
    mirrored hand is left for the pipeline's mirrored retry). A ROI takes its best candidate
    that (a) raises no implausibility among the boxes (order along and across the rays, size,
    overlap) and (b) sits where its ROI sits relative to two anchor ROIs of its ray, within
    ``params.rescue_sd`` standard deviations of the phantom hands' mean or, where larger,
    ``rescue_along`` / ``rescue_across`` / ``rescue_size`` (:mod:`precise_baa.detect.geometry`;
    no rescue without both anchors, none for the radius and ulna). Each filled ROI gets a
    ``roi_low_score`` flag with the box's score; a ROI with no such candidate stays missing.
    """
    floors = (params.rescue_along, params.rescue_across, params.rescue_size)
    out: dict[str, Box | None] = {k: boxes.get(k) for k in ROI_KEYS}
    sc: dict[str, float | None] = {k: scores.get(k) for k in ROI_KEYS}
    missing = [k for k in ROI_KEYS if out[k] is None]
    if not params.enabled or not missing or len(missing) > max_missing:
        return out, sc, []
    if _reasons(out, params) or thumb_on_the_right(out) is not True:
        return out, sc, []
    flags: list[Flag] = []
    for k in missing:
        for box, s in low.get(k, ()):
            if fits(out, k, box, floors, params.rescue_sd) \
                    and not _reasons({**out, k: box}, params):
                out[k], sc[k] = box, s
                flags.append(Flag(code=LOW_SCORE, stage="detect", roi=k,
                                  message=f"{ROI_BY_KEY[k].name}: no box scored above the "
                                          f"threshold; a lower-scoring box (score {s:.2f}) that "
                                          f"fits the hand is used; review this ROI"))
                break
    return out, sc, flags


def _summary(reasons: Sequence[str], most: int = 3) -> str:
    unique = list(dict.fromkeys(reasons))
    more = f" (+{len(unique) - most} more)" if len(unique) > most else ""
    return "; ".join(unique[:most]) + more


def _violations(
    boxes: Mapping[str, Box], tol: float, max_overlap: float
) -> tuple[list[tuple[str, str]], list[tuple[tuple[str, str], str]]]:
    """Violated pairwise constraints among ``boxes``: graph edges and their descriptions."""
    edges: list[tuple[str, str]] = []
    why: list[tuple[tuple[str, str], str]] = []

    def add(a: str, b: str, kind: str) -> None:
        edges.append((a, b))
        why.append(((a, b), _describe(a, b, kind)))

    for a, b in itertools.combinations(list(boxes), 2):
        if _iou(boxes[a], boxes[b]) > max_overlap:
            add(a, b, "overlap")
    frame = hand_frame(boxes)
    if frame is None:
        return edges, why
    centre = {k: np.array(b.center) for k, b in boxes.items()}
    for a, b, kind in ORDER_PAIRS:
        if a not in centre or b not in centre:
            continue
        direction = frame.axis if kind == "axial" else frame.thumb
        if direction is None:
            continue
        # a before b: proximal along the axis / towards the thumb along the lateral axis
        gap = float((centre[b] - centre[a]) @ direction)
        if kind == "lateral":
            gap = -gap
        if gap < -tol:
            add(a, b, kind)
    return edges, why


def finalize(
    boxes: Mapping[str, Box | None],
    scores: Mapping[str, float | None],
    params: AnatomyParams = DEFAULT_PARAMS,
    notes: Sequence[Flag] = (),
) -> Detections:
    """:func:`check_anatomy` wrapped into the stage result (scores of dropped ROIs cleared);
    ``notes`` (e.g. :func:`choose_boxes`' flags) are kept for the ROIs whose box survives."""
    checked, flags = check_anatomy(boxes, scores, params)
    kept = [f for f in notes if f.roi is None or checked.get(f.roi) is not None]
    return Detections(
        boxes=checked,
        scores={k: (scores.get(k) if checked[k] is not None else None) for k in ROI_KEYS},
        flags=kept + flags,
    )


def detections_from_raw(bboxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
                        score_threshold: float, params: AnatomyParams = DEFAULT_PARAMS,
                        max_candidates: int = 5, rescue_threshold: float | None = None,
                        rescue_max: int = 2) -> Detections:
    """All of the above for one image's raw detector output: candidates, choice, rescue of
    missing ROIs from boxes scoring ``rescue_threshold`` to ``score_threshold`` (None: no
    rescue), checks."""
    cands = rank_candidates(bboxes, scores, labels, score_threshold=score_threshold,
                            max_per_class=max_candidates)
    boxes, best, notes = choose_boxes(cands, params)
    if rescue_threshold is not None and rescue_threshold < score_threshold \
            and any(b is None for b in boxes.values()):
        scores = np.asarray(scores).reshape(-1)
        below = scores < score_threshold  # the boxes the choice above did not see
        low = rank_candidates(np.asarray(bboxes).reshape(-1, 4)[below], scores[below],
                              np.asarray(labels).reshape(-1)[below],
                              score_threshold=rescue_threshold, max_per_class=max_candidates)
        boxes, best, rescued = rescue_missing(boxes, best, low, params, max_missing=rescue_max)
        notes = [*notes, *rescued]
    return finalize(boxes, best, params, notes)
