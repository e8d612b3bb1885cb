"""Labelled datasets: the COCO manifest shared by stages 2-4, and segmentation pairs.

COCO manifest (one per dataset)::

    {"images": [{"id": 1, "file_name": "hand_001.png", "width": W, "height": H,
                 "sex": "F", "chronological_age": 9.5, "bone_age": 10.1,
                 "mask_file": "masks/hand_001.png"  (optional)}, ...],
     "categories": [{"id": 1, "name": "radius"}, ... 13 ROI keys ...],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h],
                      "area": w*h, "iscrowd": 0, "stage": 7, "stage_tw3": 4 (optional)}, ...]}

``file_name`` is relative to the images folder given alongside the manifest (default: the
manifest's ``info.images_dir``, relative to the manifest, else ``images/`` beside it). Every label is
optional: an annotation without ``stage`` is a box only, an image without annotations carries
only its ages (what bone-age-only data sets have). Ages are in years unless the manifest says
otherwise: ``"info": {"bone_age_unit": "months"}`` for the whole file, or ``"bone_age_unit"`` on
an image (``years`` or ``months``); a bone age above 30 with no unit is refused (months, or a
mix of months and years, cannot be told apart from a typo).

Segmentation pairs: ``DIR/images/NAME.png`` with ``DIR/masks/NAME.png`` (any non-zero pixel is
hand), or a COCO manifest whose images carry ``mask_file`` (relative to the manifest's folder).

Detection and grading train on what the segmenter gives them at inference, the hand crop:
:func:`prepared_example` makes it from a record's ground-truth mask.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .rois import ROI_KEYS, num_stages
from .schemas import Box, parse_sex

if TYPE_CHECKING:
    from .handcrop import CleanupParams


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: Path
    width: int
    height: int
    sex: str | None = None
    chronological_age: float | None = None
    bone_age: float | None = None
    mask_path: Path | None = None
    boxes: dict[str, Box] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)  # RUS-CHN
    stages_tw3: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def stages_for(self, standard: str) -> dict[str, int]:
        return self.stages if standard == "rus-chn" else self.stages_tw3


@dataclass(frozen=True)
class CocoManifest:
    path: Path
    images_dir: Path
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[ImageRecord], list[ImageRecord]]:
        return split_records(self.records, val_fraction, seed)


def split_records(records: list, val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/val split by image (never by ROI: crops of one hand stay together)."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(records) * val_fraction))
    if val_fraction > 0 and len(records) >= 2:
        n_val = min(max(1, n_val), len(records) - 1)
    val_idx = set(order[:n_val])
    return (
        [r for i, r in enumerate(records) if i not in val_idx],
        [r for i, r in enumerate(records) if i in val_idx],
    )


def load_coco(path: str | Path, images_dir: str | Path | None = None, require_stages: bool = False) -> CocoManifest:
    """Read and check a COCO manifest; errors name the file and the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: COCO manifest not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: missing list {key!r} (a COCO manifest is expected)")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    if images_dir is None and isinstance(info.get("images_dir"), str):
        images_dir = path.parent / info["images_dir"]  # recorded by import-labels
    images_dir = Path(images_dir) if images_dir is not None else path.parent / "images"
    cats = {}
    for c in data["categories"]:
        if c.get("name") not in ROI_KEYS:
            raise InputError(f"{path}: category {c.get('name')!r} is not an ROI key ({', '.join(ROI_KEYS)})")
        cats[c["id"]] = c["name"]
    boxes: dict[int, dict[str, Box]] = {}
    stages: dict[int, dict[str, int]] = {}
    stages_tw3: dict[int, dict[str, int]] = {}
    image_ids = {im["id"] for im in data["images"]}
    for a in data["annotations"]:
        where = f"{path}: annotation {a.get('id')}"
        if a.get("image_id") not in image_ids:
            raise InputError(f"{where}: image_id {a.get('image_id')} is not in images")
        key = cats.get(a.get("category_id"))
        if key is None:
            raise InputError(f"{where}: unknown category_id {a.get('category_id')}")
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            raise InputError(f"{where}: empty bbox {a['bbox']}")
        if key in boxes.setdefault(a["image_id"], {}):
            raise InputError(f"{where}: second {key} box in image {a['image_id']} (one per ROI)")
        boxes[a["image_id"]][key] = Box(x0=x, y0=y, x1=x + w, y1=y + h)
        for field_name, std, store in (("stage", "rus-chn", stages), ("stage_tw3", "tw3", stages_tw3)):
            if a.get(field_name) is None:
                continue
            s = int(a[field_name])
            if not 0 <= s < num_stages(key, std):
                raise InputError(f"{where}: {field_name} {s} out of range for {key} (0..{num_stages(key, std) - 1})")
            store.setdefault(a["image_id"], {})[key] = s
    default_unit = _age_unit(info.get("bone_age_unit"), f"{path}: info.bone_age_unit")
    records = []
    for im in data["images"]:
        where = f"{path}: image {im.get('id')} ({im.get('file_name')})"
        sex = im.get("sex")
        try:
            sex = parse_sex(sex) if sex is not None else None
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        st = stages.get(im["id"], {})
        if require_stages and len(st) != len(ROI_KEYS):
            missing = [k for k in ROI_KEYS if k not in st]
            raise InputError(f"{where}: no stage for {', '.join(missing)}")
        mask = im.get("mask_file")
        records.append(ImageRecord(
            id=int(im["id"]),
            path=images_dir / im["file_name"],
            width=int(im.get("width", 0)),
            height=int(im.get("height", 0)),
            sex=sex,
            chronological_age=im.get("chronological_age"),
            bone_age=_bone_age_years(im, default_unit, where),
            mask_path=(path.parent / mask) if mask else None,
            boxes=boxes.get(im["id"], {}),
            stages=st,
            stages_tw3=stages_tw3.get(im["id"], {}),
            extra={k: v for k, v in im.items() if k not in {
                "id", "file_name", "width", "height", "sex", "chronological_age", "bone_age", "mask_file",
                "bone_age_unit"}},
        ))
    return CocoManifest(path, images_dir, records)


