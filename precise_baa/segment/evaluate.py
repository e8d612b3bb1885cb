"""Evaluating a segmenter on image / mask pairs (``precise-baa evaluate segment``).

Dice, IoU and pixel accuracy at the original image size, before cleanup (the thresholded
probability map, ``SegmentResult.raw_mask``) and after it (``SegmentResult.mask``), averaged
over images. A rejected image counts with the mask it had (usually a poor one) and is listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data import read_pair, segmentation_pairs
from ..evaluation import PUBLISHED, mask_metrics

METRICS = ("dice", "iou", "pixel_accuracy")


def _mean(rows: list[dict[str, float]]) -> dict[str, float | None]:
    return {k: (float(np.mean([r[k] for r in rows])) if rows else None) for k in METRICS}


def evaluate_segmenter(segmenter, data: str | Path, *, out: str | Path | None = None,
                       batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Score ``segmenter`` on the pairs of ``data`` (``images/`` + ``masks/`` or a COCO manifest
    with ``mask_file``); the report is returned and, with ``out``, written there as JSON."""
    from tqdm.auto import tqdm

    pairs = segmentation_pairs(data)
    per_image: list[dict[str, Any]] = []
    before, after = [], []
    bar = tqdm(total=len(pairs), disable=not progress, unit="img", desc="segmenting")
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        loaded = [read_pair(image, mask) for image, mask in chunk]
        results = segmenter.segment([image for image, _ in loaded])
        for (path, _), (_, truth), r in zip(chunk, loaded, results, strict=True):
            b = mask_metrics(r.raw_mask if r.raw_mask is not None else r.mask, truth)
            a = mask_metrics(r.mask, truth)
            before.append(b)
            after.append(a)
            per_image.append({"image": str(path), "before_cleanup": b, "after_cleanup": a,
                              "rejected": r.rejected, "crop_box": r.crop_box.as_list()})
        bar.update(len(chunk))
    bar.close()
    rejected = [p for p in per_image if p["rejected"]]
    report = {
        "data": str(data),
        "segmenter": segmenter.info.model_dump(mode="json"),
        "n_images": len(per_image),
        "rejected": len(rejected),
        "before_cleanup": _mean(before),
        "after_cleanup": _mean(after),
        "published_reference": {
            "pixel_accuracy": PUBLISHED["precise-BAA (paper), palm segmentation pixel accuracy"],
            "note": "the precise-BAA paper on real radiographs; not comparable to phantoms",
        },
        "per_image": per_image,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The summary table ``precise-baa evaluate segment`` prints."""
    info = report["segmenter"]
    lines = [
        f"{report['n_images']} images ({report['rejected']} rejected); segmenter "
        f"{info['name']} ({info['implementation']}{', ' + info['weights'] if info.get('weights') else ''})",
        f"{'':16s} {'Dice':>7s} {'IoU':>7s} {'pixel acc.':>11s}",
    ]
    for key, label in (("before_cleanup", "before cleanup"), ("after_cleanup", "after cleanup")):
        m = report[key]
        if m["dice"] is None:
            continue
        lines.append(f"{label:16s} {m['dice']:7.4f} {m['iou']:7.4f} {100 * m['pixel_accuracy']:10.2f} %")
    for p in report["per_image"]:
        if p["rejected"]:
            lines.append(f"rejected: {p['image']}: {p['rejected']}")
    return "\n".join(lines)
