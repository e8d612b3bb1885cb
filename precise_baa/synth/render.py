"""Render one phantom: labels -> canonical hand -> pose -> radiograph-like image + ground truth.

The image is built the way a radiograph forms. Soft tissue adds attenuation by its thickness
(a cylinder's chord across a finger, a thicker slab over the palm, the thenar eminence);
bones add theirs as hollow tubes: bright cortical walls along the shafts, a medulla filled
with trabecular texture (streaked along shafts, a finer network in ends, epiphyses and
carpals), a thin bright cortical rim along the outline of every part (shaft, metaphysis end,
epiphysis, carpals, the thumb sesamoid); epiphyses are about as dense as the metaphysis. The
summed attenuation, seen through an uneven dose (heel effect), goes through a display curve
(window, gamma) like a processed radiograph (bone brighter than soft tissue brighter than
background); then detector blur, edge enhancement, noise and sometimes anti-scatter grid
lines. Blur, edge enhancement, noise grain, rims and trabeculae have physical sizes (mm,
through the hand's size and the pose's scale), not sizes in pixels.

Two styles:

* ``"raw"``: a square film, the hand small to large on it, rotated, a dark but not black
  background, white collimator strips at the edges, an "L" marker and text at free places;
* ``"preprocessed"``: what public bone-age sets publish after clean-up: a portrait frame
  (width / height = 1600 / 2080), the hand upright and filling it (fingertips near the top
  edge, forearm a short stub leaving at the bottom, thumb or little finger touching the
  sides), pixels outside the soft-tissue silhouette exactly 0, no markers.

Every ROI box lies inside the frame (the pose is fitted so that all 13 growth regions are in
view; soft tissue may leave the frame, a bone's growth region never does), so boxes are never
cut. Drawing uses OpenCV primitives and distance transforms on small patches: a 512 px
phantom takes some tens of milliseconds.

Random numbers come from separate streams (labels, anatomy, pose, look, artefacts, style), so
forcing the stages or the age of a phantom leaves its anatomy, pose and nuisances unchanged.
Size and proportions follow the hand's skeletal maturity (not a single forced stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from ..rois import ROI_KEYS, num_stages
from ..schemas import Box
from .geometry import Hand, TubularBone, build_hand
from .labels import Labels, age_for_maturity, sample_labels
from .maturity import SHAPES, growth_region, maturity

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_TEXTS = ("L", "PA", "LEFT", "L PA", "HAND", "L HAND PA", "AP", "STANDING")
#: changes whenever the same seed renders a different image (datasets record it)
GENERATOR_VERSION = 5
#: phantom styles; "mixed" draws one of them per phantom (50/50) from the phantom's own seed
STYLES = ("raw", "preprocessed")
#: width / height of the preprocessed style's portrait frame (1600 x 2080)
PORTRAIT = 1600.0 / 2080.0


def frame_shape(size: int, style: str) -> tuple[int, int]:
    """``(height, width)`` of a ``style`` phantom whose longer side is ``size``."""
    if style == "preprocessed":
        return size, int(round(size * PORTRAIT))
    return size, size


def check_style(style: str) -> str:
    if style not in STYLES + ("mixed",):
        raise InputError(f"style {style!r} is not one of: {', '.join(STYLES + ('mixed',))}")
    return style


@dataclass(frozen=True)
class Phantom:
    """One synthetic left-hand PA radiograph with its ground truth.

    ``image`` float32 ``[height, width]`` in [0, 1] (bright = bone; square for the raw style,
    portrait for the preprocessed one); ``mask`` bool of the same shape, the soft-tissue
    silhouette of hand, wrist and visible forearm (never the markers or border strips);
    ``boxes`` one ROI box per ROI key (pixels, inside the image); ``stages`` RUS-CHN and
    ``stages_tw3`` TW3 stages per ROI; ``bone_age`` and ``maturity_score`` are what the RUS-CHN
    scorer gives for ``stages``. ``epiphysis_boxes`` frames the drawn epiphysis of each ROI
    (None at stage 0) and ``artefact_mask`` the strips, markers and text (both for checks).
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: dict[str, Box]
    stages: dict[str, int]
    stages_tw3: dict[str, int]
    sex: str
    chronological_age: float
    bone_age: float
    maturity_score: int
    epiphysis_boxes: dict[str, Box | None]
    artefact_mask: np.ndarray
    style: str = "raw"
    mirrored: bool = False


