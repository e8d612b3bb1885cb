"""The canonical left hand: bones, carpals, sesamoid and soft tissue.

Canonical frame: x to the right, y up (towards the fingertips), origin at the wrist. The hand
lies palm down as in a PA radiograph of the left hand, so the thumb (ray 1) is on the +x side
and the forearm points down (-y). Lengths are in *units*, millimetres of an adult man's hand;
``Hand.mm`` says how many real millimetres one unit is for this child (hand size grows with
age and differs by sex). Proportions change with skeletal age: a young child's bones are
shorter and stubbier, its joint spaces (cartilage) wider, its wrist longer (unossified
carpals) and its soft tissue relatively thicker. Pose within the hand (finger spread, thumb
abduction, flexion that foreshortens the phalanges) is drawn here; rotation, scale and
position of the whole hand are applied later by the renderer.

Every tubular bone carries exactly one growth region (epiphysis): the bases of the phalanges
and of the first metacarpal, the heads of metacarpals II-V, the distal radius and ulna. The 13
graded ROIs are among them; the other bones take their maturity from a graded neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .maturity import GAP_MAX, SHAPES

#: ROI box side / metaphysis width, and how far the box centre sits beyond the physis
#: (towards the epiphysis), both in units of the metaphysis width
BOX_SIDE = {"disc": 1.8, "head": 1.8, "radius": 1.45, "ulna": 1.9}
BOX_SHIFT = {"disc": 0.12, "head": 0.22, "radius": 0.15, "ulna": 0.22}
#: how far the forearm is drawn (units): far enough to leave any image at the bottom
FOREARM_LENGTH = 600.0
#: hand size (mm per unit) by age, boys and girls (hand length / an adult man's)
_SIZE_AGES = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0)
_SIZE = {
    "M": (0.42, 0.50, 0.55, 0.62, 0.68, 0.74, 0.80, 0.86, 0.94, 0.99, 1.00),
    "F": (0.41, 0.49, 0.54, 0.61, 0.67, 0.73, 0.80, 0.87, 0.91, 0.92, 0.92),
}


def hand_size(age: float, sex: str) -> float:
    """Median hand length at ``age`` (years) relative to an adult man's (mm per unit)."""
    return float(np.interp(age, _SIZE_AGES, _SIZE["M" if sex == "M" else "F"]))


def youth(age: float) -> float:
    """1 for an infant's proportions, 0 from early adolescence on."""
    return float(np.clip((10.0 - age) / 9.0, 0.0, 1.0)) ** 1.3


