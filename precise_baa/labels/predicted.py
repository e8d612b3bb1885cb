"""Masks and ROI boxes from trained stages, for radiographs whose labels lack them.

Bone-age data sets (RSNA, the Digital Hand Atlas, hospital archives) have no palm masks and no
ROI boxes; unlabelled radiographs have nothing at all. :func:`predict_masks_and_boxes` runs a
segmenter (when an image has no mask) and a detector on the hand crop, exactly as the pipeline
does, and returns per image the mask (written as a PNG) and the boxes in original image
coordinates with their scores. Results are cached in ``out_dir/predictions.json`` (keyed by the
image's path, size and modification time and by the stages' weight hashes), so a rerun, or a
second training on the same data, does not run the stages again.

This module reaches the stages through :func:`precise_baa.registry.load_stage` only, so stage
training code (``grade/train.py``, ``detect/train.py``) may use it.

>>> preds = predict_masks_and_boxes(paths, "out/predicted", detect="weights/detect-detectors-lite")  # doctest: +SKIP
>>> preds[0].boxes["radius"], preds[0].scores["radius"], preds[0].mask                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import ImageRecord, read_mask
from ..errors import InputError
from ..paths import atomic_write
from ..rois import ROI_KEYS
from ..schemas import Box

log = logging.getLogger(__name__)

#: the bundled segmenter, used when an image needs a hand crop and none is named
DEFAULT_SEGMENTER = "weights/segment-unet-lite"
CACHE = "predictions.json"


@dataclass(frozen=True)
class Predicted:
    """What the stages found in one radiograph (boxes in original image pixels)."""

    mask: Path | None  # the palm mask used (given, or written by the segmenter); None if rejected
    boxes: dict[str, Box] = field(default_factory=dict)  # found ROIs only
    scores: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # detector flag codes, e.g. roi_missing
    rejected: str | None = None  # why there is no hand crop (unreadable, no plausible hand)

    @property
    def complete(self) -> bool:
        """All 13 ROIs found."""
        return self.mask is not None and all(k in self.boxes for k in ROI_KEYS)

    def min_score(self) -> float:
        return min(self.scores.values()) if self.scores else 0.0


def _stage_id(ref: str | Path | None) -> str | None:
    """What identifies a stage's output in the cache: its weights' sha256 (or the path)."""
    if ref is None:
        return None
    from ..weights import read_card

    return read_card(ref).get("sha256") or str(ref)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _mask_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:80] or "image"
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{stem}-{digest}.png"


def _to_json(p: Predicted, out_dir: Path) -> dict:
    return {"mask": os.path.relpath(p.mask, out_dir) if p.mask else None,
            "boxes": {k: b.as_list() for k, b in p.boxes.items()},
            "scores": p.scores, "flags": p.flags, "rejected": p.rejected}


def _from_json(d: dict, out_dir: Path) -> Predicted:
    return Predicted(mask=(out_dir / d["mask"]) if d.get("mask") else None,
                     boxes={k: Box.from_xyxy(v) for k, v in d.get("boxes", {}).items()},
                     scores={k: float(v) for k, v in d.get("scores", {}).items()},
                     flags=list(d.get("flags", [])), rejected=d.get("rejected"))


def predict_masks_and_boxes(
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    detect: str | Path | None,
    segment: str | Path | None = None,
    masks: Sequence[str | Path | None] | None = None,
    device: str | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> list[Predicted]:
    """Run the segmenter (for images without a mask in ``masks``) and the detector ``detect``
    (a weights folder; None: masks only) on ``images``; one :class:`Predicted` per image.

    Masks the segmenter makes are written to ``out_dir/masks/``. ``segment`` defaults to the
    bundled segmenter when a mask is needed. An unreadable image or one without a plausible hand
    is not an error: its result says why in ``rejected``.
    """
    from ..handcrop import CleanupParams, hand_crop
    from ..imaging import read_radiograph, save_png
    from ..registry import load_stage

    out_dir = Path(out_dir)
    paths = [Path(p) for p in images]
    given = [Path(m) if m is not None else None for m in (masks or [None] * len(paths))]
    if len(given) != len(paths):
        raise ValueError(f"{len(paths)} images but {len(given)} masks")
    need_seg = any(m is None for m in given)
    if need_seg and segment is None:
        segment = DEFAULT_SEGMENTER
    key = {"segment": _stage_id(segment if need_seg else None), "detect": _stage_id(detect)}

    cache_file = out_dir / CACHE
    cached: dict[str, dict] = {}
    if cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            if data.get("stages") == key:
                cached = data.get("images", {})
        except json.JSONDecodeError:
            log.warning("%s: unreadable cache; predicting again", cache_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Predicted | None] = [None] * len(paths)
    entries: dict[str, dict] = {}
    todo = []
    for i, (p, m) in enumerate(zip(paths, given)):
        if not p.is_file():
            results[i] = Predicted(mask=None, rejected=f"{p}: image not found")
            continue
        k = f"{p.resolve()}|{m.resolve() if m else ''}"
        c = cached.get(k)
        if c is not None and c.get("stamp") == _stamp(p):
            pred = _from_json(c, out_dir)
            if pred.mask is None or pred.mask.is_file():
                results[i], entries[k] = pred, c
                continue
        todo.append((i, k))

    def save() -> None:
        atomic_write(cache_file, json.dumps({"stages": key, "images": entries}))

    from tqdm.auto import tqdm

    segmenter = load_stage("segment", weights=segment, device=device) \
        if need_seg and todo else None
    detector = load_stage("detect", weights=detect, device=device) \
        if detect is not None and todo else None
    params = CleanupParams()
    bar = tqdm(total=len(todo), disable=not progress or not todo, unit="img", desc="predicting labels")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        crops, boxes_at, keep = [], [], []
        for i, _ in chunk:
            p, m = paths[i], given[i]
            try:
                pixels = read_radiograph(p).pixels
                if m is not None:
                    mask = read_mask(m)
                    if mask.shape != pixels.shape:
                        raise InputError(f"{m}: mask size differs from its image {p}")
                    crop, crop_box = hand_crop(pixels, mask, params)
                    mask_path = m
                else:
                    seg = segmenter.segment([pixels])[0]  # type: ignore[union-attr]
                    if seg.rejected:
                        results[i] = Predicted(mask=None, rejected=f"{p.name}: {seg.rejected}")
                        continue
                    mask_path = out_dir / "masks" / _mask_name(p)
                    save_png(mask_path, seg.mask.astype(np.float32), bits=8)
                    crop, crop_box = seg.image, seg.crop_box
            except InputError as e:
                results[i] = Predicted(mask=None, rejected=str(e))
                continue
            results[i] = Predicted(mask=mask_path)
            crops.append(crop)
            boxes_at.append(crop_box)
            keep.append(i)
        if detector is not None and crops:
            for i, d, cb in zip(keep, detector.detect(crops), boxes_at, strict=True):
                found = {k: b.shift(cb.x0, cb.y0) for k, b in d.boxes.items() if b is not None}
                results[i] = dataclasses.replace(
                    results[i], boxes=found,  # type: ignore[arg-type]
                    scores={k: float(d.scores[k]) for k in found if d.scores.get(k) is not None},
                    flags=sorted({f.code for f in d.flags}))
        for i, k in chunk:
            entries[k] = {**_to_json(results[i], out_dir), "stamp": _stamp(paths[i])}  # type: ignore[arg-type]
        bar.update(len(chunk))
        if (start // batch_size) % 16 == 15:
            save()
    bar.close()
    save()
    return results  # type: ignore[return-value]


def with_predicted_labels(
    records: Sequence[ImageRecord],
    out_dir: str | Path,
    *,
    detect: str | Path | None,
    segment: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[list[ImageRecord], dict[str, int]]:
    """``records`` completed where they lack labels: a mask from the segmenter where there is
    no ``mask_file`` (when ``segment`` or ``detect`` is given), boxes from the detector where
    there are no boxes (when ``detect`` is given). Boxes and masks the manifest has are kept.

    Returns the records that have a mask afterwards and counts of what was done or skipped.
    """
    needs = [r for r in records
             if (r.mask_path is None) or (detect is not None and not r.boxes)]
    counts = {"masks_predicted": 0, "boxes_predicted": 0, "no_hand": 0}
    if not needs:
        return list(records), counts
    preds = predict_masks_and_boxes(
        [r.path for r in needs], out_dir, detect=detect if any(not r.boxes for r in needs) else None,
        segment=segment, masks=[r.mask_path for r in needs], device=device, progress=progress)
    by_id = {id(r): p for r, p in zip(needs, preds, strict=True)}
    out = []
    for r in records:
        p = by_id.get(id(r))
        if p is None:
            out.append(r)
            continue
        if p.mask is None:
            counts["no_hand"] += 1
            log.warning("%s", p.rejected)
            continue
        changes: dict = {}
        if r.mask_path is None:
            changes["mask_path"] = p.mask
            counts["masks_predicted"] += 1
        if not r.boxes and p.boxes:
            changes["boxes"] = dict(p.boxes)
            changes["extra"] = {**r.extra, "predicted_boxes": True}
            counts["boxes_predicted"] += 1
        out.append(dataclasses.replace(r, **changes))
    return out, counts


def list_images(folder: str | Path) -> list[Path]:
    """Radiograph files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    from ..imaging import is_candidate

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of radiographs")
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if is_candidate(Path(dirpath) / f)]
    if not out:
        raise InputError(f"{folder}: no radiographs (PNG, JPEG, TIFF, BMP or DICOM) found")
    return out