# --------------------------------------------------------------------------------------------
# drawing helpers
def _tube(d: np.ndarray, radius: float, cortex: float, trab: float) -> tuple[np.ndarray, np.ndarray]:
    """Projected thickness of a hollow bone at depth ``d`` (px) inside its outline.

    A tube of outer radius ``radius`` seen side-on: the chord through the cortical wall
    (``cortex`` x radius thick) and the chord through the medulla (times ``trab``, the
    trabecular bone's relative density), both / radius. The wall's chord peaks just inside the
    edge: the bright cortical lines of a radiograph.
    """
    r = max(float(radius), 0.75)
    dd = np.minimum(d, r)
    outer = np.sqrt(np.maximum(dd * (2 * r - dd), 0.0)) / r
    c = cortex * r
    ri = r - c
    di = np.clip(dd - c, 0.0, ri)
    inner = np.sqrt(np.maximum(di * (2 * ri - di), 0.0)) / r
    return outer - inner, trab * inner


def _shaft(bone: TubularBone, pose: Pose, x0: int, y0: int, shape: tuple[int, int],
           trab: float) -> tuple[np.ndarray, np.ndarray]:
    """Cortical and trabecular chords of a tubular bone's shaft on a patch (origin x0, y0).

    The shaft is a tube whose radius follows the bone's outline: thick cortical walls at
    mid-shaft thinning towards the ends, a trabecular medulla, a flattened (less deep)
    metaphysis. Values are chords / the mid-shaft radius (1 = solid bone through the middle).
    """
    a, b, _ = bone.shaft_frame()
    pa, pb = pose(a[None])[0], pose(b[None])[0]
    length = max(float(np.hypot(*(pb - pa))), 1e-3)
    e = (pb - pa) / length
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    xx += x0 + 0.5 - pa[0]
    yy += y0 + 0.5 - pa[1]
    t = (xx * e[0] + yy * e[1]) / length
    u = xx * e[1] - yy * e[0]
    hw = np.maximum(bone.half_width(t) * pose.scale, 1e-3).astype(np.float32)
    r = 0.5 * bone.width * bone.shaft * pose.scale
    depth = np.minimum(hw, 1.15 * r)
    c = bone.cortex * r * np.clip(1.5 * np.sin(np.pi * np.clip(t, 0.0, 1.0)), 0.22, 1.0)
    outer = depth * np.sqrt(np.clip(1.0 - (u / hw) ** 2, 0.0, 1.0))
    hi = np.maximum(hw - c, 1e-3)
    inner = np.maximum(depth - c, 0.0) * np.sqrt(np.clip(1.0 - (u / hi) ** 2, 0.0, 1.0))
    return (outer - inner) / r, trab * inner / r


def _orientation_weights(direction: np.ndarray | None) -> np.ndarray:
    """Weights of the 4 texture orientations (0, 45, 90, 135 deg) for a bone axis (image;
    None: all alike, a network without a direction); unit std of the weighted sum."""
    if direction is None:
        w = np.full(4, 1.0)
    else:
        theta = np.arctan2(direction[0], direction[1]) % np.pi
        diff = (theta - np.arange(4) * np.pi / 4 + np.pi / 2) % np.pi - np.pi / 2
        w = np.clip(1.0 - np.abs(diff) / (np.pi / 4), 0.0, 1.0)
    return w / np.sqrt((w ** 2).sum())


def _rim(d: np.ndarray, width: float) -> np.ndarray:
    """A thin bright line just inside an outline: ``d`` px inside it, ``width`` px wide."""
    return np.exp(-0.5 * ((d - 0.45 * width) / (0.4 * width)) ** 2)