def _unit(v: np.ndarray) -> np.ndarray:
    return v / float(np.hypot(*v))


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector at ``angle_deg`` from +y towards +x (towards the thumb)."""
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


@dataclass(frozen=True)
class TubularBone:
    """A long bone between two articular ends, with its growth region at one of them."""

    name: str
    roi: str | None  # the ROI key when this bone is graded
    sibling: str  # the ROI whose stage sets this bone's maturity
    kind: str  # epiphysis kind, a key of maturity.SHAPES
    prox: np.ndarray  # proximal articular end (units)
    dist: np.ndarray  # distal articular end (units)
    width: float  # metaphysis width at the growth end (units)
    shaft: float  # narrowest shaft width / width
    far: float  # width at the other end / width
    far_cap: float  # depth of the rounded other end / width
    growth_at: str  # "prox" or "dist"
    epi_width: float = 1.0  # nuisances of the epiphysis (not tied to stage)
    epi_height: float = 1.0
    density: float = 1.0
    p_offset: float = 0.0  # maturity offset of a non-graded bone from its sibling
    axial: float = 1.0  # foreshortening along the bone (flexed finger: < 1)
    cortex: float = 0.4  # cortical wall thickness / shaft half width at mid-shaft
    #: the physis line's bend, wave amplitude, waves across and phase (maturity.physis_curve)
    physis_shape: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)
    #: lengths (in widths) of the metaphysis' flare and of the far end's widening
    flare_len: float = 1.4
    far_len: float = 1.2

    @property
    def axis_out(self) -> np.ndarray:
        """Unit vector from the shaft towards the growth end."""
        a = self.prox - self.dist if self.growth_at == "prox" else self.dist - self.prox
        return _unit(a)

    @property
    def normal(self) -> np.ndarray:
        """Unit vector across the bone pointing to the radial (+x, thumb) side."""
        e = self.axis_out
        n = np.array([e[1], -e[0]])
        return n if n[0] >= 0 else -n

    @property
    def zone_depth(self) -> float:
        return (GAP_MAX + SHAPES[self.kind].height * self.epi_height) * self.width * self.axial

    @property
    def physis(self) -> np.ndarray:
        end = self.prox if self.growth_at == "prox" else self.dist
        return end - self.axis_out * self.zone_depth

    def local_to_canonical(self, uv: np.ndarray) -> np.ndarray:
        """Growth-region frame (u, v in units of width) -> canonical units."""
        uv = np.asarray(uv, dtype=float) * self.width
        return self.physis + uv[:, :1] * self.normal + uv[:, 1:2] * self.axial * self.axis_out

    def _profile(self, t: np.ndarray, length: float) -> np.ndarray:
        """Half width (units) along the shaft, t = 0 at the far end, 1 at the physis."""
        far_zone = min(0.35, self.far_len * self.width / length)
        flare = min(0.45, self.flare_len * self.width / length)
        # concave (waisted) shaft flaring into a trumpet-shaped metaphysis
        w = (self.shaft + (self.far - self.shaft) * np.clip(1 - t / far_zone, 0, 1) ** 2.2
             + (1 - self.shaft) * np.clip((t - 1 + flare) / flare, 0, 1) ** 2.4)
        return 0.5 * self.width * w

    def shaft_outline(self, n: int = 24, end: np.ndarray | None = None) -> np.ndarray:
        """Outline (units) of diaphysis + metaphysis: far end cap to the physis.

        ``end``: the metaphysis end as (u, v) points of the growth-region frame, from the
        -u to the +u edge (None: a straight cut at the physis)."""
        far_end = self.dist if self.growth_at == "prox" else self.prox
        e = self.axis_out
        nrm = np.array([-e[1], e[0]])
        cap = self.far_cap * self.width * self.axial
        a = far_end + e * cap  # where the far cap meets the shaft
        b = self.physis
        t = np.linspace(0.0, 1.0, n)
        centre = a + (b - a) * t[:, None]
        hw = self._profile(t, max(float(np.hypot(*(b - a))), 1e-3))
        left = centre + nrm * hw[:, None]
        right = centre - nrm * hw[:, None]
        # far cap: half superellipse from left[0] around far_end to right[0]
        th = np.linspace(0.5 * np.pi, -0.5 * np.pi, 11)[1:-1]  # from the left side to the right
        s, c = np.sin(th), np.cos(th)
        cap_pts = a + nrm * (hw[0] * s)[:, None] - e * (cap * np.abs(c) ** 0.8)[:, None]
        if end is None:  # a straight physis end (the growth region continues it)
            return np.concatenate([right, left[::-1], cap_pts])
        pts = self.local_to_canonical(end)
        if float(np.dot(-nrm, self.normal)) < 0:  # right side is -u: start the end there
            pts = pts[::-1]
        pts = pts[1:-1] if len(pts) > 2 else pts[:0]
        return np.concatenate([right, pts, left[::-1], cap_pts])

    def shaft_frame(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(a, b, cap)``: where the far cap meets the shaft, the physis end, cap depth (units)."""
        far_end = self.dist if self.growth_at == "prox" else self.prox
        cap = self.far_cap * self.width * self.axial
        return far_end + self.axis_out * cap, self.physis, cap

    def half_width(self, t: np.ndarray) -> np.ndarray:
        """Shaft half width (units) at ``t`` (0 far end of the shaft, 1 physis; caps beyond)."""
        a, b, cap = self.shaft_frame()
        length = max(float(np.hypot(*(b - a))), 1e-3)
        hw = self._profile(np.clip(t, 0.0, 1.0), length)
        s = np.clip(-t * length / max(cap, 1e-3), 0.0, 1.0)  # into the far cap
        return hw * np.sqrt(np.clip(1.0 - s ** 2.5, 0.0, 1.0))

    def metaphysis_band(self, end: np.ndarray | None = None, depth: float = 0.06) -> np.ndarray:
        """The dense zone of provisional calcification just below the physis (units), along
        the metaphysis end ``end`` ((u, v) points, -u to +u; None: a straight end)."""
        if end is None:
            end = np.array([[-0.49, 0.0], [0.49, 0.0]])
        inner = end[1:-1] if len(end) > 2 else end
        lower = np.stack([0.97 * inner[:, 0], inner[:, 1] - depth], 1)
        return self.local_to_canonical(np.concatenate([end, lower[::-1]]))

    def box(self) -> tuple[np.ndarray, float]:
        """Centre (units) and side (units) of the ROI box around the growth region."""
        centre = self.physis + self.axis_out * BOX_SHIFT[self.kind] * self.width * self.axial
        return centre, BOX_SIDE[self.kind] * self.width


