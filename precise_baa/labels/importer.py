"""``precise-baa import-labels``: a corrected CVAT or Label Studio export -> the project's COCO
manifest (:mod:`precise_baa.data`), ready for ``precise-baa train detect|grade``.

- ``cvat``: CVAT's "COCO 1.0" export, the ``.zip`` it downloads or the JSON inside it
  (``annotations/instances_default.json``); or the ``annotations.json`` that
  ``export-labels`` wrote. Boxes of the 13 ROI labels with a ``stage`` (or ``stage_tw3``)
  attribute; ``palm`` polygons become the image's mask.
- ``label-studio``: Label Studio's JSON export (a list of tasks). Each task's latest submitted
  annotation is read (``rectanglelabels`` from ``roi``, the per-region ``number`` from
  ``stage``, ``polygonlabels`` from ``palm``); tasks nobody submitted are left out unless
  ``accept_predictions`` takes their predictions as they are.

Masks are written to ``masks/`` beside the manifest. Images are named relative to the folder
the export was made from (``export.json`` beside the export says which; ``images_dir``
overrides); the manifest records it as ``info.images_dir``. Sex and chronological age come from
``meta`` (CSV ``id,sex[,chronological_age]``), the Label Studio task's data, or ``export.json``.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from ..errors import InputError
from ..paths import atomic_write
from ..rois import ROI_KEYS, num_stages
from ..schemas import Box
from .export import FORMATS, PALM, stage_field

SIDECAR = "export.json"
#: the largest annotation file read from a CVAT zip (bytes)
MAX_JSON = 512 * 1024 * 1024


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise flat ``[x1, y1, ...]`` polygons (continuous pixel coordinates, as
    :func:`precise_baa.labels.export.mask_to_polygons` writes them) into one boolean mask."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    shift = 4
    for poly in polygons:
        pts = (np.asarray(poly, np.float64).reshape(-1, 2) - 0.5) * (1 << shift)
        if len(pts) >= 3:
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8,
                         shift=shift)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# Reading the exports: a list of images, each {file_name, width, height, boxes, stages, polygons, ...}
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: export file not found")
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".json") and not n.endswith("/")]
            pick = [n for n in names if n.endswith("instances_default.json")] or \
                [n for n in names if n.startswith("annotations/")] or names
            if not pick:
                raise InputError(f"{path}: no JSON annotation file in the zip (expected "
                                 "annotations/instances_default.json, CVAT's COCO 1.0 export)")
            info = z.getinfo(pick[0])
            if info.file_size > MAX_JSON:
                raise InputError(f"{path}: {pick[0]} is larger than {MAX_JSON >> 20} MiB")
            text = z.read(info).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def _stage_value(value: object, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)  # CVAT writes number attributes as strings
    except (TypeError, ValueError):
        raise InputError(f"{where}: stage {value!r} is not a whole number") from None
    if f != int(f):
        raise InputError(f"{where}: stage {value!r} is not a whole number")
    return int(f)


def _add_box(img: dict, key: str, box: Box, stage: int | None, where: str) -> None:
    if key in img["boxes"]:
        raise InputError(f"{where}: a second {key} box in {img['file_name']}; keep one per ROI")
    if box.width <= 0 or box.height <= 0:
        raise InputError(f"{where}: empty {key} box in {img['file_name']}")
    img["boxes"][key] = box
    if stage is not None:
        img["stages"][key] = stage


def read_cvat(path: Path, standard: str) -> list[dict[str, Any]]:
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise InputError(f"{path}: not a COCO file (images, annotations, categories); export "
                         "the CVAT task as \"COCO 1.0\"")
    cats = {c["id"]: c.get("name") for c in data["categories"]}
    unknown = sorted({n for n in cats.values() if n not in ROI_KEYS and n != PALM})
    used = {cats.get(a.get("category_id")) for a in data["annotations"]}
    if set(unknown) & used:
        raise InputError(f"{path}: labels {', '.join(sorted(set(unknown) & used))} are not ROI "
                         f"keys ({', '.join(ROI_KEYS)}) or {PALM!r}")
    field = stage_field(standard)
    images = {im["id"]: {"file_name": im["file_name"], "width": int(im["width"]),
                         "height": int(im["height"]), "boxes": {}, "stages": {}, "polygons": []}
              for im in data["images"]}
    for a in data["annotations"]:
        img = images.get(a.get("image_id"))
        where = f"{path}: annotation {a.get('id')}"
        if img is None:
            raise InputError(f"{where}: image_id {a.get('image_id')} is not in images")
        name = cats.get(a.get("category_id"))
        if name == PALM:
            seg = a.get("segmentation")
            if not isinstance(seg, list) or not seg:
                raise InputError(f"{where}: a {PALM} annotation without a polygon (RLE masks are "
                                 "not read; draw the palm as a polygon)")
            img["polygons"] += [list(map(float, p)) for p in seg]
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        attrs = a.get("attributes") or {}
        _add_box(img, name, Box(x0=x, y0=y, x1=x + w, y1=y + h),
                 _stage_value(attrs.get(field), where), where)
    return list(images.values())


def _ls_file_name(url: str) -> str:
    if "?d=" in url:
        return unquote(url.split("?d=", 1)[1])
    return unquote(Path(urlparse(url).path).name)


def read_label_studio(path: Path, standard: str, accept_predictions: bool
                      ) -> tuple[list[dict[str, Any]], int]:
    """Images from a Label Studio JSON export, and the number of tasks left out (unreviewed)."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: not a Label Studio JSON export (a list of tasks); export the "
                         "project as JSON")
    images, unreviewed = [], 0
    for t, task in enumerate(data):
        where = f"{path}: task {task.get('id', t + 1)}"
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if done:
            results = max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "",
                                               a.get("id") or 0)).get("result") or []
        elif accept_predictions and task.get("predictions"):
            results = task["predictions"][-1].get("result") or []
        else:
            unreviewed += 1
            continue
        url = str((task.get("data") or {}).get("image", ""))
        img: dict[str, Any] = {"file_name": _ls_file_name(url), "width": None, "height": None,
                               "boxes": {}, "stages": {}, "polygons": [],
                               "data": task.get("data") or {}}
        regions: dict[str, dict] = {}
        stages: dict[str, int | None] = {}
        for r in results:
            w, h = r.get("original_width"), r.get("original_height")
            if w and h:
                img["width"], img["height"] = int(w), int(h)
            v = r.get("value") or {}
            if r.get("type") == "rectanglelabels":
                regions[r.get("id")] = r
            elif r.get("type") == "number":
                stages[r.get("id")] = _stage_value(v.get("number"), where)
            elif r.get("type") == "choices" and v.get("choices"):
                stages[r.get("id")] = _stage_value(v["choices"][0], where)
            elif r.get("type") == "polygonlabels":
                if not img["width"]:
                    raise InputError(f"{where}: a polygon without original_width/height")
                pts = v.get("points") or []
                img["polygons"].append([c for x, y in pts for c in
                                        (x * img["width"] / 100.0, y * img["height"] / 100.0)])
        for rid, r in regions.items():
            v = r["value"]
            labels = v.get("rectanglelabels") or []
            if len(labels) != 1 or labels[0] not in ROI_KEYS:
                raise InputError(f"{where}: rectangle labelled {labels} is not one ROI key "
                                 f"({', '.join(ROI_KEYS)})")
            if v.get("rotation"):
                raise InputError(f"{where}: {labels[0]} box is rotated; ROI boxes are upright")
            W, H = r.get("original_width") or img["width"], r.get("original_height") or img["height"]
            x, y = v["x"] * W / 100.0, v["y"] * H / 100.0
            box = Box(x0=x, y0=y, x1=x + v["width"] * W / 100.0, y1=y + v["height"] * H / 100.0)
            _add_box(img, labels[0], box, stages.get(rid), where)
        images.append(img)
    return images, unreviewed