class _BoneCanvas:
    """Cortical and trabecular bone maps, drawn bone by bone on local patches.

    A bone's solid parts (shaft, epiphysis, bridge) are united (maximum), so where they touch
    or overlap nothing is counted twice; its modifiers (the dense metaphyseal line) are added
    inside it. Every part has a thin bright cortical rim along its own outline (``rim_px``
    wide); a fusing physis fades the rims across it to a faint scar while the whole bone's one
    outline takes their place. Bones then add up, as overlapping bones do in a radiograph. The
    trabecular part is also kept times a texture streaked along the bone (``texture``).
    """

    def __init__(self, shape: tuple[int, int], textures: np.ndarray, rim_px: float = 1.0):
        self.shape = shape
        self.textures = textures  # [4, h, w]: trabecular streaks at 0, 45, 90, 135 degrees
        self.rim_px = float(rim_px)
        self.cortical = np.zeros(shape, np.float32)
        self.trabecular = np.zeros(shape, np.float32)
        self.texture = np.zeros(shape, np.float32)

    def add(self, solids: list[tuple[np.ndarray, float, float, float, float, float]],
            modifiers: list[tuple[np.ndarray, float]] = (), *, shaft: tuple | None = None,
            axis: np.ndarray | None = None,
            bridge: tuple[np.ndarray, float, float, float, float, float] | None = None) -> None:
        """``solids``: (outline px, density, tube radius px, cortex fraction, trabecular
        density, rim density), depth taken from the distance to the outline; ``shaft``:
        (outline px, density, bone, pose, trabecular density, rim density), depth from the
        bone's own profile; ``modifiers``: (outline px, added density); ``bridge``: bone
        bridging a fusing physis, (outline px, density, tube radius px, cortex fraction,
        trabecular density, share): its depth is taken from the whole bone's outline (no seam
        where it joins the parts), the parts' walls and rims under it fade by ``share`` and the
        whole bone's outline gets a rim at ``share``; ``axis``: the bone's direction in the
        image (None: no preferred direction)."""
        h, w = self.shape
        outlines = [s[0] for s in solids] + ([shaft[0]] if shaft is not None else [])
        pts_all = np.concatenate(outlines + ([bridge[0]] if bridge is not None else []))
        x0, y0 = np.floor(pts_all.min(0)).astype(int) - 1
        x1, y1 = np.ceil(pts_all.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            return
        cort = np.zeros((y1 - y0, x1 - x0), np.float32)
        trab = np.zeros_like(cort)
        rims = np.zeros_like(cort)
        tmp = np.zeros(cort.shape, np.uint8)
        union = np.zeros(cort.shape, np.uint8)  # the whole bone

        def cover(pts: np.ndarray) -> np.ndarray:
            tmp[:] = 0
            cv2.fillPoly(tmp, [np.round((pts - (x0, y0)) * _ONE).astype(np.int32)], 255,
                         cv2.LINE_AA, _SHIFT)
            np.maximum(union, tmp, out=union)
            return tmp

        def depth(cov: np.ndarray = tmp) -> np.ndarray:
            """Distance (px) inside the outline covered (``cov``, default the one just
            covered), sub-pixel at the edge."""
            inside = (cov >= 128).astype(np.uint8)
            if not inside.any():
                return cov.astype(np.float32) / 510.0
            d = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
            return np.where(inside > 0, d - 0.5, 0.0) + cov.astype(np.float32) / 510.0

        if shaft is not None:
            pts, density, bone, pose, trab_density, rim = shaft
            cov = cover(pts).astype(np.float32) / 255.0
            c, t = _shaft(bone, pose, x0, y0, cort.shape, trab_density)
            cort[:] = density * c * cov
            trab[:] = density * t * cov
            if rim > 0:
                rims[:] = density * rim * _rim(depth(), self.rim_px) * cov
        streaked = trab.copy() if shaft is not None else None  # the shaft's share
        walls: np.ndarray | float = 1.0
        if bridge is not None:  # under the bridge the parts' walls and rims fade: one bone
            for pts in solids:
                cover(pts[0])
            bridged = cover(bridge[0]).astype(np.float32) / 255.0
            walls = 1.0 - bridge[5] * bridged
            whole = depth(union.copy())
        for pts, density, radius, cortex, trab_density, rim in solids:
            cover(pts)
            d = depth()
            if bridge is not None:  # as deep as the whole bone (by ``share``)
                c, t = _tube(np.maximum(d, bridge[5] * whole), radius, cortex, trab_density)
                c = np.minimum(c, _tube(d, radius, cortex, trab_density)[0])
            else:
                c, t = _tube(d, radius, cortex, trab_density)
            np.maximum(cort, density * c * walls, out=cort)
            np.maximum(trab, density * t, out=trab)
            if rim > 0:
                np.maximum(rims, density * rim * _rim(d, self.rim_px) * (tmp / 255.0), out=rims)
        if bridge is not None:
            _, density, radius, cortex, trab_density, share = bridge
            c, t = _tube(whole, radius, cortex, trab_density)
            np.maximum(cort, density * c * bridged, out=cort)
            np.maximum(trab, density * t * bridged, out=trab)
            rims *= walls
            if shaft is not None and shaft[5] > 0:  # the whole bone's one outline
                outline = _rim(whole, self.rim_px) * (union / 255.0)
                np.maximum(rims, (share * shaft[1] * shaft[5]) * outline, out=rims)
        cort += rims
        for pts, value in modifiers:
            cort += cover(pts).astype(np.float32) * (value / 255.0)
        patch = self.textures[:, y0:y1, x0:x1]
        # trabeculae streak along a shaft; ends, epiphyses and carpals have a network
        net = 0.5 * np.tensordot(_orientation_weights(None), patch, 1)  # finer, fainter
        if streaked is not None and axis is not None:
            along = np.tensordot(_orientation_weights(axis), patch, 1)
            tex = np.where(trab > streaked + 1e-6, net, along)
        else:
            tex = net
        self.cortical[y0:y1, x0:x1] += cort
        self.trabecular[y0:y1, x0:x1] += trab
        self.texture[y0:y1, x0:x1] += trab * tex


def _fill(canvas: np.ndarray, polys: list[np.ndarray], value: int = 255) -> None:
    for pts in polys:
        cv2.fillPoly(canvas, [np.round(pts * _ONE).astype(np.int32)], value, cv2.LINE_AA, _SHIFT)


def _smooth_field(rng: np.random.Generator, shape: int | tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1]: ``cells`` x ``cells`` noise, upsampled."""
    h, w = (shape, shape) if isinstance(shape, int) else shape
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _trabecular_textures(rng: np.random.Generator, shape: tuple[int, int], px_mm: float,
                         grain: float = 1.0) -> np.ndarray:
    """Band-pass noise streaked at 0, 45, 90 and 135 degrees (from the image y axis):
    trabeculae, ``[4, h, w]``, each of about unit std.

    Physical scales: streaks about 0.9 mm long and 0.22 mm across, structure above ~1.5 mm
    removed (``px_mm`` pixels per millimetre, ``grain`` scales them all). One high-passed
    noise field feeds the four orientations (a linear filter commutes with the high-pass)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise -= cv2.GaussianBlur(noise, (0, 0), max(1.0, 1.5 * grain * px_mm))
    s_long = max(0.6, 0.9 * grain * px_mm)
    s_short = max(0.35, 0.22 * grain * px_mm)
    r = int(np.ceil(2.5 * s_long))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    out = np.empty((4, *shape), np.float32)
    for i in range(4):
        angle = i * np.pi / 4
        c, s = np.cos(angle), np.sin(angle)
        along, across = yy * c + xx * s, -yy * s + xx * c
        k = np.exp(-0.5 * ((along / s_long) ** 2 + (across / s_short) ** 2)).astype(np.float32)
        out[i] = cv2.filter2D(noise, -1, k / k.sum())
        out[i] /= max(float(out[i, ::3, ::3].std()), 1e-6)
    return out


# --------------------------------------------------------------------------------------------
# pose
@dataclass(frozen=True)
class Pose:
    linear: np.ndarray  # 2x2, canonical units (y up) -> pixels (y down)
    offset: np.ndarray
    scale: float  # pixels per unit
    angle: float = 0.0  # rotation (rad) of the hand's long axis from the image's vertical
    mirrored: bool = False

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, float) @ self.linear.T + self.offset


