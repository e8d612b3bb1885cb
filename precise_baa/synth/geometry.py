"""The canonical left hand: bones, carpals and soft tissue, in millimetres.

Canonical frame: x to the right, y up (towards the fingertips), origin at the wrist. The hand
lies palm down as in a PA radiograph of the left hand, so the thumb (ray 1) is on the +x side
and the forearm points down (-y). Proportions follow an older child's hand; the pose (scale,
rotation, position) is applied later by the renderer.

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
#: how far the forearm is drawn (mm): far enough to leave any image at the bottom
FOREARM_LENGTH = 600.0


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
    prox: np.ndarray  # proximal articular end (mm)
    dist: np.ndarray  # distal articular end (mm)
    width: float  # metaphysis width at the growth end (mm)
    shaft: float  # narrowest shaft width / width
    far: float  # width at the other end / width
    far_cap: float  # depth of the rounded other end / width
    growth_at: str  # "prox" or "dist"
    epi_width: float = 1.0  # nuisances of the epiphysis (not tied to stage)
    epi_height: float = 1.0
    density: float = 1.0
    p_offset: float = 0.0  # maturity offset of a non-graded bone from its sibling

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
        return (GAP_MAX + SHAPES[self.kind].height * self.epi_height) * self.width

    @property
    def physis(self) -> np.ndarray:
        end = self.prox if self.growth_at == "prox" else self.dist
        return end - self.axis_out * self.zone_depth

    def local_to_canonical(self, uv: np.ndarray) -> np.ndarray:
        """Growth-region frame (u, v in units of width) -> canonical mm."""
        uv = np.asarray(uv, dtype=float) * self.width
        return self.physis + uv[:, :1] * self.normal + uv[:, 1:2] * self.axis_out

    def _profile(self, t: np.ndarray, length: float) -> np.ndarray:
        """Half width (mm) along the shaft, t = 0 at the far end, 1 at the physis."""
        far_zone = min(0.35, 1.2 * self.width / length)
        flare = min(0.45, 1.4 * self.width / length)
        w = (self.shaft + (self.far - self.shaft) * np.clip(1 - t / far_zone, 0, 1) ** 2
             + (1 - self.shaft) * np.clip((t - 1 + flare) / flare, 0, 1) ** 2)
        return 0.5 * self.width * w

    def shaft_outline(self, n: int = 18) -> np.ndarray:
        """Outline (mm) of diaphysis + metaphysis: far end cap to the physis."""
        far_end = self.dist if self.growth_at == "prox" else self.prox
        e = self.axis_out
        nrm = np.array([-e[1], e[0]])
        cap = self.far_cap * self.width
        a = far_end + e * cap  # where the far cap meets the shaft
        b = self.physis
        t = np.linspace(0.0, 1.0, n)
        centre = a + (b - a) * t[:, None]
        hw = self._profile(t, float(np.hypot(*(b - a))))
        left = centre + nrm * hw[:, None]
        right = centre - nrm * hw[:, None]
        # far cap: half superellipse from right[0] around far_end to left[0]
        th = np.linspace(-0.5 * np.pi, 0.5 * np.pi, 11)[1:-1]
        s, c = np.sin(th), np.cos(th)
        cap_pts = a + nrm * (hw[0] * s)[:, None] - e * (cap * np.abs(c) ** 0.8)[:, None]
        # the physis end is straight (the growth region continues it)
        return np.concatenate([right, left[::-1], cap_pts])

    def medulla_outline(self, n: int = 14) -> np.ndarray:
        """The darker medullary cavity of the shaft (mm)."""
        far_end = self.dist if self.growth_at == "prox" else self.prox
        e = self.axis_out
        nrm = np.array([-e[1], e[0]])
        a = far_end + e * (self.far_cap * self.width)
        b = self.physis
        t = np.linspace(0.12, 0.85, n)
        centre = a + (b - a) * t[:, None]
        taper = np.sin(np.pi * (t - 0.12) / 0.73) ** 0.35
        hw = 0.58 * self._profile(t, float(np.hypot(*(b - a)))) * taper
        return np.concatenate([centre + nrm * hw[:, None], (centre - nrm * hw[:, None])[::-1]])

    def metaphysis_band(self) -> np.ndarray:
        """The dense zone of provisional calcification just below the physis (mm)."""
        return self.local_to_canonical(np.array([[-0.48, -0.07], [0.48, -0.07], [0.49, 0.0], [-0.49, 0.0]]))

    def box(self) -> tuple[np.ndarray, float]:
        """Centre (mm) and side (mm) of the ROI box around the growth region."""
        centre = self.physis + self.axis_out * BOX_SHIFT[self.kind] * self.width
        return centre, BOX_SIDE[self.kind] * self.width


@dataclass(frozen=True)
class Carpal:
    centre: np.ndarray
    axes: tuple[float, float]  # semi-axes when mature (mm)
    angle: float  # degrees
    appears_at: float  # hand maturity at which it ossifies
    squareness: float  # superellipse exponent (2 = ellipse)

    def outline(self, maturity: float, n: int = 24) -> np.ndarray | None:
        grown = (maturity - self.appears_at) / 0.35
        if grown <= 0:
            return None
        k = 0.3 + 0.7 * min(1.0, grown)
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, s = np.cos(th), np.sin(th)
        e = 2.0 / self.squareness
        x = k * self.axes[0] * np.sign(c) * np.abs(c) ** e
        y = k * self.axes[1] * np.sign(s) * np.abs(s) ** e
        a = np.deg2rad(self.angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return self.centre + np.stack([x, y], 1) @ rot.T


@dataclass(frozen=True)
class Hand:
    bones: tuple[TubularBone, ...]
    carpals: tuple[Carpal, ...]
    #: soft-tissue pieces (mm) whose union is the hand + wrist + forearm silhouette
    tissue: tuple[np.ndarray, ...]
    #: the forearm only down to where the image should cut it (for fitting the pose)
    fit_points: np.ndarray

    def bone(self, name: str) -> TubularBone:
        return next(b for b in self.bones if b.name == name)


# Rays: metacarpal base (mm), metacarpal angle (deg), bone lengths (mm, articular end to end),
# growth-end widths (mm). Ray 1 (thumb) has no middle phalanx.
_RAYS = {
    1: ((21.5, 28.0), 36.0, (43.0, 31.0, 23.0), (12.0, 12.0, 10.0)),
    2: ((11.0, 33.0), 6.0, (65.0, 39.0, 23.0, 17.0), (11.0, 11.5, 10.0, 8.5)),
    3: ((1.5, 34.0), 0.0, (62.0, 44.0, 27.0, 19.0), (11.5, 12.0, 10.5, 9.0)),
    4: ((-8.0, 32.0), -6.0, (56.0, 41.0, 26.0, 18.0), (10.5, 11.0, 10.0, 8.5)),
    5: ((-16.5, 29.5), -13.0, (51.0, 33.0, 19.0, 16.0), (10.0, 10.0, 8.5, 7.5)),
}
#: extra angle per unit of finger spread (deg)
_SPREAD = {1: 8.0, 2: 6.0, 3: 0.0, 4: -6.0, 5: -12.0}
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

# (centre, semi-axes, angle, appears at hand maturity, squareness)
_CARPALS = (
    ((2.0, 22.0), (6.0, 9.5), 0.0, 0.0, 2.6),  # capitate
    ((-8.5, 21.5), (5.5, 7.5), 12.0, 0.0, 2.4),  # hamate
    ((-12.5, 11.0), (5.5, 4.5), 25.0, 0.07, 2.3),  # triquetrum
    ((-1.0, 10.0), (6.0, 5.0), 0.0, 0.13, 2.3),  # lunate
    ((19.5, 22.5), (5.5, 5.0), 20.0, 0.18, 2.5),  # trapezium
    ((11.5, 24.5), (4.5, 4.5), 0.0, 0.19, 2.6),  # trapezoid
    ((12.0, 11.5), (4.5, 8.0), -40.0, 0.22, 2.2),  # scaphoid
    ((-15.0, 13.5), (3.5, 3.5), 0.0, 0.45, 2.0),  # pisiform
)


def _circle(c: np.ndarray, r: float, n: int = 16) -> np.ndarray:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.asarray(c) + r * np.stack([np.cos(th), np.sin(th)], 1)


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(float)


def _capsule(p0: np.ndarray, r0: float, p1: np.ndarray, r1: float) -> np.ndarray:
    return _hull(np.concatenate([_circle(p0, r0), _circle(p1, r1)]))


def build_hand(rng: np.random.Generator) -> Hand:
    """One random canonical hand: proportions, finger spread and per-bone nuisances."""
    length_f = rng.uniform(0.94, 1.06)  # slender vs stubby fingers
    width_f = rng.uniform(0.92, 1.08)
    spread = rng.uniform(-0.3, 1.3)
    thumb_abd = rng.uniform(-6.0, 10.0)
    tissue_f = rng.uniform(0.85, 1.2)  # soft tissue thickness around bones
    bones: list[TubularBone] = []
    tissue: list[np.ndarray] = []
    palm_pts: list[np.ndarray] = []

    def nuis() -> dict:
        return dict(epi_width=rng.uniform(0.94, 1.06), epi_height=rng.uniform(0.9, 1.1),
                    density=rng.uniform(0.92, 1.08), p_offset=rng.uniform(-0.04, 0.04))

    for ray, (base, angle, lengths, widths) in _RAYS.items():
        angle = angle + 0.3 * _SPREAD[ray] * spread + (thumb_abd if ray == 1 else 0.0)
        point = np.array(base, dtype=float)
        levels = (1, 2, 4) if ray == 1 else (1, 2, 3, 4)
        chain = []
        for level, length, width in zip(levels, lengths, widths):
            if level > 1:
                if ray == 1:
                    angle += -rng.uniform(3.0, 12.0)
                else:
                    angle += (0.7 if level == 2 else 0.15) * _SPREAD[ray] * spread
                angle += rng.normal(0.0, 1.5)
            d = _direction(angle)
            w = width * width_f * rng.uniform(0.95, 1.05)
            length = length * length_f * (1.0 if level == 1 else rng.uniform(0.97, 1.03))
            prox, dist = point, point + d * length
            name = f"{_LEVEL_NAMES[level]}{ray}"
            head = level == 1 and ray != 1  # metacarpals II-V grow at their heads
            # the other end: width and how rounded (the base of metacarpals II-V is flat)
            far = {1: 0.95 if ray == 1 else 0.85, 2: 0.82, 3: 0.78, 4: 0.62}[level]
            far_cap = 0.12 if head else 0.3
            bones.append(TubularBone(
                name=name, roi=name if name in _GRADED else None, sibling=SIBLING[name],
                kind="head" if head else "disc", prox=prox, dist=dist, width=w,
                shaft={1: 0.6, 2: 0.62, 3: 0.6, 4: 0.45}[level] * rng.uniform(0.93, 1.07),
                far=far, far_cap=far_cap,
                growth_at="dist" if head else "prox", **nuis(),
            ))
            chain.append((prox, dist, w, d))
            point = dist + d * (1.2 + 0.08 * w)  # joint space (cartilage)
        # soft tissue of the digit: capsules along the bones, pad beyond the distal phalanx
        t = tissue_f
        for i, (prox, dist, w, d) in enumerate(chain):
            if i == 0 and ray != 1:
                continue  # the palm covers the metacarpals of the fingers
            r0 = 0.5 * w * 1.25 + 3.2 * t
            r1 = 0.5 * w * (1.1 if i < len(chain) - 1 else 0.9) + 3.0 * t
            end = dist + d * (3.0 * t if i == len(chain) - 1 else 0.0)
            start = prox if i > 0 else prox + (dist - prox) * 0.3
            tissue.append(_capsule(start, r0, end, r1))
        mc_prox, mc_dist, mc_w, _ = chain[0]
        if ray == 1:
            palm_pts.append(_circle(mc_prox, 0.5 * mc_w + 8.0 * t))
            palm_pts.append(_circle(mc_prox + (mc_dist - mc_prox) * 0.55, 0.5 * mc_w + 6.5 * t))
        else:
            extra = 8.0 if ray == 5 else 4.5
            palm_pts.append(_circle(mc_prox, 0.5 * mc_w + extra * t))
            palm_pts.append(_circle(mc_dist, 0.5 * mc_w + (extra - 1.0) * t))
            if ray in (2, 5):  # finger webs reach about a quarter of the proximal phalanx
                pp_prox, pp_dist, pp_w, _ = chain[1]
                palm_pts.append(_circle(pp_prox + 0.22 * (pp_dist - pp_prox), 0.5 * pp_w + 2.5 * t))

    # forearm: radius (radial side, +x) and ulna, growth regions at their distal ends
    rad_end = np.array([9.0 + rng.normal(0, 0.5), 2.0])
    uln_end = np.array([-14.0 + rng.normal(0, 0.5), -2.5 + rng.normal(0, 0.7)])
    tilt = rng.normal(0.0, 1.5)
    for name, end, width, shaft, kind in (
        ("radius", rad_end, 22.0, 0.55, "radius"),
        ("ulna", uln_end, 12.0, 0.72, "ulna"),
    ):
        w = width * width_f * rng.uniform(0.95, 1.05)
        prox = end - _direction(tilt) * 300.0
        bones.append(TubularBone(
            name=name, roi=name, sibling=name, kind=kind, prox=prox, dist=end, width=w,
            shaft=shaft * rng.uniform(0.95, 1.05), far=shaft, far_cap=0.0, growth_at="dist", **nuis(),
        ))
    rad, uln = bones[-2], bones[-1]
    wrist_r = rad.physis[0] + 0.5 * rad.width + 4.0 * tissue_f
    wrist_l = uln.physis[0] - 0.5 * uln.width - 5.0 * tissue_f
    palm_pts.append(np.array([[wrist_l, 6.0], [wrist_r, 6.0], [wrist_l + 2, 26.0]]))
    for c in _CARPALS:
        palm_pts.append(_circle(np.array(c[0]), 8.0))
    tissue.append(_hull(np.concatenate(palm_pts)))

    def forearm(depth: float) -> np.ndarray:
        ys = np.linspace(8.0, -depth, 12)
        bulge = 6.0 * tissue_f * np.clip(-ys / 90.0, 0, 1) ** 0.7
        left = np.stack([wrist_l - bulge - 0.02 * np.maximum(-ys, 0), ys], 1)
        right = np.stack([wrist_r + bulge + 0.01 * np.maximum(-ys, 0), ys], 1)
        return np.concatenate([left, right[::-1]])

    tissue.append(forearm(FOREARM_LENGTH))
    fit = np.concatenate([t for t in tissue[:-1]] + [forearm(rng.uniform(35.0, 80.0))])

    carpals = tuple(
        Carpal(
            centre=np.array(c) + rng.normal(0, 0.6, 2),
            axes=(a[0] * width_f * rng.uniform(0.93, 1.07), a[1] * width_f * rng.uniform(0.93, 1.07)),
            angle=ang + rng.normal(0, 5.0), appears_at=thr, squareness=sq,
        )
        for c, a, ang, thr, sq in _CARPALS
    )
    return Hand(bones=tuple(bones), carpals=carpals, tissue=tuple(tissue), fit_points=fit)