AGE_UNITS = ("years", "months")


def _age_unit(value: object, where: str) -> str | None:
    if value is None:
        return None
    if value not in AGE_UNITS:
        raise InputError(f"{where}: unit {value!r} is not one of: {', '.join(AGE_UNITS)}")
    return str(value)


def _bone_age_years(im: dict, default_unit: str | None, where: str) -> float | None:
    """An image's ``bone_age`` in years (converted from a declared unit); errors say what to do."""
    value = im.get("bone_age")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: bone_age {value!r} is not a number")
    unit = _age_unit(im.get("bone_age_unit"), f"{where}: bone_age_unit") or default_unit
    years = float(value) / 12.0 if unit == "months" else float(value)
    if unit is None and years > 30:
        raise InputError(
            f"{where}: bone_age {value} has no unit and is above 30, so it looks like months "
            "(or the manifest mixes months and years): declare the unit with \"info\": "
            "{\"bone_age_unit\": \"months\"} in the manifest or \"bone_age_unit\" on each image, "
            "or convert every bone_age to years")
    if not 0 <= years <= 30:
        raise InputError(f"{where}: bone_age {value} {unit or 'years'} is outside 0..30 years; "
                         "check the value and its bone_age_unit (years or months)")
    return years


def segmentation_pairs(data: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs from ``DIR/images`` + ``DIR/masks`` or a COCO manifest with masks."""
    data = Path(data)
    if data.is_file() and data.suffix == ".json":
        manifest = load_coco(data)
        pairs = [(r.path, r.mask_path) for r in manifest.records if r.mask_path is not None]
        if not pairs:
            raise InputError(f"{data}: no image carries a 'mask_file'")
        return pairs
    images, masks = data / "images", data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"{data}: expected folders images/ and masks/ (same file names), "
                         "or a COCO manifest whose images have 'mask_file'")
    pairs = []
    for img in sorted(p for p in images.iterdir() if not p.name.startswith(".")):
        cands = [masks / img.name, masks / (img.stem + ".png")]
        mask = next((m for m in cands if m.is_file()), None)
        if mask is None:
            raise InputError(f"{img}: no mask {masks / (img.stem + '.png')}")
        pairs.append((img, mask))
    if not pairs:
        raise InputError(f"{images}: no images")
    return pairs


def read_mask(path: str | Path) -> np.ndarray:
    """A mask image as ``bool [H, W]``: any non-zero pixel (in any channel) is hand.

    Unlike :func:`precise_baa.imaging.read_radiograph`, an all-zero mask is valid (no hand).
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file not found")
    arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{path}: not a readable image (masks are PNG files, non-zero = hand)")
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return np.asarray(arr) > 0


def read_pair(image: str | Path, mask: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 [H, W], mask bool [H, W])`` of one labelled radiograph, same shape."""
    from .imaging import read_radiograph

    pixels = read_radiograph(image).pixels
    m = read_mask(mask)
    if m.shape != pixels.shape:
        raise InputError(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} px but its image {image} is "
                         f"{pixels.shape[1]}x{pixels.shape[0]} px; they must match")
    return pixels, m


def prepared_example(
    record: ImageRecord, params: CleanupParams | None = None
) -> tuple[np.ndarray, dict[str, Box], Box]:
    """What detection and grading see for ``record``: ``(hand crop, boxes, crop box)``.

    The crop is :func:`precise_baa.handcrop.hand_crop` of the image with its
    ground-truth mask, exactly as the segmenter's output at inference; the boxes are moved into
    crop coordinates and clipped to the crop (a box left empty by clipping is dropped). The
    crop box is in original image pixels.
    """
    from .handcrop import CleanupParams, hand_crop

    if record.mask_path is None:
        raise InputError(f"{record.path}: no 'mask_file' for this image in the manifest; the "
                         "hand crop that detection and grading train on needs the palm mask")
    image, mask = read_pair(record.path, record.mask_path)
    if not mask.any():
        raise InputError(f"{record.mask_path}: empty mask (no non-zero pixel); cannot crop the hand")
    crop, crop_box = hand_crop(image, mask, params or CleanupParams())
    h, w = crop.shape
    boxes: dict[str, Box] = {}
    for key, box in record.boxes.items():
        b = box.shift(-crop_box.x0, -crop_box.y0)
        b = Box(x0=min(max(b.x0, 0.0), w), y0=min(max(b.y0, 0.0), h),
                x1=min(max(b.x1, 0.0), w), y1=min(max(b.y1, 0.0), h))
        if b.width > 0 and b.height > 0:
            boxes[key] = b
    return crop, boxes, crop_box
