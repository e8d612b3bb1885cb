"""Render one phantom: labels -> canonical hand -> pose -> radiograph-like image + ground truth.

The image is built the way a radiograph forms: soft-tissue thickness and bone density add up
to an attenuation map, which an exposure curve turns into brightness (bone brighter than soft
tissue brighter than background). Then come the nuisances a real image has: uneven exposure,
brightness gradients, blur, noise, white collimator strips at the edges and an "L" marker /
text at free places. Everything is drawn with OpenCV primitives on small patches, so one
512 px phantom takes milliseconds.

Random numbers come from separate streams (labels, anatomy, pose, look), so forcing the
stages or the age of a phantom leaves its anatomy, pose and nuisances unchanged.
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
from .labels import Labels, sample_labels
from .maturity import growth_region, maturity

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_TEXTS = ("L", "PA", "LEFT", "L PA", "HAND", "L HAND PA", "AP", "STANDING")


@dataclass(frozen=True)
class Phantom:
    """One synthetic left-hand PA radiograph with its ground truth.

    ``image`` float32 ``[size, size]`` in [0, 1] (bright = bone); ``mask`` bool, the soft-tissue
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


# --------------------------------------------------------------------------------------------
# drawing helpers
class _Canvas:
    """Float image with anti-aliased polygon drawing on local patches.

    A bone is drawn as one piece: its solid parts (shaft, epiphysis, bridge) are united
    (maximum), so where they touch or overlap nothing is counted twice; its modifiers (the
    darker medulla, the dense metaphyseal line) are added inside it. Bones then add up, as
    overlapping bones do in a radiograph.
    """

    def __init__(self, size: int):
        self.size = size
        self.data = np.zeros((size, size), np.float32)

    def add(self, solids: list[tuple[np.ndarray, float]],
            modifiers: list[tuple[np.ndarray, float]] = ()) -> None:
        pts_all = np.concatenate([p for p, _ in solids])
        x0, y0 = np.floor(pts_all.min(0)).astype(int) - 1
        x1, y1 = np.ceil(pts_all.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.size), min(y1, self.size)
        if x1 <= x0 or y1 <= y0:
            return
        patch = np.zeros((y1 - y0, x1 - x0), np.float32)
        tmp = np.zeros(patch.shape, np.uint8)
        for i, (pts, value) in enumerate(list(solids) + list(modifiers)):
            tmp[:] = 0
            cv2.fillPoly(tmp, [np.round((pts - (x0, y0)) * _ONE).astype(np.int32)], 255,
                         cv2.LINE_AA, _SHIFT)
            layer = tmp.astype(np.float32) * (value / 255.0)
            if i < len(solids):
                np.maximum(patch, layer, out=patch)
            else:
                patch += layer
        self.data[y0:y1, x0:x1] += patch


def _fill(canvas: np.ndarray, polys: list[np.ndarray], value: int = 255) -> None:
    for pts in polys:
        cv2.fillPoly(canvas, [np.round(pts * _ONE).astype(np.int32)], value, cv2.LINE_AA, _SHIFT)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1]: ``cells`` x ``cells`` noise, upsampled."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------------------------
# pose
@dataclass(frozen=True)
class Pose:
    linear: np.ndarray  # 2x2, canonical mm (y up) -> pixels (y down)
    offset: np.ndarray
    scale: float  # pixels per mm

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, float) @ self.linear.T + self.offset


def sample_pose(rng: np.random.Generator, hand: Hand, size: int) -> Pose:
    """Random rotation, scale and position; the hand inside, the forearm out at the bottom."""
    a = np.deg2rad(rng.uniform(-15.0, 15.0))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([1.0, -1.0])
    pts = hand.fit_points @ rot.T
    lo, hi = pts.min(0), pts.max(0)
    margin = 0.065 * size
    scale = min((size - 2 * margin) / (hi[0] - lo[0]), (size - margin) / (hi[1] - lo[1]))
    scale *= rng.uniform(0.8, 1.0)
    lo, hi = lo * scale, hi * scale
    tx = rng.uniform(margin - lo[0], size - margin - hi[0])
    ty = size * (1.0 + rng.uniform(0.0, 0.03)) - hi[1]  # forearm stub ends below the image
    return Pose(linear=rot * scale, offset=np.array([tx, ty]), scale=float(scale))


# --------------------------------------------------------------------------------------------
def _bone_maturity(bone: TubularBone, stages: Mapping[str, int]) -> float:
    p = maturity(stages[bone.sibling], num_stages(bone.sibling))
    if bone.roi is None and p > 0:
        p = float(np.clip(p + bone.p_offset, 0.02, 1.0))
    return p


def _box(pts: np.ndarray) -> Box:
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return Box(x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1))


