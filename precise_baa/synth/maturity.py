"""Stage -> appearance of a growth region (epiphysis, physis, metaphyseal end).

A bone's maturity is ``p = stage / (n_stages - 1)`` in [0, 1]. Every feature is a monotone
function of ``p``, so neighbouring stages differ a little and distant ones a lot:

* ``p = 0``: no epiphysis (cartilage only, invisible);
* small ``p``: a small ossification centre that widens relative to the metaphysis
  (width ratio about 0.2 -> 1.0), thickens and brightens;
* ``p`` around 0.55-0.85: capping, the epiphysis' edges wrap the metaphysis;
* ``p`` above about 0.5: the physis (the dark gap) narrows, then bone bridges it and the
  line fades until the bone is fused at ``p = 1`` (a faint scar stays): the end flares from
  the shaft into the epiphysis as one bone;
* from ``p`` about 0.2 on, the joint side gains a subchondral plate that thickens and brightens.

The physis is not a straight cut: the metaphysis ends in a gently bent, wavy line (per-bone
nuisance), the epiphysis' physeal side follows it at the gap's distance, and a young distal
ulna ends cupped (concave) before its epiphysis appears. The dense zone of provisional
calcification lines the metaphysis end while the physis is open.

Shapes are drawn in a local frame of the growth region, in units of the metaphysis width
``w``: ``u`` across the bone (``+u`` is the radial / thumb side), ``v`` along the bone from the
physis outwards (the metaphysis lies at ``v < 0``, the joint beyond ``v = zone_depth``). The
region grows nested: a higher stage covers what a lower one did, so the growth region's
attenuation only increases with stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: widest physis gap (units of w), before it starts to narrow
GAP_MAX = 0.12
#: physis width while it is open (units of w)
GAP_OPEN = 0.085


@dataclass(frozen=True)
class EpiphysisShape:
    """How one kind of epiphysis looks when fully grown (units of the metaphysis width)."""

    height: float  # thickness along the bone
    width: float  # width at the end of widening (capping makes it a little wider)
    top_k: float  # superellipse exponent of the joint-side outline (2 = round, larger = flat)
    bottom_k: float  # exponent of the physis-side outline
    waist: float  # where the widest level sits between bottom (0) and top (1)
    cap_depth: float  # how far the capping lips reach down beside the metaphysis
    slope: float = 0.0  # thickness grows towards +u (radius: the radial side is thicker)
    styloid: float = 0.0  # a styloid process at one edge: >0 at +u, <0 at -u (height)

    @property
    def zone_depth(self) -> float:
        """Length of the growth region beyond the physis (gap + epiphysis), units of w."""
        return GAP_MAX + self.height * (1.0 + 0.5 * abs(self.slope))


SHAPES: dict[str, EpiphysisShape] = {
    # phalanx and first-metacarpal bases: a flat disc that ends up wider than the shaft
    "disc": EpiphysisShape(height=0.30, width=1.08, top_k=2.3, bottom_k=6.0, waist=0.3, cap_depth=0.16),
    # heads of metacarpals II-V: a round cap
    "head": EpiphysisShape(height=0.55, width=1.0, top_k=2.0, bottom_k=3.5, waist=0.35, cap_depth=0.10),
    # distal radius: a wedge, thick on the radial side, with the radial styloid
    "radius": EpiphysisShape(height=0.26, width=1.05, top_k=2.8, bottom_k=6.0, waist=0.3,
                             cap_depth=0.12, slope=0.6, styloid=0.16),
    # distal ulna: a rounded head with the ulnar styloid on the little-finger side
    "ulna": EpiphysisShape(height=0.42, width=1.0, top_k=2.2, bottom_k=4.0, waist=0.35,
                           cap_depth=0.08, styloid=-0.35),
}


@dataclass(frozen=True)
class GrowthRegion:
    """What to draw for one growth region at one maturity, in local units of w."""

    #: outline of the ossified epiphysis (N, 2) as (u, v); None before ossification
    epiphysis: np.ndarray | None
    #: relative density of the epiphysis (multiplies the bone density)
    density: float
    #: the physis bridged by bone (u, v; overlapping both sides, flaring from the shaft to the
    #: epiphysis' widest level) and its share of bone density
    bridge: np.ndarray | None
    bridge_density: float
    #: extra density of the dense line at the metaphysis end (fades as the physis closes)
    band_density: float = 0.1
    #: the metaphysis end (u, v) from the -u to the +u edge: where the shaft stops
    end: np.ndarray | None = None
    #: how far the physis has fused (0 open .. 1 fused): rims across it fade to a scar
    fuse: float = 0.0
    #: the subchondral plate under the joint surface (u, v; a band inside the epiphysis' joint
    #: side) and its extra density: it thickens and brightens as the epiphysis matures, so a
    #: bright line at a bone's end is no sign of youth (the metaphysis' dense line is one)
    plate: np.ndarray | None = None
    plate_density: float = 0.0


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def gap(p: float) -> float:
    """Physis width (units of w): constant, then narrowing to 0 at fusion (a thin dark line
    once the epiphysis is full grown; the region reserves ``GAP_MAX`` for it)."""
    if p <= 0.5:
        return GAP_OPEN
    if p <= 0.8:
        return GAP_OPEN - (GAP_OPEN - 0.05) * (p - 0.5) / 0.3
    return 0.05 * (1.0 - p) / 0.2


#: depth of the young distal ulna's cupped metaphysis end (units of w)
ULNA_CUP = 0.07


def physis_curve(kind: str, p: float, u: np.ndarray,
                 shape: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)) -> np.ndarray:
    """Where the metaphysis ends (v, units of w) at ``u`` (units of w, -0.5 .. 0.5).

    ``shape`` = (bend, wave amplitude, waves across the bone, phase), a per-bone nuisance; the
    young ulna adds a cup (the middle lower than the edges) that flattens as it matures.
    """
    s = np.clip(2.0 * np.asarray(u, dtype=float), -1.0, 1.0)
    bend, amp, cycles, phase = shape
    v = bend * (s * s - 1.0 / 3.0) + amp * np.sin(np.pi * cycles * s + phase) * (1.0 - s ** 4)
    if kind == "ulna":
        v = v - ULNA_CUP * (1.0 - _ramp(p, 0.0, 0.35)) * (1.0 - s * s)
    return v


def growth_region(
    kind: str, p: float, *, width_scale: float = 1.0, height_scale: float = 1.0, n: int = 40,
    physis: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0),
) -> GrowthRegion:
    """Outline and density of the growth region of a ``kind`` bone at maturity ``p``.

    ``width_scale`` / ``height_scale`` / ``physis`` (see :func:`physis_curve`) are per-bone
    nuisances (not tied to stage).
    """
    ue = 0.5 * np.sin(np.linspace(-0.5 * np.pi, 0.5 * np.pi, 15))
    end = np.stack([ue, physis_curve(kind, max(float(p), 0.0), ue, physis)], 1)
    if p <= 0.0:
        return GrowthRegion(None, 0.0, None, 0.0, 0.12, end)
    p = min(float(p), 1.0)
    shape = SHAPES[kind]
    zone_top = GAP_MAX + shape.height * height_scale
    e_w = min(1.0, p / 0.6)
    half_w = 0.5 * width_scale * (0.2 + (shape.width - 0.2) * e_w ** 0.85 + 0.06 * _ramp(p, 0.6, 1.0))
    e_t = min(1.0, p / 0.65)
    v_top = zone_top - 0.3 * shape.height * height_scale * (1.0 - e_t)
    thick = zone_top * (0.3 + 0.7 * e_t)
    v_bot = max(gap(p), v_top - thick)
    v_mid = v_bot + shape.waist * (v_top - v_bot)

    theta = np.linspace(-0.5 * np.pi, 0.5 * np.pi, n)
    r = np.sin(theta)  # u / half_w in [-1, 1], denser near the edges
    a = np.abs(r)
    top = v_mid + (v_top - v_mid) * (1.0 - a ** shape.top_k) ** (1.0 / shape.top_k)
    bottom = v_mid - (v_mid - v_bot) * (1.0 - a ** shape.bottom_k) ** (1.0 / shape.bottom_k)
    if shape.slope:
        top = v_mid + (top - v_mid) * (1.0 + shape.slope * r)
    if shape.styloid:
        side = r * np.sign(shape.styloid)
        top = top + abs(shape.styloid) * _ramp(p, 0.45, 1.0) * np.clip((side - 0.55) / 0.45, 0, 1) ** 1.5
    cap = _ramp(p, 0.55, 0.85)
    if cap > 0:
        bottom = bottom - cap * shape.cap_depth * np.clip((a - 0.7) / 0.3, 0, 1) ** 1.5
    u = half_w * r
    curve = physis_curve(kind, p, u, physis)
    top, bottom = top + curve, bottom + curve
    outline = np.concatenate([np.stack([u, bottom], 1), np.stack([u[::-1], top[::-1]], 1)])
    density = 0.6 + 0.4 * min(1.0, p / 0.5)

    fuse = _ramp(p, 0.7, 1.0) ** 1.3
    bridge = None
    if fuse > 0:
        bridge = _bridge(outline[:n], end)
    grown = _ramp(p, 0.2, 0.9)
    plate = None
    if grown > 0:
        mid = np.abs(r) <= 0.92
        joint = np.stack([u[mid], top[mid]], 1)
        depth = min(0.02 + 0.03 * grown, 0.35 * float(np.min(top[mid] - bottom[mid])))
        plate = np.concatenate([joint, (joint - (0.0, depth))[::-1]])
    return GrowthRegion(outline, density, bridge, fuse, 0.12 * (1.0 - 0.9 * fuse), end, fuse,
                        plate, 0.25 * grown)


#: how far below the physis (units of w) a fused bone's flare starts, and its half width there
FLARE_DEPTH, FLARE_HALF = 0.18, 0.45


def _bridge(bottom: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Where bone bridges a fusing physis: the convex hull of the epiphysis' physeal side
    (capping lips included, up to its widest level; a little into it, to overlap) and the
    metaphysis end, down to where the shaft starts to flare. Filled, it closes the gap and the
    notches under the lips, so a fused bone flares smoothly from the shaft into its end instead
    of wearing a separate cap."""
    from scipy.spatial import ConvexHull

    low = float(end[:, 1].min()) - FLARE_DEPTH
    pts = np.concatenate([bottom + (0.0, 0.05), np.stack([end[:, 0], end[:, 1] - 0.03], 1),
                          [[-FLARE_HALF, low], [FLARE_HALF, low]]])
    return pts[ConvexHull(pts).vertices]


def maturity(stage: int, n_stages: int) -> float:
    """``p = stage / (n_stages - 1)``."""
    return stage / float(n_stages - 1)
