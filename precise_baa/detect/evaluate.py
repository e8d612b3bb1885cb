"""Evaluating a detector alone on a labelled COCO set (``precise-baa evaluate detect``).

Each radiograph is prepared as in training (:func:`precise_baa.data.prepared_example`: the hand
crop of the ground-truth mask) and run through ``detector.detect``, the inference path, so the
numbers describe the boxes the pipeline gets: one per ROI after selection and the anatomical
checks. Reported: COCO AP per ROI at IoU 0.5 and 0.5:0.95 and their means
(:func:`precise_baa.evaluation.detection_ap`, pycocotools), the share of images with all 13
ROIs found (the precise-BAA paper's detection criterion), and how often each ROI was flagged
missing or implausible.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..data import load_coco
from ..errors import InputError
from ..evaluation import detection_ap
from ..paths import display_path
from ..rois import ROI_BY_KEY, ROI_KEYS


def evaluate_detector(
    detector: Any,
    coco: str | Path,
    images_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Detect on every labelled radiograph; return (and write to ``out_dir``) the metrics."""
    from tqdm.auto import tqdm

    from ..data import prepared_example

    manifest = load_coco(coco, images_dir)
    records = [r for r in manifest.records if r.boxes]
    if not records:
        raise InputError(f"{coco}: no image has ROI boxes to evaluate against")
    gt: list[dict] = []
    dets: list[dict] = []
    flags: Counter[tuple[str, str]] = Counter()
    for start in tqdm(range(0, len(records), batch_size), disable=not progress, unit="batch",
                      desc="detecting"):
        chunk = records[start:start + batch_size]
        prepared = [prepared_example(r) for r in chunk]
        results = detector.detect([crop for crop, _, _ in prepared])
        for (_, boxes, _), d in zip(prepared, results, strict=True):
            gt.append(boxes)
            dets.append({k: (b, d.scores.get(k)) for k, b in d.boxes.items() if b is not None})
            flags.update((f.code, f.roi) for f in d.flags if f.roi)
    ap = detection_ap(gt, dets)
    info = detector.info
    res = {
        "weights": info.weights or info.name, "dataset": display_path(coco), "n_images": len(records),
        "phantom_trained": info.phantom_trained, "model": info.model_dump(),
        "map50": ap["map50"], "map": ap["map"], "all_13_found": ap["all_13_found"],
        "per_roi": {k: {**ap["per_roi"][k],
                        "missing": flags[("roi_missing", k)],
                        "implausible": flags[("roi_implausible", k)]} for k in ROI_KEYS},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "evaluation.md").write_text(format_table(res) + "\n")
    return res


def format_table(res: dict[str, Any]) -> str:
    """The metrics as a Markdown table (one row per ROI, then the means)."""
    lines = [
        f"Detection on {res['n_images']} radiographs ({res['dataset']}), weights {res['weights']}",
        "",
        "| ROI | AP@0.5 | AP@[.5:.95] | missing | implausible |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in ROI_KEYS:
        r = res["per_roi"][k]
        lines.append(f"| {ROI_BY_KEY[k].name} | {r['ap50']:.3f} | {r['ap']:.3f} | "
                     f"{r['missing']} | {r['implausible']} |")
    lines += [
        f"| **mean** | **{res['map50']:.3f}** | **{res['map']:.3f}** | | |",
        "",
        f"All 13 ROIs found: {100 * res['all_13_found']:.1f} % of images.",
    ]
    if res.get("phantom_trained"):
        lines.append("Phantom-trained weights: numbers describe synthetic radiographs only.")
    return "\n".join(lines)