def _draw_bones(hand: Hand, stages: Mapping[str, int], hand_maturity: float, pose: Pose,
                size: int) -> tuple[np.ndarray, dict[str, Box | None]]:
    """Bone density map (1 ~ cortical bone seen side-on) and the drawn epiphyses' boxes."""
    canvas = _Canvas(size)
    epiphyses: dict[str, Box | None] = {}
    for bone in hand.bones:
        d = bone.density
        region = growth_region(bone.kind, _bone_maturity(bone, stages),
                               width_scale=bone.epi_width, height_scale=bone.epi_height)
        solids = [(pose(bone.shaft_outline()), d)]
        box = None
        if region.epiphysis is not None:
            pts = pose(bone.local_to_canonical(region.epiphysis))
            solids.append((pts, 0.95 * d * region.density))
            box = _box(pts)
        if region.bridge is not None:
            solids.append((pose(bone.local_to_canonical(region.bridge)), d * region.bridge_density))
        canvas.add(solids, [(pose(bone.medulla_outline()), -0.5 * d),
                            (pose(bone.metaphysis_band()), region.band_density * d)])
        if bone.roi is not None:
            epiphyses[bone.roi] = box
    for carpal in hand.carpals:
        outline = carpal.outline(hand_maturity)
        if outline is not None:
            inner = carpal.centre + 0.6 * (outline - carpal.centre)
            canvas.add([(pose(outline), 0.9)], [(pose(inner), -0.2)])
    return canvas.data, epiphyses


def _roi_boxes(hand: Hand, pose: Pose, size: int) -> dict[str, Box]:
    boxes = {}
    for bone in hand.bones:
        if bone.roi is None:
            continue
        centre, side = bone.box()
        cx, cy = pose(centre[None])[0]
        half = 0.5 * side * pose.scale
        boxes[bone.roi] = Box(
            x0=float(max(cx - half, 0.0)), y0=float(max(cy - half, 0.0)),
            x1=float(min(cx + half, size)), y1=float(min(cy + half, size)),
        )
    return {k: boxes[k] for k in ROI_KEYS}


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
    sex: str | None = None,
    chronological_age: float | None = None,
    stages: Mapping[str, int] | None = None,
) -> Phantom:
    """Render one phantom left-hand radiograph (``size`` x ``size``) with its ground truth.

    ``seed`` fixes everything; ``sex``, ``chronological_age`` and ``stages`` (RUS-CHN, some or
    all of the 13 ROIs) may be forced, the rest is drawn consistently around them.

    >>> p = render_phantom(0, 256)
    >>> p.image.shape, p.image.dtype, sorted(p.boxes) == sorted(p.stages)
    ((256, 256), dtype('float32'), True)
    """
    if size < 128:
        raise InputError(f"size {size} is too small for a hand phantom (use 128 or more)")
    rng = np.random.default_rng(seed)
    r_labels, r_hand, r_pose, r_look, r_art = rng.spawn(5)
    labels: Labels = sample_labels(r_labels, sex=sex, chronological_age=chronological_age, stages=stages)
    hand = build_hand(r_hand)
    pose = sample_pose(r_pose, hand, size)
    px = size / 512.0  # lengths given for 512 px images scale with the size

    # soft tissue: silhouette and thickness (thicker in palm and forearm than at the edges)
    silhouette = np.zeros((size, size), np.uint8)
    _fill(silhouette, [pose(t) for t in hand.tissue])
    inside = silhouette >= 128
    dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5) / pose.scale  # mm
    thickness = np.sqrt(np.clip(dist / 9.0, 0, 1)) + 0.35 * np.clip((dist - 9.0) / 25.0, 0, 1)
    thickness = cv2.GaussianBlur(thickness.astype(np.float32), (0, 0), 2.5 * pose.scale)
    thickness *= silhouette.astype(np.float32) / 255.0

    bone, epiphyses = _draw_bones(hand, labels.stages, labels.maturity, pose, size)
    texture = _smooth_field(r_look, size, max(8, size // 10))
    bone *= 1.0 + 0.07 * texture * (bone > 0)

    # exposure: the detector sees dose * exp(-attenuation), displayed inverted (bone bright);
    # the dose varies over the field (heel effect, uneven exposure), never saturating bone
    mu_t = r_look.uniform(0.4, 0.65)
    mu_b = r_look.uniform(1.0, 1.35)
    background = r_look.uniform(0.02, 0.12)
    white = r_look.uniform(0.9, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    g = r_look.uniform(0, 2 * np.pi)
    dose = (1.0 + r_look.uniform(0.0, 0.3) * (np.cos(g) * (xx - 0.5) + np.sin(g) * (yy - 0.5))
            + r_look.uniform(0.0, 0.3) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
            + r_look.uniform(0.0, 0.06) * _smooth_field(r_look, size, 4))
    atten = mu_t * thickness + mu_b * np.maximum(bone, 0.0)
    image = white - (white - background) * dose * np.exp(-atten)
    image = np.clip(image, 0, 1) ** r_look.uniform(0.8, 1.25)

    # nuisances outside the hand
    art = np.zeros((size, size), bool)
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

    # detector blur and noise
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), r_look.uniform(0.5, 1.1) * px)
    sigma = r_look.uniform(0.004, 0.02)
    noise = r_look.standard_normal((size, size), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.6 * px) * 1.8
    image = image + sigma * noise * np.sqrt(np.clip(image, 0.02, 1.0) / 0.4)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    return Phantom(
        image=image,
        mask=inside & ~strips,
        boxes=_roi_boxes(hand, pose, size),
        stages=dict(labels.stages),
        stages_tw3=dict(labels.stages_tw3),
        sex=labels.sex,
        chronological_age=labels.chronological_age,
        bone_age=labels.bone_age,
        maturity_score=labels.maturity_score,
        epiphysis_boxes={k: epiphyses.get(k) for k in ROI_KEYS},
        artefact_mask=art,
    )