def _roi_corners(hand: Hand) -> np.ndarray:
    """Centres (units) and half sides of the 13 ROI boxes: ``[13, 3]``."""
    rows = []
    for bone in hand.bones:
        if bone.roi is not None:
            centre, side = bone.box()
            rows.append([centre[0], centre[1], 0.5 * side])
    return np.asarray(rows)


def sample_pose(rng: np.random.Generator, hand: Hand, shape: tuple[int, int],
                style: str = "raw") -> Pose:
    """Random rotation, mirroring, scale and position for ``style`` in a ``shape`` frame.

    Raw: a film of 19-30 cm (the hand's real size decides how much of it the hand covers),
    rotated up to 18 degrees, the forearm leaving at the bottom, fingers inside. Preprocessed:
    upright, fingertips 3-15 % below the top edge, a forearm stub at the bottom (0-13 % of the
    frame: some frames end at the wrist, the distal radius and ulna boxes still inside), as wide
    as the frame allows. Either way every ROI box stays inside the frame.
    """
    h, w = shape
    mirrored = bool(rng.random() < 0.08)  # a right hand, or a flipped left one
    if style == "preprocessed":
        a = float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    else:
        a = rng.uniform(-18.0, 18.0)
    a = np.deg2rad(a)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([1.0, -1.0])
    if mirrored:
        rot = rot @ np.diag([-1.0, 1.0])
    pts = hand.fit_points @ rot.T
    rois = _roi_corners(hand)
    rc = rois[:, :2] @ rot.T
    rlo, rhi = rc - rois[:, 2:3], rc + rois[:, 2:3]  # ROI boxes (unit scale, axis-aligned)
    r_lo, r_hi = rlo.min(0), rhi.max(0)
    if style == "preprocessed":
        physis = (hand.bone("radius").physis @ rot.T)[1]
        tip = pts[:, 1].min()
        top = rng.uniform(0.03, 0.08) if rng.random() < 0.85 else rng.uniform(0.08, 0.15)
        # forearm below the radius physis; one in five frames ends right at the wrist
        stub = rng.uniform(0.06, 0.13) if rng.random() < 0.8 else rng.uniform(0.0, 0.06)
        scale = h * (1.0 - top - stub) / (physis - tip)
        upper = pts[pts[:, 1] <= physis + stub * h / scale]
        lo, hi = upper.min(0), upper.max(0)
        scale = min(scale, w * rng.uniform(0.95, 1.1) / (hi[0] - lo[0]),
                    (w - 2.0) / (r_hi[0] - r_lo[0]), (h - 2.0) / (r_hi[1] - r_lo[1]))
        tx = 0.5 * (w - (lo[0] + hi[0]) * scale) + rng.uniform(-0.04, 0.04) * w
        tx = float(np.clip(tx, 1.0 - r_lo[0] * scale, w - 1.0 - r_hi[0] * scale))
        ty = h * (1.0 - stub) - physis * scale
        ty = float(np.clip(ty, 1.0 - r_lo[1] * scale, h - 1.0 - r_hi[1] * scale))
    else:
        lo, hi = pts.min(0), pts.max(0)
        margin = 0.065 * w
        fit = min((w - 2 * margin) / (hi[0] - lo[0]), (h - margin) / (hi[1] - lo[1]))
        scale = min(fit, w / rng.uniform(190.0, 300.0) * hand.mm)  # px per unit on this film
        smallest = 2.0 * rois[:, 2].min()
        scale = min(fit, max(scale, 0.03 * w / smallest))  # the smallest ROI box >= 3 % of the frame
        lo, hi = lo * scale, hi * scale
        tx = rng.uniform(margin - lo[0], max(margin - lo[0], w - margin - hi[0]))
        ty = h * (1.0 + rng.uniform(0.0, 0.03)) - hi[1]  # forearm stub ends below the image
        ty = float(min(ty, h - 1.0 - r_hi[1] * scale))
    return Pose(linear=rot * scale, offset=np.array([tx, ty]), scale=float(scale),
                angle=float(a), mirrored=mirrored)