# --------------------------------------------------------------------------------------------
def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).with_suffix("").as_posix())[:120] or "image"


def import_labels(export: str | Path, out: str | Path, *, format: str,
                  images_dir: str | Path | None = None, meta: str | Path | None = None,
                  standard: str | None = None, accept_predictions: bool = False) -> dict[str, Any]:
    """Write the project's COCO manifest ``out`` (and ``masks/`` beside it) from a labelling
    tool's export; returns counts. Stages are read as ``standard`` (default: what the export's
    grader used, else RUS-CHN) and checked against its ranges."""
    from ..batch.metadata import read_meta
    from ..imaging import save_png

    if format not in FORMATS:
        raise InputError(f"format {format!r}: use one of {', '.join(FORMATS)}")
    export, out = Path(export), Path(out)
    sidecar_path = export.parent / SIDECAR
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    standard = standard or sidecar.get("standard") or "rus-chn"
    unreviewed = 0
    if format == "cvat":
        images = read_cvat(export, standard)
    else:
        images, unreviewed = read_label_studio(export, standard, accept_predictions)
    if images_dir is None and sidecar.get("images_dir"):
        images_dir = sidecar["images_dir"]
    known = {im["file_name"]: im for im in sidecar.get("images", [])}
    metadata = read_meta(meta) if meta else {}
    field = stage_field(standard)
    out.parent.mkdir(parents=True, exist_ok=True)
    masks_dir = out.parent / "masks"
    coco_images, anns = [], []
    counts = {"images": 0, "boxes": 0, "stages": 0, "masks": 0, "empty": 0,
              "unreviewed": unreviewed}
    for img in images:
        name = img["file_name"]
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{export}: image file name {name!r} must be relative to the images "
                             "folder (no absolute path, no ..)")
        if not img["boxes"] and not img["polygons"]:
            counts["empty"] += 1
            continue
        side = known.get(name, {})
        w, h = img.get("width") or side.get("width"), img.get("height") or side.get("height")
        if not w or not h:
            raise InputError(f"{export}: no image size for {name}; keep {SIDECAR} beside the export")
        mirrored = bool(side.get("mirrored"))
        iid = len(coco_images) + 1
        rid = side.get("id") or Path(name).with_suffix("").as_posix()
        m = metadata.get(rid)
        data = img.get("data", {})
        sex = (m.sex if m else None) or data.get("sex") or side.get("sex")
        age = (m.chronological_age if m else None) or data.get("chronological_age") \
            or side.get("chronological_age")
        entry: dict[str, Any] = {"id": iid, "file_name": name, "width": int(w), "height": int(h)}
        if sex:
            entry["sex"] = sex
        if age is not None:
            entry["chronological_age"] = age
        if img["polygons"]:
            mask = polygons_to_mask(img["polygons"], int(h), int(w))
            if mirrored:
                mask = mask[:, ::-1]
            mask_path = masks_dir / f"{_safe_stem(name)}.png"
            save_png(mask_path, mask.astype(np.float32), bits=8)
            entry["mask_file"] = os.path.relpath(mask_path, out.parent).replace(os.sep, "/")
            counts["masks"] += 1
        coco_images.append(entry)
        for c, key in enumerate(ROI_KEYS, 1):
            b = img["boxes"].get(key)
            if b is None:
                continue
            if mirrored:  # the pipeline (and training) read this image mirrored
                b = Box(x0=int(w) - b.x1, y0=b.y0, x1=int(w) - b.x0, y1=b.y1)
            a = {"id": len(anns) + 1, "image_id": iid, "category_id": c,
                 "bbox": [b.x0, b.y0, b.width, b.height], "area": b.width * b.height,
                 "iscrowd": 0}
            s = img["stages"].get(key)
            if s is not None:
                if not 0 <= s < num_stages(key, standard):
                    raise InputError(f"{export}: {name}: {key} {field} {s} out of range "
                                     f"0..{num_stages(key, standard) - 1} ({standard})")
                a[field] = s
                counts["stages"] += 1
            anns.append(a)
            counts["boxes"] += 1
        counts["images"] += 1
    info: dict[str, Any] = {"description": f"imported from a {format} export ({export.name})"}
    if images_dir is not None:
        info["images_dir"] = os.path.relpath(Path(images_dir).resolve(), out.parent.resolve()) \
            .replace(os.sep, "/")
    manifest = {"info": info, "images": coco_images, "annotations": anns,
                "categories": [{"id": i, "name": k} for i, k in enumerate(ROI_KEYS, 1)]}
    atomic_write(out, json.dumps(manifest, indent=1))
    return {**counts, "manifest": str(out), "standard": standard}
