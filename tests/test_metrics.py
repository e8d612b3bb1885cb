"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from precise_baa.evaluation import age_metrics, detection_ap, mask_metrics, stage_accuracy
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box


def test_age_metrics_by_group_and_sex():
    ref = [2.0, 5.0, 9.0, 13.0, 17.0, 9.5]
    pred = [3.0, 5.5, 9.0, 11.0, 17.0, 10.0]
    m = age_metrics(pred, ref, ["M", "F", "M", "F", "M", "F"])
    assert m["all"]["n"] == 6
    assert m["all"]["mae"] == pytest.approx((1 + 0.5 + 0 + 2 + 0 + 0.5) / 6)
    assert m["all"]["rmse"] == pytest.approx(np.sqrt((1 + 0.25 + 0 + 4 + 0 + 0.25) / 6))
    assert m["all"]["within_1y"] == pytest.approx(5 / 6)
    assert m["by_age_group"]["8-11"]["n"] == 2 and m["by_age_group"]["8-11"]["mae"] == pytest.approx(0.25)
    assert m["by_age_group"]["12-15"]["bias"] == pytest.approx(-2.0)
    assert m["by_sex"]["F"]["within_1y"] == pytest.approx(2 / 3)
    assert age_metrics([], [], [])["all"]["mae"] is None


def test_stage_accuracy():
    acc = stage_accuracy({"radius": [3, 4, 6], "ulna": [1]}, {"radius": [3, 5, 8], "ulna": [1]})
    assert acc["per_roi"]["radius"] == {"n": 3, "exact": pytest.approx(1 / 3), "within_one": pytest.approx(2 / 3)}
    assert acc["mean_exact"] == pytest.approx((1 / 3 + 1) / 2)


def test_detection_ap_perfect_shifted_and_missing():
    boxes = {k: Box(x0=10 * i, y0=5, x1=10 * i + 8, y1=13) for i, k in enumerate(ROI_KEYS)}
    perfect = detection_ap([boxes, boxes], [{k: (b, 0.9) for k, b in boxes.items()}] * 2)
    assert perfect["map50"] == pytest.approx(1.0) and perfect["map"] == pytest.approx(1.0)
    assert perfect["all_13_found"] == 1.0
    # radius shifted by half its width (IoU 1/3) in both images, ulna missing in one
    dets = [{k: (b, 0.9) for k, b in boxes.items()} for _ in range(2)]
    for d in dets:
        d["radius"] = (boxes["radius"].shift(4, 0), 0.9)
    del dets[1]["ulna"]
    r = detection_ap([boxes, boxes], dets)
    assert r["per_roi"]["radius"]["ap50"] == pytest.approx(0.0)
    assert r["per_roi"]["ulna"]["ap50"] == pytest.approx(0.5, abs=0.02)
    assert r["per_roi"]["mc1"]["ap"] == pytest.approx(1.0)
    assert r["all_13_found"] == 0.5


def test_mask_metrics():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:5] = True
    b[2:7] = True  # overlap 3 rows of 5
    m = mask_metrics(a, b)
    assert m["dice"] == pytest.approx(0.6) and m["iou"] == pytest.approx(30 / 70)
    assert m["pixel_accuracy"] == pytest.approx(0.6)