# --------------------------------------------------------------------------------------------
def _bone_maturity(bone: TubularBone, stages: Mapping[str, int]) -> float:
    p = maturity(stages[bone.sibling], num_stages(bone.sibling))
    if bone.roi is None and p > 0:
        p = float(np.clip(p + bone.p_offset, 0.02, 1.0))
    return p


def _box(pts: np.ndarray) -> Box:
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return Box(x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1))


def _draw_bones(hand: Hand, stages: Mapping[str, int], pose: Pose, shape: tuple[int, int],
                trab: float, textures: np.ndarray, rim: float = 0.35,
                rim_px: float = 1.0) -> tuple[_BoneCanvas, dict[str, Box | None]]:
    """Cortical / trabecular bone maps (1 ~ a tube seen side-on) and the epiphyses' boxes.

    Epiphyses, bridges and carpals are about as dense as the metaphysis (trabecular bone
    inside a thin cortical rim of density ``rim``); a young ossification centre is fainter
    and its rim weaker."""
    canvas = _BoneCanvas(shape, textures, rim_px)
    epiphyses: dict[str, Box | None] = {}
    for bone in hand.bones:
        d = bone.density
        p = _bone_maturity(bone, stages)
        region = growth_region(bone.kind, p, width_scale=bone.epi_width,
                               height_scale=bone.epi_height, physis=bone.physis_shape)
        r_shaft = 0.5 * bone.width * bone.shaft * pose.scale
        solids = []
        box = None
        if region.epiphysis is not None:
            pts = pose(bone.local_to_canonical(region.epiphysis))
            r_epi = 0.5 * SHAPES[bone.kind].height * bone.epi_height * bone.width * bone.axial
            solids.append((pts, d * region.density, r_epi * pose.scale, 0.08, 1.15 * trab,
                           rim * (0.45 + 0.55 * min(1.0, p / 0.5))))
            box = _box(pts)
        bridge = None
        if region.bridge is not None:
            bridge = (pose(bone.local_to_canonical(region.bridge)), d * region.bridge_density,
                      r_shaft, 0.08, 1.15 * trab, 0.95 * region.fuse)
        axis = pose(bone.axis_out[None])[0] - pose(np.zeros((1, 2)))[0]
        modifiers = [(pose(bone.metaphysis_band(region.end)), region.band_density * d)]
        if region.plate is not None:
            modifiers.append((pose(bone.local_to_canonical(region.plate)), region.plate_density * d))
        canvas.add(solids, modifiers,
                   shaft=(pose(bone.shaft_outline(end=region.end)), d, bone, pose, trab, rim),
                   axis=axis, bridge=bridge)
        if bone.roi is not None:
            epiphyses[bone.roi] = box
    for carpal in hand.carpals:
        outline = carpal.outline(hand.bone_age)
        if outline is not None:
            ext = outline - carpal.centre
            radius = 0.6 * float(np.hypot(ext[:, 0], ext[:, 1]).min()) * pose.scale
            grown = min(1.0, (hand.bone_age - carpal.appears_at) / 3.0)
            canvas.add([(pose(outline), 0.85, radius, 0.1, 1.3 * trab, rim * (0.5 + 0.5 * grown))])
    if hand.sesamoid is not None:
        centre, r = hand.sesamoid
        th = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = centre + r * np.stack([np.cos(th), np.sin(th)], 1)
        canvas.add([(pose(pts), 0.8, r * pose.scale, 0.2, 1.3 * trab, rim)])
    return canvas, epiphyses


