"""The labelling round trip: pipeline predictions -> CVAT / Label Studio pre-annotations ->
(corrected) export -> the project's COCO manifest, without loss."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from precise_baa.data import load_coco, read_mask
from precise_baa.errors import InputError
from precise_baa.labels.export import (
    cvat_coco,
    cvat_labels,
    label_studio_config,
    label_studio_tasks,
    mask_to_polygons,
    predict_for_export,
)
from precise_baa.labels.importer import import_labels, polygons_to_mask
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_mask_polygon_round_trip():
    import cv2

    mask = np.zeros((300, 240), np.uint8)
    cv2.ellipse(mask, (120, 170), (80, 110), 15, 0, 360, 1, -1)
    cv2.rectangle(mask, (100, 20), (125, 90), 1, -1)  # a finger
    cv2.circle(mask, (20, 20), 6, 1, -1)  # a second, small component
    polys = mask_to_polygons(mask.astype(bool))
    assert len(polys) == 2
    back = polygons_to_mask(polys, 300, 240)
    assert _iou(back, mask.astype(bool)) > 0.99
    # vertices are in continuous pixel coordinates: a 1-px square's centre at +0.5
    square = np.zeros((10, 10), bool)
    square[2:6, 3:8] = True
    assert np.array_equal(polygons_to_mask(mask_to_polygons(square, min_area=0), 10, 10), square)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three phantoms, the bundled pipeline's predictions and both exports written from them."""
    pytest.importorskip("mmdet")
    from precise_baa.batch.discovery import discover
    from precise_baa.batch.metadata import read_meta
    from precise_baa.labels.export import export_labels
    from precise_baa.pipeline import Pipeline
    from precise_baa.synth import generate_dataset

    root = tmp_path_factory.mktemp("roundtrip")
    manifest = generate_dataset(root / "ph", 3, seed=21, size=512, progress=False)
    meta = root / "meta.csv"
    with meta.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sex", "chronological_age"])
        for im in json.loads(manifest.read_text())["images"]:
            w.writerow([im["file_name"][:-4], im["sex"], im["chronological_age"]])
    images = root / "ph" / "images"
    pipe = Pipeline.from_recipe("stages/pipelines/default.yaml", device="cpu")
    rows = predict_for_export(pipe, discover(images), read_meta(meta), progress=False,
                              keep_masks=True)
    out = {}
    for fmt in ("cvat", "label-studio"):
        export_labels(images, root / fmt, format=fmt, meta=meta, device="cpu", progress=False)
        out[fmt] = root / fmt
    return SimpleNamespace(root=root, images=images, meta=meta, rows=rows, out=out,
                           manifest=manifest)


def _check_lossless(manifest: Path, rows: list[dict], images: Path) -> None:
    m = load_coco(manifest)
    assert m.images_dir.resolve() == images.resolve()
    by_name = {r.path.name: r for r in m.records}
    assert len(by_name) == len(rows)
    for row in rows:
        rec = by_name[row["path"].name]
        assert rec.path.is_file() and (rec.width, rec.height) == (row["width"], row["height"])
        assert rec.sex == row["sex"] and rec.chronological_age == pytest.approx(row["chronological_age"])
        assert set(rec.boxes) == set(row["boxes"])
        for k, b in row["boxes"].items():
            np.testing.assert_allclose(rec.boxes[k].as_list(), b.as_list(), atol=0.01)
        assert rec.stages == row["stages"] and len(rec.stages) == 13
        assert _iou(read_mask(rec.mask_path), row["mask"]) > 0.99


def test_the_predictions_are_complete(exported):
    for row in exported.rows:  # the bundled pipeline finds and grades all 13 on phantoms
        assert len(row["boxes"]) == 13 and len(row["stages"]) == 13 and row["polygons"]