@dataclass(frozen=True)
class Carpal:
    centre: np.ndarray
    axes: tuple[float, float]  # semi-axes when mature (units)
    angle: float  # degrees
    appears_at: float  # skeletal age (years) at which it ossifies
    squareness: float  # superellipse exponent when mature (2 = ellipse)
    #: polar angles (rad) of the mature bone's corners: an angular, packed polygon
    corners: tuple[float, ...] = ()

    def outline(self, bone_age: float, n: int = 28) -> np.ndarray | None:
        """Outline at ``bone_age``: a small round nucleus that grows, squares off and becomes
        an angular polygon (rounded corners) as the carpus packs."""
        grown = (bone_age - self.appears_at) / 7.0
        if grown <= 0:
            return None
        g = min(1.0, grown) ** 0.7
        k = 0.22 + 0.78 * g
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, s = np.cos(th), np.sin(th)
        e = 2.0 / (2.0 + (self.squareness - 2.0) * g)
        ax = (k * self.axes[0], k * self.axes[1])
        r = 1.0 - 0.5 * (1.0 - g)  # young nuclei are rounder
        ax = (ax[0] * r + (1 - r) * min(ax), ax[1] * r + (1 - r) * min(ax))
        x = ax[0] * np.sign(c) * np.abs(c) ** e
        y = ax[1] * np.sign(s) * np.abs(s) ** e
        if len(self.corners) >= 3:
            # the polygon through the corners (on the superellipse), blended in with growth
            ph = np.sort(np.asarray(self.corners) % (2 * np.pi))
            cc, ss = np.cos(ph), np.sin(ph)
            vx = ax[0] * np.sign(cc) * np.abs(cc) ** e
            vy = ax[1] * np.sign(ss) * np.abs(ss) ** e
            p0 = np.stack([vx, vy], 1)
            p1 = np.roll(p0, -1, axis=0)
            edge = p1 - p0
            d = np.stack([c, s], 1)[:, None, :]  # [n, 1, 2] ray directions
            den = d[..., 0] * edge[None, :, 1] - d[..., 1] * edge[None, :, 0]
            num = p0[None, :, 0] * edge[None, :, 1] - p0[None, :, 1] * edge[None, :, 0]
            with np.errstate(divide="ignore", invalid="ignore"):
                rr = num / den  # distance along each ray to each edge's line
                ts = ((d[..., 0] * rr - p0[None, :, 0]) * edge[None, :, 0]
                      + (d[..., 1] * rr - p0[None, :, 1]) * edge[None, :, 1]) / (edge ** 2).sum(1)
            ok = (rr > 0) & (ts >= -1e-6) & (ts <= 1 + 1e-6)
            rad = np.where(ok, rr, np.inf).min(1)
            rad = np.where(np.isfinite(rad), rad, np.hypot(x, y))
            # rounded corners: average the polygon radius with the superellipse's a little
            poly = 0.8 * rad + 0.2 * np.hypot(x, y)
            scale = 1.0 + (poly / np.maximum(np.hypot(x, y), 1e-9) - 1.0) * g ** 1.5
            x, y = x * scale, y * scale
        a = np.deg2rad(self.angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return self.centre + np.stack([x, y], 1) @ rot.T


@dataclass(frozen=True)
class Hand:
    bones: tuple[TubularBone, ...]
    carpals: tuple[Carpal, ...]
    #: soft-tissue pieces (units) whose union is the hand + wrist + forearm silhouette
    tissue: tuple[np.ndarray, ...]
    #: the forearm only down to where the image should cut it (for fitting the pose)
    fit_points: np.ndarray
    #: real millimetres per unit (hand size for age and sex)
    mm: float = 1.0
    #: skeletal age (years) the hand's size, proportions and carpals follow
    bone_age: float = 10.0
    #: the thumb's MCP sesamoid (centre, radius; units), None before it ossifies
    sesamoid: tuple[np.ndarray, float] | None = None
    #: extra soft tissue over the thenar and hypothenar eminences: (centre, semi-axes, angle)
    bulges: tuple[tuple[np.ndarray, tuple[float, float], float, float], ...] = ()
    #: how much thicker than an adult's the soft tissue is (young children)
    tissue_scale: float = 1.0

    def bone(self, name: str) -> TubularBone:
        return next(b for b in self.bones if b.name == name)


# Rays: metacarpal base (units), metacarpal angle (deg), bone lengths (units, articular end to
# end), growth-end widths (units). Ray 1 (thumb) has no middle phalanx.
_RAYS = {
    1: ((21.5, 28.0), 36.0, (43.0, 31.0, 23.0), (12.0, 12.0, 10.0)),
    2: ((11.0, 33.0), 6.0, (65.0, 39.0, 23.0, 17.0), (11.0, 11.5, 10.0, 8.5)),
    3: ((1.5, 34.0), 0.0, (62.0, 44.0, 27.0, 19.0), (11.5, 12.0, 10.5, 9.0)),
    4: ((-8.0, 32.0), -6.0, (56.0, 41.0, 26.0, 18.0), (10.5, 11.0, 10.0, 8.5)),
    5: ((-16.5, 29.5), -13.0, (51.0, 33.0, 19.0, 16.0), (10.0, 10.0, 8.5, 7.5)),
}
#: fan of the metacarpals and abduction at the MCP joint per unit of finger spread (deg)
_FAN = {1: 4.0, 2: 2.5, 3: 0.0, 4: -2.5, 5: -5.0}
_ABDUCT = {1: 0.0, 2: 13.0, 3: 0.0, 4: -11.0, 5: -22.0}
_LEVEL_NAMES = {1: "mc", 2: "pp", 3: "mp", 4: "dp"}
#: which graded ROI sets the maturity of each bone
SIBLING = {
    "mc1": "mc1", "mc2": "mc3", "mc3": "mc3", "mc4": "mc5", "mc5": "mc5",
    "pp1": "pp1", "pp2": "pp3", "pp3": "pp3", "pp4": "pp3", "pp5": "pp5",
    "mp2": "mp3", "mp3": "mp3", "mp4": "mp3", "mp5": "mp5",
    "dp1": "dp1", "dp2": "dp3", "dp3": "dp3", "dp4": "dp3", "dp5": "dp5",
    "radius": "radius", "ulna": "ulna",
}
_GRADED = {"radius", "ulna", "mc1", "mc3", "mc5", "pp1", "pp3", "pp5", "mp3", "mp5", "dp1", "dp3", "dp5"}

# (centre, semi-axes, angle, appears at skeletal age (years), squareness)
_CARPALS = (
    ((2.0, 22.0), (6.0, 9.5), 0.0, 0.1, 2.8),  # capitate
    ((-8.5, 21.5), (5.5, 7.5), 12.0, 0.3, 2.6),  # hamate
    ((-12.5, 11.0), (5.5, 4.5), 25.0, 2.3, 2.4),  # triquetrum
    ((-1.0, 10.0), (6.0, 5.0), 0.0, 3.5, 2.4),  # lunate
    ((19.5, 22.5), (5.5, 5.0), 20.0, 4.8, 2.6),  # trapezium
    ((11.5, 24.5), (4.5, 4.5), 0.0, 5.0, 2.8),  # trapezoid
    ((12.0, 11.5), (4.5, 8.0), -40.0, 5.3, 2.2),  # scaphoid
    ((-15.0, 13.5), (3.5, 3.5), 0.0, 10.0, 2.0),  # pisiform
)
#: skeletal age (years) at which the thumb's MCP sesamoid ossifies
SESAMOID_AGE = {"M": 12.8, "F": 11.0}


def _circle(c: np.ndarray, r: float, n: int = 16) -> np.ndarray:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.asarray(c) + r * np.stack([np.cos(th), np.sin(th)], 1)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(float)


def _capsule(p0: np.ndarray, r0: float, p1: np.ndarray, r1: float) -> np.ndarray:
    return _hull(np.concatenate([_circle(p0, r0), _circle(p1, r1)]))


def build_hand(rng: np.random.Generator, bone_age: float = 10.0, sex: str = "M") -> Hand:
    """One random canonical hand for ``bone_age`` (years) and ``sex``: size, proportions,
    finger spread, thumb abduction, flexion and per-bone nuisances."""
    y = youth(bone_age)
    mm = hand_size(bone_age, sex) * rng.uniform(0.93, 1.07)
    length_f = rng.uniform(0.94, 1.06)  # slender vs stubby fingers
    width_f = rng.uniform(0.92, 1.08)
    spread = float(np.clip(rng.normal(0.9, 0.35), -0.2, 1.5))
    thumb_abd = rng.uniform(-6.0, 28.0)
    tissue_f = rng.uniform(0.85, 1.2) * (1.0 + 0.55 * y)  # soft tissue around bones
    gap_f = 1.0 + 1.4 * y  # joint spaces: thick cartilage in young children
    stubby = 1.0 - 0.1 * y  # young phalanges are short for their width
    wrist_drop = 11.0 * y  # unossified carpus: a long wrist
    cortex = rng.uniform(0.32, 0.48) * (1.0 - 0.3 * y)
    bones: list[TubularBone] = []
    tissue: list[np.ndarray] = []
    palm_pts: list[np.ndarray] = []
    bulges = []

    def nuis() -> dict:
        return dict(epi_width=rng.uniform(0.94, 1.06), epi_height=rng.uniform(0.9, 1.1),
                    density=rng.uniform(0.92, 1.08), p_offset=rng.uniform(-0.04, 0.04),
                    cortex=cortex * rng.uniform(0.9, 1.1),
                    physis_shape=(float(rng.uniform(-0.03, 0.04)), float(rng.uniform(0.008, 0.03)),
                                  float(rng.uniform(1.0, 3.0)), float(rng.uniform(0, 2 * np.pi))))

    chains = {}
    for ray, (base, angle, lengths, widths) in _RAYS.items():
        angle = angle + _FAN[ray] * spread + (thumb_abd if ray == 1 else 0.0)
        point = np.array(base, dtype=float)
        levels = (1, 2, 4) if ray == 1 else (1, 2, 3, 4)
        # a flexed finger is foreshortened in the PA projection (most fingers lie flat)
        flex = rng.uniform(0.0, 40.0) if rng.random() < 0.3 else rng.uniform(0.0, 8.0)
        chain = []
        for level, length, width in zip(levels, lengths, widths):
            if level > 1:
                if ray == 1:
                    angle += -rng.uniform(2.0, 14.0)
                elif level == 2:
                    angle += _ABDUCT[ray] * spread + rng.normal(0.0, 2.5)
                else:  # fingers curve a little towards the middle finger
                    angle += -0.06 * _ABDUCT[ray] * spread + rng.normal(0.0, 1.5)
            d = _direction(angle)
            w = 1.2 * width * width_f * rng.uniform(0.95, 1.05)
            axial = 1.0
            if level > 1 and ray != 1:
                axial = float(np.cos(np.deg2rad(flex * (0.6 + 0.25 * level))))
            length = length * length_f * (1.0 if level == 1 else 1.06 * rng.uniform(0.97, 1.03) * stubby)
            length *= axial
            prox, dist = point, point + d * length
            name = f"{_LEVEL_NAMES[level]}{ray}"
            head = level == 1 and ray != 1  # metacarpals II-V grow at their heads
            # the other end: width and how rounded (the base of metacarpals II-V is flat)
            far = {1: 0.95 if ray == 1 else 0.85, 2: 0.82, 3: 0.78, 4: 0.7}[level]
            far_cap = 0.12 if head else (0.3 if level < 4 else 0.22)
            bones.append(TubularBone(
                name=name, roi=name if name in _GRADED else None, sibling=SIBLING[name],
                kind="head" if head else "disc", prox=prox, dist=dist, width=w,
                shaft={1: 0.6, 2: 0.66, 3: 0.65, 4: 0.52}[level] * rng.uniform(0.93, 1.07),
                far=far, far_cap=far_cap, axial=axial,
                growth_at="dist" if head else "prox", **nuis(),
                # a distal phalanx: a short base flare, a tapering shaft and a short tuft
                **(dict(flare_len=0.75, far_len=0.5) if level == 4 else {}),
            ))
            chain.append((prox, dist, w, d))
            point = dist + d * (1.2 + 0.08 * w) * gap_f * axial  # joint space (cartilage)
        chains[ray] = chain
        # soft tissue of the digit: capsules along the bones, pad beyond the distal phalanx
        t = tissue_f
        for i, (prox, dist, w, d) in enumerate(chain):
            if i == 0 and ray != 1:
                continue  # the palm covers the metacarpals of the fingers
            r0 = 0.5 * w * 1.1 + 2.8 * t
            r1 = 0.5 * w * (1.02 if i < len(chain) - 1 else 0.9) + 2.6 * t
            end = dist + d * (2.6 * t if i == len(chain) - 1 else 0.0)
            start = prox if i > 0 else prox + (dist - prox) * 0.3
            tissue.append(_capsule(start, r0, end, r1))
        mc_prox, mc_dist, mc_w, _ = chain[0]
        if ray == 1:
            palm_pts.append(_circle(mc_prox, 0.5 * mc_w + 8.0 * t))
            palm_pts.append(_circle(mc_prox + (mc_dist - mc_prox) * 0.55, 0.5 * mc_w + 6.5 * t))
        else:
            extra = 6.5 if ray == 5 else 3.5
            palm_pts.append(_circle(mc_prox, 0.5 * mc_w + extra * t))
            palm_pts.append(_circle(mc_dist, 0.5 * mc_w + (extra - 1.0) * t))
            if ray in (2, 5):  # finger webs reach about a quarter of the proximal phalanx
                pp_prox, pp_dist, pp_w, _ = chain[1]
                palm_pts.append(_circle(pp_prox + 0.22 * (pp_dist - pp_prox), 0.5 * pp_w + 2.5 * t))

    # thenar (between thumb and index metacarpals) and hypothenar eminences: thicker tissue
    mc1_prox, mc1_dist = chains[1][0][0], chains[1][0][1]
    mc2_prox, mc2_dist = chains[2][0][0], chains[2][0][1]
    mc5_prox, mc5_dist = chains[5][0][0], chains[5][0][1]
    thenar = 0.5 * (mc1_prox + 0.5 * (mc1_dist - mc1_prox)) + 0.5 * (mc2_prox + 0.3 * (mc2_dist - mc2_prox))
    bulges.append((thenar, (13.0 * rng.uniform(0.85, 1.2), 20.0 * rng.uniform(0.85, 1.2)),
                   float(rng.uniform(-40, -10)), float(rng.uniform(0.1, 0.25))))
    hypo = mc5_prox + 0.35 * (mc5_dist - mc5_prox) + np.array([-6.0, 0.0])
    bulges.append((hypo, (9.0, 20.0), float(rng.uniform(5, 20)), float(rng.uniform(0.05, 0.2))))

    # forearm: radius (radial side, +x) and ulna, growth regions at their distal ends
    rad_end = np.array([9.0 + rng.normal(0, 0.5), 2.0 - wrist_drop])
    uln_end = np.array([-14.0 + rng.normal(0, 0.5), -2.5 - wrist_drop + rng.normal(0, 0.7)])
    tilt = rng.normal(0.0, 1.5)
    for name, end, width, shaft, kind in (
        ("radius", rad_end, 22.0, 0.55, "radius"),
        ("ulna", uln_end, 12.0, 0.72, "ulna"),
    ):
        w = 1.15 * width * width_f * rng.uniform(0.95, 1.05)
        prox = end - _direction(tilt) * 300.0
        bones.append(TubularBone(
            name=name, roi=name, sibling=name, kind=kind, prox=prox, dist=end, width=w,
            shaft=shaft * rng.uniform(0.95, 1.05), far=shaft, far_cap=0.0, growth_at="dist",
            flare_len=1.0, **nuis(),
        ))
    rad, uln = bones[-2], bones[-1]
    wrist_r = rad.physis[0] + 0.5 * rad.width + 6.5 * tissue_f
    wrist_l = uln.physis[0] - 0.5 * uln.width - 7.5 * tissue_f
    top = 6.0 - wrist_drop
    palm_pts.append(np.array([[wrist_l, top], [wrist_r, top], [wrist_l + 2, 26.0]]))
    def corners(k: int) -> tuple[float, ...]:
        """``k`` polar angles (rad), about evenly spread, at a random turn."""
        ph = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
        return tuple(float(x) for x in ph + rng.uniform(-0.25, 0.25, k))

    carpals = []
    for c, a, ang, thr, sq in _CARPALS:
        centre = np.array(c) + rng.normal(0, 0.6, 2)
        centre[1] -= wrist_drop * (1.0 - centre[1] / 30.0) * 0.8
        palm_pts.append(_circle(centre, 8.0))
        carpals.append(Carpal(
            centre=centre,
            axes=(0.96 * a[0] * width_f * rng.uniform(0.93, 1.07), 0.96 * a[1] * width_f * rng.uniform(0.93, 1.07)),
            angle=ang + rng.normal(0, 5.0), appears_at=thr * rng.uniform(0.8, 1.2), squareness=sq,
            corners=corners(int(rng.integers(5, 8))),
        ))
    tissue.append(_hull(np.concatenate(palm_pts)))

    def forearm(depth: float) -> np.ndarray:
        ys = np.linspace(top + 2.0, -depth, 12)
        bulge = 6.0 * tissue_f * np.clip(-ys / 90.0, 0, 1) ** 0.7
        left = np.stack([wrist_l - bulge - 0.02 * np.maximum(-ys, 0), ys], 1)
        right = np.stack([wrist_r + bulge + 0.01 * np.maximum(-ys, 0), ys], 1)
        return np.concatenate([left, right[::-1]])

    tissue.append(forearm(FOREARM_LENGTH))
    fit = np.concatenate([t for t in tissue[:-1]] + [forearm(wrist_drop + rng.uniform(35.0, 80.0))])

    # the adductor sesamoid on the ulnar side of the thumb's metacarpal head
    sesamoid = None
    grown = (bone_age - SESAMOID_AGE["M" if sex == "M" else "F"] * rng.uniform(0.94, 1.06)) / 1.5
    if grown > 0:
        mc1 = bones[0]
        e = mc1.axis_out
        centre = mc1.dist + 0.12 * mc1.width * e - 0.28 * mc1.width * mc1.normal
        sesamoid = (centre, 0.18 * mc1.width * (0.35 + 0.65 * min(1.0, grown)))
    return Hand(bones=tuple(bones), carpals=tuple(carpals), tissue=tuple(tissue), fit_points=fit,
                mm=float(mm), bone_age=float(bone_age), sesamoid=sesamoid, bulges=tuple(bulges),
                tissue_scale=float(tissue_f))