def _roi_boxes(hand: Hand, pose: Pose, shape: tuple[int, int]) -> dict[str, Box]:
    """The 13 ROI boxes in pixels, clipped to the frame (the pose keeps them inside)."""
    h, w = shape
    boxes = {}
    for bone in hand.bones:
        if bone.roi is None:
            continue
        centre, side = bone.box()
        cx, cy = pose(centre[None])[0]
        half = 0.5 * side * pose.scale
        box = Box(x0=float(max(cx - half, 0.0)), y0=float(max(cy - half, 0.0)),
                  x1=float(min(cx + half, w)), y1=float(min(cy + half, h)))
        if box.width <= 0 or box.height <= 0:  # the pose fit rules this out
            raise RuntimeError(f"phantom ROI {bone.roi} fell outside the frame")
        boxes[bone.roi] = box
    return {k: boxes[k] for k in ROI_KEYS}


def _soft_tissue(hand: Hand, pose: Pose, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette (bool) and soft-tissue thickness (about 0..1.6) of the hand."""
    h, w = shape
    silhouette = np.zeros(shape, np.uint8)
    _fill(silhouette, [pose(t) for t in hand.tissue])
    inside = silhouette >= 128
    dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5) / pose.scale  # units
    r = 10.0 * hand.tissue_scale  # a finger's radius
    dd = np.minimum(dist, r)
    thickness = np.sqrt(np.maximum(dd * (2 * r - dd), 0.0)) / r
    thickness += 0.6 * np.clip((dist - r) / (2.5 * r), 0, 1) ** 0.8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for centre, axes, angle, amp in hand.bulges:
        cx, cy = pose(np.asarray(centre)[None])[0]
        a = np.deg2rad(angle) + pose.angle * (-1 if pose.mirrored else 1)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(a) + dy * np.sin(a)) / (axes[0] * pose.scale)
        v = (-dx * np.sin(a) + dy * np.cos(a)) / (axes[1] * pose.scale)
        thickness += amp * np.exp(-0.5 * (u * u + v * v) * 2.0) * np.clip(dist / r, 0, 1)
    thickness = cv2.GaussianBlur(thickness.astype(np.float32), (0, 0), 1.0 * pose.scale)
    thickness *= silhouette.astype(np.float32) / 255.0
    return inside, thickness


def _free_spot(forbidden: np.ndarray, w: int, h: int, rng: np.random.Generator,
               tries: int = 40) -> tuple[int, int] | None:
    size = forbidden.shape[0]
    if w >= size or h >= size:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if not forbidden[y:y + h, x:x + w].any():
            return x, y
    return None


def _draw_marker(image: np.ndarray, art: np.ndarray, forbidden: np.ndarray,
                 rng: np.random.Generator, text: str, height: float, style: str) -> None:
    """White text (an "L" marker or a label) at a free spot, optionally in a box."""
    font = cv2.FONT_HERSHEY_DUPLEX if style != "plain" else cv2.FONT_HERSHEY_SIMPLEX
    scale = height / 22.0
    thick = max(1, int(round(height / (6.0 if style == "marker" else 10.0))))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    pad = max(2, int(0.3 * th)) if style in ("box", "inverse") else 1
    w, h = tw + 2 * pad, th + base + 2 * pad
    spot = _free_spot(forbidden, w, h, rng)
    if spot is None:
        return
    x, y = spot
    patch = np.zeros((h, w), np.uint8)
    white = rng.uniform(0.88, 1.0)
    region = image[y:y + h, x:x + w]
    if style == "inverse":  # a filled white box with a dark letter
        patch[:] = 255
        cv2.putText(patch, text, (pad, pad + th), font, scale, 0, thick, cv2.LINE_AA)
        a = patch.astype(np.float32) / 255.0
        region[:] = white * (0.25 + 0.75 * a)
        art[y:y + h, x:x + w] = True
    else:  # white text, optionally framed
        if style == "box":
            cv2.rectangle(patch, (0, 0), (w - 1, h - 1), 255, max(1, thick // 2))
        cv2.putText(patch, text, (pad, pad + th), font, scale, 255, thick, cv2.LINE_AA)
        a = patch.astype(np.float32) / 255.0
        region[:] = region * (1 - a) + a * white
        art[y:y + h, x:x + w] |= patch > 0
    forbidden[max(0, y - 4):y + h + 4, max(0, x - 4):x + w + 4] = True


def _draw_strips(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """White collimator strips along some edges; returns where they are."""
    strips = np.zeros((size, size), np.uint8)
    if rng.random() < 0.4:
        return strips > 0
    edges = [e for e in ("top", "bottom", "left", "right") if rng.random() < 0.45] or ["left"]
    for edge in edges:
        w0 = rng.uniform(0.012, 0.05) * size
        w1 = float(np.clip(w0 + rng.uniform(-0.012, 0.012) * size, 0.008 * size, 0.055 * size))
        if edge == "top":
            pts = [(-1, -1), (size + 1, -1), (size + 1, w1), (-1, w0)]
        elif edge == "bottom":
            pts = [(-1, size - w0), (size + 1, size - w1), (size + 1, size + 1), (-1, size + 1)]
        elif edge == "left":
            pts = [(-1, -1), (w0, -1), (w1, size + 1), (-1, size + 1)]
        else:
            pts = [(size - w0, -1), (size + 1, -1), (size + 1, size + 1), (size - w1, size + 1)]
        _fill(strips, [np.asarray(pts, float)])
    a = strips.astype(np.float32) / 255.0
    white = rng.uniform(0.85, 1.0)
    shade = white + 0.04 * _smooth_field(rng, size, 3)
    image *= 1 - a
    image += a * np.clip(shade, 0, 1)
    return strips >= 128


# --------------------------------------------------------------------------------------------
def render_phantom(
    seed: int | np.random.Generator,
    size: int = 512,
    *,
    style: str = "raw",
    sex: str | None = None,
    chronological_age: float | None = None,
    stages: Mapping[str, int] | None = None,
) -> Phantom:
    """Render one phantom left-hand radiograph with its ground truth.

    ``size`` is the frame's longer side: ``size`` x ``size`` for ``style="raw"``, ``size`` high
    and ``round(size * 1600 / 2080)`` wide for ``"preprocessed"``; ``"mixed"`` picks one of the
    two (50/50) from the seed. ``seed`` fixes everything; ``sex``, ``chronological_age`` and
    ``stages`` (RUS-CHN, some or all of the 13 ROIs) may be forced, the rest is drawn
    consistently around them.

    >>> p = render_phantom(0, 256)
    >>> p.image.shape, p.image.dtype, sorted(p.boxes) == sorted(p.stages)
    ((256, 256), dtype('float32'), True)
    >>> render_phantom(0, 260, style="preprocessed").image.shape
    (260, 200)
    """
    if size < 128:
        raise InputError(f"size {size} is too small for a hand phantom (use 128 or more)")
    check_style(style)
    rng = np.random.default_rng(seed)
    r_labels, r_hand, r_pose, r_look, r_art, r_style = rng.spawn(6)
    labels: Labels = sample_labels(r_labels, sex=sex, chronological_age=chronological_age, stages=stages)
    if style == "mixed":
        style = STYLES[int(r_style.random() < 0.5)]
    raw = style == "raw"
    shape = frame_shape(size, style)
    h, w = shape
    hand = build_hand(r_hand, age_for_maturity(labels.maturity, labels.sex), labels.sex)
    pose = sample_pose(r_pose, hand, shape, style)
    px = size / 512.0  # lengths of film nuisances (markers, strips) scale with the size
    px_mm = pose.scale / hand.mm  # pixels per real millimetre: the detector's physical scales

    inside, thickness = _soft_tissue(hand, pose, shape)
    trab = r_look.uniform(0.22, 0.32)
    grain = r_look.uniform(0.8, 1.25)
    textures = _trabecular_textures(r_look, shape, px_mm, grain)
    rim = r_look.uniform(0.25, 0.45)  # cortical outline density
    rim_px = max(0.9, r_look.uniform(0.3, 0.45) * px_mm)  # its width, ~0.3-0.45 mm
    canvas, epiphyses = _draw_bones(hand, labels.stages, pose, shape, trab, textures, rim, rim_px)
    bone = canvas.cortical + canvas.trabecular + r_look.uniform(0.16, 0.32) * canvas.texture

    # exposure: attenuation through an uneven dose (heel effect along the long axis, a tilt,
    # a smooth field), log-displayed through an S-shaped curve (toe and shoulder, like a
    # processed radiograph's look-up table): dark thin tissue, bone bright but rarely clipped
    mu_t = r_look.uniform(0.5, 0.7)
    mu_b = r_look.uniform(0.56, 0.8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    g = r_look.uniform(0, 2 * np.pi)
    log_dose = (r_look.uniform(-0.15, 0.15) * yy
                + r_look.uniform(0.0, 0.12) * (np.cos(g) * xx + np.sin(g) * yy)
                - r_look.uniform(0.0, 0.3) * (xx ** 2 + yy ** 2)
                + r_look.uniform(0.0, 0.05) * _smooth_field(r_look, shape, 4))
    density = mu_t * thickness + mu_b * np.maximum(bone, 0.0) - log_dose
    reference = r_look.uniform(1.65, 2.05)  # density shown near white (bone over the palm)
    # the window starts below the thinnest tissue: the skin line stands out from the background
    skin = r_look.uniform(0.05, 0.12) if raw else r_look.uniform(0.03, 0.08)
    skin = skin * cv2.GaussianBlur(inside.astype(np.float32), (0, 0), max(0.5, 0.25 * px_mm))
    x = np.clip(density / reference + skin, 0.0, 1.2)
    k, x0 = r_look.uniform(3.5, 5.5), r_look.uniform(0.4, 0.5)
    s0, s1 = 1.0 / (1.0 + np.exp(k * x0)), 1.0 / (1.0 + np.exp(-k * (1.0 - x0)))
    curve = (1.0 / (1.0 + np.exp(-k * (x - x0))) - s0) / (s1 - s0)
    if raw:
        lo, hi = r_look.uniform(0.0, 0.12), r_look.uniform(0.85, 0.98)
    else:
        lo, hi = r_look.uniform(0.08, 0.16), r_look.uniform(0.92, 1.0)
    image = (lo + (hi - lo) * curve).astype(np.float32)

    # nuisances outside the hand (raw films only)
    art = np.zeros(shape, bool)
    strips = np.zeros(shape, bool)
    if raw:
        strips = _draw_strips(image, r_art, size)
        art |= strips
        forbidden = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8),
                               iterations=max(2, int(6 * px))) > 0
        forbidden |= strips
        _draw_marker(image, art, forbidden, r_art, "L",
                     r_art.uniform(22, 40) * px, r_art.choice(["marker", "box", "inverse"]))
        if r_art.random() < 0.5:
            text = str(r_art.choice(_TEXTS))
            if r_art.random() < 0.5:
                text = f"{text} {r_art.integers(1, 29):02d}/{r_art.integers(1, 13):02d}/{r_art.integers(2005, 2025)}"
            _draw_marker(image, art, forbidden, r_art, text, r_art.uniform(9, 15) * px, "plain")

    # detector blur (a physical length: ~0.06-0.2 mm, sometimes a softer film), edge
    # enhancement (unsharp masking over a few mm), noise, anti-scatter grid lines
    blur_mm = r_look.uniform(0.06, 0.2) if r_look.random() < 0.9 else r_look.uniform(0.2, 0.28)
    blur = blur_mm * px_mm
    if blur > 0.25:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    sharpen, s_sigma = r_look.uniform(0.15, 0.7), r_look.uniform(1.0, 3.0) * px_mm
    image = image + sharpen * (image - cv2.GaussianBlur(image, (0, 0), s_sigma))
    sigma = r_look.uniform(0.008, 0.028)
    noise = r_look.standard_normal(shape, dtype=np.float32)
    grain_px = max(0.45, r_look.uniform(0.08, 0.16) * px_mm)  # quantum mottle, ~0.1 mm
    noise = cv2.GaussianBlur(noise, (0, 0), grain_px) * (1.8 * grain_px / 0.6)
    image = image + sigma * noise * np.sqrt(np.clip(image, 0.02, 1.0) / 0.4)
    if r_look.random() < (0.3 if raw else 0.12):
        period = r_look.uniform(2.2, 4.5) * px
        axis = xx * w if r_look.random() < 0.5 else yy * h
        image = image + r_look.uniform(0.003, 0.01) * np.sin(2 * np.pi * axis / period)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    mask = inside & ~strips
    if not raw:
        # segmented onto exactly black; like a real segmentation the kept region reaches a
        # pixel or two beyond the skin (a dark rim), and it is what the mask marks
        rim = int(round(r_art.uniform(0.0, 1.4) * px))
        if rim:
            mask = cv2.dilate(inside.astype(np.uint8), np.ones((2 * rim + 1,) * 2, np.uint8)) > 0
        image[~mask] = 0.0
        image[mask] = np.maximum(image[mask], 0.012)

    return Phantom(
        image=image,
        mask=mask,
        boxes=_roi_boxes(hand, pose, shape),
        stages=dict(labels.stages),
        stages_tw3=dict(labels.stages_tw3),
        sex=labels.sex,
        chronological_age=labels.chronological_age,
        bone_age=labels.bone_age,
        maturity_score=labels.maturity_score,
        epiphysis_boxes={k: epiphyses.get(k) for k in ROI_KEYS},
        artefact_mask=art,
        style=style,
        mirrored=pose.mirrored,
    )
