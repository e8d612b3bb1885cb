"""``precise-baa export-labels``: the pipeline's predictions as pre-annotations for labelling tools.

For each radiograph: the 13 ROI boxes (with the graded stage as an attribute) and the palm
mask as a polygon, in the image file's own pixel coordinates (a right hand that the pipeline
mirrored is mirrored back). An annotator corrects them instead of drawing from scratch;
``precise-baa import-labels`` reads the corrected export back (:mod:`.importer`).

Formats (``OUT`` is the output folder):

- ``cvat``: ``OUT/annotations.json``, COCO 1.0 as CVAT imports it (Upload annotations ->
  "COCO 1.0"): 13 ROI categories + ``palm``; boxes with ``attributes: {"stage": N}`` (RUS-CHN,
  or ``stage_tw3`` for a TW3 grader); the palm as a polygon ``segmentation``. Create the CVAT
  task with the labels of ``OUT/cvat-labels.json`` (Raw label editor) and the same image files.
- ``label-studio``: ``OUT/tasks.json``, Label Studio tasks with ``predictions``
  (``rectanglelabels`` per ROI, a per-region ``number`` for its stage, ``polygonlabels`` for
  the palm; coordinates in percent), and ``OUT/label-studio-config.xml``, the labelling
  interface to paste into the project. ``data.image`` is ``--image-url`` + the file's path
  relative to the input folder (default: Label Studio's local-files URL).

``OUT/export.json`` records what was exported (ids, files, sizes, sex and age, the models).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..rois import ROI_KEYS, stage_counts
from ..schemas import Box

log = logging.getLogger(__name__)

FORMATS = ("cvat", "label-studio")
PALM = "palm"
LS_LOCAL_FILES = "/data/local-files/?d="
#: polygon simplification (pixels): small enough that the mask comes back with IoU > 0.99
POLYGON_EPSILON = 0.7


def stage_field(standard: str) -> str:
    """The annotation field / attribute holding a stage in ``standard``."""
    return "stage" if standard == "rus-chn" else "stage_tw3"


def mask_to_polygons(mask: np.ndarray, epsilon: float = POLYGON_EPSILON,
                     min_area: float = 16.0) -> list[list[float]]:
    """Outer outlines of a boolean mask as flat ``[x1, y1, x2, y2, ...]`` lists in continuous
    pixel coordinates (pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``; vertices at centres)."""
    import cv2

    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        c = cv2.approxPolyDP(c, epsilon, True) if epsilon > 0 else c
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(pts) >= 3:
            out.append([round(float(v), 2) for v in pts.reshape(-1)])
    return out


def _unmirror_box(b: Box, width: int) -> Box:
    return Box(x0=width - b.x1, y0=b.y0, x1=width - b.x0, y1=b.y1)


# --------------------------------------------------------------------------------------------
# Per-image predictions
def predict_for_export(pipeline, items, metadata: Mapping[str, Any], *, batch_size: int = 4,
                       progress: bool = True, keep_masks: bool = False) -> list[dict[str, Any]]:
    """Run the pipeline's stages on each input (segment, detect, and grade when the sex is
    known); boxes and masks in the file's coordinates. Never rejects: whatever was found is
    exported, for a person to correct. ``keep_masks``: also return each palm mask (``mask``)."""
    from tqdm.auto import tqdm

    from ..imaging import read_radiograph

    seg, det, grade = (pipeline.stages[s].obj for s in ("segment", "detect", "grade"))
    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(items), batch_size), disable=not progress, unit="batch",
                      desc="predicting"):
        chunk = items[start:start + batch_size]
        rads, rows = [], []
        for it in chunk:
            row: dict[str, Any] = {"id": it.id, "path": it.path}
            try:
                rad = read_radiograph(it.path)
            except InputError as e:
                row["error"] = str(e)
                out.append(row)
                continue
            meta = metadata.get(it.id)
            age = meta.chronological_age if meta and meta.chronological_age is not None \
                else rad.meta.chronological_age_years
            row.update(height=int(rad.pixels.shape[0]), width=int(rad.pixels.shape[1]),
                       sex=meta.sex if meta and meta.sex else rad.meta.sex,
                       chronological_age=age, mirrored=bool(rad.meta.mirrored))
            rads.append(rad)
            rows.append(row)
        if not rads:
            continue
        segs = seg.segment([r.pixels for r in rads])
        alive = [i for i, s in enumerate(segs) if not s.rejected]
        dets = dict(zip(alive, det.detect([segs[i].image for i in alive]), strict=True))
        graded = [i for i in alive if rows[i]["sex"] and any(
            b is not None for b in dets[i].boxes.values())]
        grades = dict(zip(graded, grade.grade([segs[i].image for i in graded],
                                              [dets[i].boxes for i in graded],
                                              [rows[i]["sex"] for i in graded]), strict=True))
        for i, (row, s) in enumerate(zip(rows, segs, strict=True)):
            w = row["width"]
            if s.rejected:
                row["rejected"] = s.rejected
                out.append(row)
                continue
            mask = s.mask[:, ::-1] if row["mirrored"] else s.mask
            row["polygons"] = mask_to_polygons(mask)
            if keep_masks:
                row["mask"] = np.ascontiguousarray(mask)
            d = dets[i]
            boxes = {}
            for k in ROI_KEYS:
                b = d.boxes.get(k)
                if b is None:
                    continue
                b = b.shift(s.crop_box.x0, s.crop_box.y0)
                boxes[k] = _unmirror_box(b, w) if row["mirrored"] else b
            row["boxes"] = boxes
            row["scores"] = {k: float(d.scores[k]) for k in boxes if d.scores.get(k) is not None}
            row["stages"] = grades[i].stages if i in grades else {}
            row["missing"] = [k for k in ROI_KEYS if k not in boxes]
            out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# Writers
def _rel(path: Path, root: Path | None) -> str:
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return path.name


def cvat_coco(rows: list[dict[str, Any]], root: Path | None, standard: str) -> dict[str, Any]:
    """COCO 1.0 as CVAT writes and reads it (attributes per annotation, polygon for the palm)."""
    field = stage_field(standard)
    cats = [{"id": i, "name": k, "supercategory": ""} for i, k in enumerate(ROI_KEYS, 1)]
    palm_id = len(ROI_KEYS) + 1
    cats.append({"id": palm_id, "name": PALM, "supercategory": ""})
    images, anns = [], []
    for row in rows:
        if "width" not in row:
            continue
        iid = len(images) + 1
        images.append({"id": iid, "width": row["width"], "height": row["height"],
                       "file_name": _rel(row["path"], root), "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})
        for c, k in enumerate(ROI_KEYS, 1):
            b = row.get("boxes", {}).get(k)
            if b is None:
                continue
            attrs: dict[str, Any] = {"occluded": False, "rotation": 0.0}
            if k in row.get("stages", {}):
                attrs[field] = int(row["stages"][k])
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c,
                         "segmentation": [], "area": round(b.width * b.height, 4),
                         "bbox": [b.x0, b.y0, b.width, b.height], "iscrowd": 0,
                         "attributes": attrs})
        for poly in row.get("polygons", []):
            xs, ys = poly[0::2], poly[1::2]
            x0, y0 = min(xs), min(ys)
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": palm_id,
                         "segmentation": [poly], "area": _polygon_area(xs, ys),
                         "bbox": [x0, y0, max(xs) - x0, max(ys) - y0], "iscrowd": 0,
                         "attributes": {"occluded": False}})
    return {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"description": "precise-baa pre-annotations", "contributor": "precise-baa",
                     "version": "1.0"},
            "categories": cats, "images": images, "annotations": anns}


def _polygon_area(xs, ys) -> float:
    x, y = np.asarray(xs), np.asarray(ys)
    return round(float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))), 2)


def cvat_labels(standard: str) -> list[dict[str, Any]]:
    """The task's labels for CVAT's Raw label editor (stage: a number attribute per ROI)."""
    field = stage_field(standard)
    out = [{"name": k, "type": "rectangle", "attributes": [
        {"name": field, "mutable": False, "input_type": "number", "default_value": "0",
         "values": ["0", str(n - 1), "1"]}]} for k, n in stage_counts(standard).items()]
    out.append({"name": PALM, "type": "polygon", "attributes": []})
    return out


def label_studio_tasks(rows: list[dict[str, Any]], root: Path | None, standard: str,
                       image_url: str, model_version: str) -> list[dict[str, Any]]:
    """Label Studio tasks with the predictions as ``predictions`` (percent coordinates)."""
    tasks = []
    for row in rows:
        if "width" not in row:
            continue
        w, h = row["width"], row["height"]
        common = {"to_name": "image", "original_width": w, "original_height": h,
                  "image_rotation": 0}
        result: list[dict[str, Any]] = []
        for k in ROI_KEYS:
            b = row.get("boxes", {}).get(k)
            if b is None:
                continue
            geom = {"x": 100.0 * b.x0 / w, "y": 100.0 * b.y0 / h, "width": 100.0 * b.width / w,
                    "height": 100.0 * b.height / h, "rotation": 0}
            result.append({"id": k, "type": "rectanglelabels", "from_name": "roi", **common,
                           "value": {**geom, "rectanglelabels": [k]},
                           **({"score": row["scores"][k]} if k in row.get("scores", {}) else {})})
            if k in row.get("stages", {}):
                result.append({"id": k, "type": "number", "from_name": "stage", **common,
                               "value": {**geom, "number": int(row["stages"][k])}})
        for j, poly in enumerate(row.get("polygons", [])):
            pts = [[100.0 * x / w, 100.0 * y / h] for x, y in zip(poly[0::2], poly[1::2])]
            result.append({"id": f"{PALM}{j}", "type": "polygonlabels", "from_name": PALM,
                           **common, "value": {"points": pts, "polygonlabels": [PALM],
                                               "closed": True}})
        scores = list(row.get("scores", {}).values())
        data = {"image": image_url + _rel(row["path"], root), "id": row["id"]}
        for key in ("sex", "chronological_age"):
            if row.get(key) is not None:
                data[key] = row[key]
        tasks.append({"data": data, "predictions": [{
            "model_version": model_version, "score": float(np.mean(scores)) if scores else 0.0,
            "result": result}]})
    return tasks


def label_studio_config(standard: str) -> str:
    """The labelling interface matching the tasks (rectangles, a per-region stage, the palm)."""
    top = max(stage_counts(standard).values()) - 1
    labels = "\n".join(f'    <Label value="{k}"/>' for k in ROI_KEYS)
    return (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="roi" toName="image">\n{labels}\n  </RectangleLabels>\n'
            f'  <PolygonLabels name="{PALM}" toName="image">\n    <Label value="{PALM}"/>\n'
            f'  </PolygonLabels>\n'
            f'  <Number name="stage" toName="image" perRegion="true" min="0" max="{top}"/>\n'
            f'</View>\n')


# --------------------------------------------------------------------------------------------
def export_labels(input: str | Path, out_dir: str | Path, *, format: str = "cvat",
                  pipeline: str | Path = "stages/pipelines/default.yaml",
                  overrides: Mapping[str, str | None] | None = None, meta: str | Path | None = None,
                  device: str | None = None, batch_size: int = 4,
                  image_url: str = LS_LOCAL_FILES, progress: bool = True) -> dict[str, Any]:
    """Predict labels for the radiographs of ``input`` (folder, list or file) and write them
    in ``format`` to ``out_dir``; returns a summary (counts and the files written)."""
    from .. import __version__
    from ..batch.discovery import discover
    from ..batch.metadata import read_meta
    from ..pipeline import Pipeline

    if format not in FORMATS:
        raise InputError(f"format {format!r}: use one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [it for it in discover(input, exclude=out_dir) if it.error is None]
    if not items:
        raise InputError(f"{input}: no radiograph to export")
    root = Path(input) if Path(input).is_dir() else Path(input).parent
    metadata = read_meta(meta) if meta else {}
    pipe = Pipeline.from_recipe(pipeline, overrides=overrides, device=device)
    standard = pipe.stages["grade"].obj.standard
    rows = predict_for_export(pipe, items, metadata, batch_size=batch_size, progress=progress)
    version = f"precise-baa {__version__} ({pipe.recipe.name if pipe.recipe else 'pipeline'})"
    files = []
    if format == "cvat":
        (out_dir / "annotations.json").write_text(json.dumps(cvat_coco(rows, root, standard), indent=1))
        (out_dir / "cvat-labels.json").write_text(json.dumps(cvat_labels(standard), indent=1))
        files = ["annotations.json", "cvat-labels.json"]
    else:
        tasks = label_studio_tasks(rows, root, standard, image_url, version)
        (out_dir / "tasks.json").write_text(json.dumps(tasks, indent=1))
        (out_dir / "label-studio-config.xml").write_text(label_studio_config(standard))
        files = ["tasks.json", "label-studio-config.xml"]
    summary = {
        "format": format, "standard": standard, "stage_field": stage_field(standard),
        "images_dir": str(root.resolve()), "model_version": version,
        "models": [m.model_dump(mode="json") for m in pipe.models], "files": files,
        "n": len(rows), "with_all_13": sum(1 for r in rows if r.get("boxes") and not r["missing"]),
        "rejected": sum(1 for r in rows if "rejected" in r or "error" in r),
        "images": [{"id": r["id"], "file_name": _rel(r["path"], root),
                    **{k: r[k] for k in ("width", "height", "sex", "chronological_age", "mirrored",
                                         "rejected", "error") if r.get(k) is not None}}
                   for r in rows],
    }
    (out_dir / "export.json").write_text(json.dumps(summary, indent=1))
    return summary