def test_cvat_round_trip_is_lossless(exported, tmp_path, cli):
    ann = exported.out["cvat"] / "annotations.json"
    data = json.loads(ann.read_text())
    assert {c["name"] for c in data["categories"]} == set(ROI_KEYS) | {"palm"}
    box = next(a for a in data["annotations"] if a["segmentation"] == [])
    assert set(box["attributes"]) == {"occluded", "rotation", "stage"}
    labels = json.loads((exported.out["cvat"] / "cvat-labels.json").read_text())
    assert labels[0]["attributes"][0]["values"] == ["0", "14", "1"]  # radius: 15 stages
    r = cli("import-labels", str(ann), "--format", "cvat", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "3 images (39 boxes, 39 with a stage, 3 masks" in r.stdout
    _check_lossless(tmp_path / "m.json", exported.rows, exported.images)
    # CVAT's download: a zip holding annotations/instances_default.json, stages as strings
    for a in data["annotations"]:
        if "stage" in a["attributes"]:
            a["attributes"]["stage"] = str(a["attributes"]["stage"])
    z = tmp_path / "task.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("annotations/instances_default.json", json.dumps(data))
    (tmp_path / "export.json").write_text((exported.out["cvat"] / "export.json").read_text())
    import_labels(z, tmp_path / "z" / "m.json", format="cvat")
    _check_lossless(tmp_path / "z" / "m.json", exported.rows, exported.images)


def test_label_studio_round_trip_with_a_correction(exported, tmp_path):
    tasks_file = exported.out["label-studio"] / "tasks.json"
    tasks = json.loads(tasks_file.read_text())
    cfg = (exported.out["label-studio"] / "label-studio-config.xml").read_text()
    assert '<Number name="stage" toName="image" perRegion="true" min="0" max="14"/>' in cfg
    assert tasks[0]["data"]["image"].startswith("/data/local-files/?d=phantom_")
    types = {r["type"] for r in tasks[0]["predictions"][0]["result"]}
    assert types == {"rectanglelabels", "number", "polygonlabels"}
    # unreviewed tasks are left out unless their predictions are accepted
    res = import_labels(tasks_file, tmp_path / "none.json", format="label-studio")
    assert res["images"] == 0 and res["unreviewed"] == 3
    import_labels(tasks_file, tmp_path / "all" / "m.json", format="label-studio",
                  accept_predictions=True)
    _check_lossless(tmp_path / "all" / "m.json", exported.rows, exported.images)
    # an annotator submits task 0 with the radius moved 5 px right and its stage changed
    result = json.loads(json.dumps(tasks[0]["predictions"][0]["result"]))
    w = result[0]["original_width"]
    for r in result:
        if r["id"] == "radius":
            r["value"]["x"] += 100.0 * 5 / w
            if r["type"] == "number":
                r["value"]["number"] = 3
    tasks[0]["annotations"] = [{"id": 7, "result": result, "was_cancelled": False,
                                "updated_at": "2026-01-01T00:00:00Z"}]
    edited = tmp_path / "ls.json"
    edited.write_text(json.dumps(tasks))
    (tmp_path / "export.json").write_text((exported.out["label-studio"] / "export.json").read_text())
    res = import_labels(edited, tmp_path / "one" / "m.json", format="label-studio")
    assert res["images"] == 1 and res["unreviewed"] == 2
    rec = load_coco(tmp_path / "one" / "m.json").records[0]
    row = next(r for r in exported.rows if r["path"].name == rec.path.name)
    assert rec.boxes["radius"].x0 == pytest.approx(row["boxes"]["radius"].x0 + 5, abs=0.01)
    assert rec.stages["radius"] == 3 and rec.stages["ulna"] == row["stages"]["ulna"]


def _rows(boxes: dict[str, Box], stages=None, width=200, height=300) -> list[dict]:
    return [{"id": "a", "path": Path("/data/a.png"), "width": width, "height": height,
             "boxes": boxes, "stages": stages or {}, "scores": {k: 0.9 for k in boxes},
             "polygons": [], "missing": [k for k in ROI_KEYS if k not in boxes]}]


def test_import_refuses_what_it_cannot_read(tmp_path):
    box = Box(x0=10, y0=20, x1=40, y1=60)
    coco = cvat_coco(_rows({"radius": box}, {"radius": 20}), Path("/data"), "rus-chn")
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="radius stage 20 out of range 0..14"):
        import_labels(tmp_path / "a.json", tmp_path / "o.json", format="cvat")
    coco = cvat_coco(_rows({"radius": box}), Path("/data"), "rus-chn")
    coco["annotations"].append({**coco["annotations"][0], "id": 2})
    (tmp_path / "b.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="a second radius box in a.png; keep one per ROI"):
        import_labels(tmp_path / "b.json", tmp_path / "o.json", format="cvat")
    coco["categories"].append({"id": 99, "name": "carpal"})
    coco["annotations"] = [{**coco["annotations"][0], "category_id": 99}]
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="carpal are not ROI keys"):
        import_labels(tmp_path / "c.json", tmp_path / "o.json", format="cvat")
    coco = cvat_coco(_rows({"radius": box}), Path("/data"), "rus-chn")
    coco["images"][0]["file_name"] = "../../etc/a.png"
    (tmp_path / "d.json").write_text(json.dumps(coco))
    with pytest.raises(InputError, match="must be relative to the images folder"):
        import_labels(tmp_path / "d.json", tmp_path / "o.json", format="cvat")
    (tmp_path / "e.json").write_text(json.dumps({"tasks": []}))
    with pytest.raises(InputError, match="not a Label Studio JSON export"):
        import_labels(tmp_path / "e.json", tmp_path / "o.json", format="label-studio")


def test_tw3_stages_and_mirrored_images(tmp_path):
    box = Box(x0=10, y0=20, x1=40, y1=60)
    tasks = label_studio_tasks(_rows({"radius": box}, {"radius": 8}), Path("/data"), "tw3",
                               "http://host/img/", "test")
    assert tasks[0]["data"]["image"] == "http://host/img/a.png"
    tasks[0]["annotations"] = [{"result": tasks[0]["predictions"][0]["result"]}]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    # export.json says the pipeline read this image mirrored (a right hand)
    (tmp_path / "export.json").write_text(json.dumps({
        "standard": "tw3", "images": [{"id": "a", "file_name": "a.png", "width": 200,
                                       "height": 300, "mirrored": True}]}))
    import_labels(tmp_path / "ls.json", tmp_path / "m.json", format="label-studio")
    data = json.loads((tmp_path / "m.json").read_text())
    a = data["annotations"][0]
    assert a["stage_tw3"] == 8 and "stage" not in a
    np.testing.assert_allclose(a["bbox"], [200 - 40, 20, 30, 40])
    assert cvat_labels("tw3")[0]["attributes"][0]["name"] == "stage_tw3"
    assert 'max="8"' in label_studio_config("tw3")
