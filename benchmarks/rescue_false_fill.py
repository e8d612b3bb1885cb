#!/usr/bin/env python
"""What the detector's low-score rescue does when a ROI's bone is really gone, or only faint.

    .venv/bin/python benchmarks/rescue_false_fill.py --n 40 --markdown benchmarks/RESULTS.md

The rescue (detect recipe ``rescue_threshold``, ``precise_baa.detect.anatomy.rescue_missing``)
fills a ROI without a box from a box the detector scored below the threshold, when the rest of
the hand is found and the box fits it. It exists for bones the detector barely sees; its risk is
a box where there is no bone to see. This script erases one ROI's bone from held-out phantoms
(the ground-truth box grown by ``--grow`` filled with background, as an amputated or
out-of-field bone would leave it) and counts, per ROI, what the bundled detector makes of it:
rejected (the right answer), a box above the threshold anyway (the detector's own behaviour,
the same with or without the rescue), or a rescued box (what the rescue adds), with the rescued
box's IoU against the erased bone's box. ``--faint F`` instead keeps the bone at F of its contrast
(the grown box blended towards its mean): the bone is there, the detector sees it less, and a
rescued box should sit on it (IoU >= 0.5).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ERASED = ("radius", "ulna", "mc1", "pp1", "dp1", "dp3", "mp5", "dp5")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "weights/detect-detectors-lite"))
    ap.add_argument("--data", type=Path, default=ROOT / "runs/bench-data/rescue-eval",
                    help="held-out phantoms (made here with --seed when missing)")
    ap.add_argument("--n", type=int, default=30, help="phantoms; each is tried once per ROI")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--grow", type=float, default=1.3, help="erase the box grown by this factor")
    ap.add_argument("--faint", type=float, default=None,
                    help="keep this fraction of the bone's contrast instead of erasing it")
    ap.add_argument("--rois", nargs="+", default=list(ERASED))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="append the table to this file")
    args = ap.parse_args(argv)

    import torch
    from reference import append_results
    from tqdm.auto import tqdm

    from precise_baa.data import load_coco, prepared_example
    from precise_baa.detect.anatomy import LOW_SCORE, _iou
    from precise_baa.registry import load_stage
    from precise_baa.synth.dataset import ensure_dataset

    torch.set_num_threads(args.threads)
    ensure_dataset(args.data, n=args.n, seed=args.seed, size=args.size, progress=False)
    det = load_stage("detect", weights=args.weights)
    records = load_coco(args.data / "annotations.json", args.data / "images").records[: args.n]
    counts: dict[str, Counter] = {k: Counter() for k in args.rois}
    ious: dict[str, list[float]] = {k: [] for k in args.rois}
    for rec in tqdm(records, unit="image", desc="erasing ROIs"):
        crop, boxes, _ = prepared_example(rec)
        for k in args.rois:
            b = boxes[k]
            (cx, cy), w, h = b.center, args.grow * b.width, args.grow * b.height
            im = crop.copy()
            region = im[int(max(cy - h / 2, 0)):int(cy + h / 2), int(max(cx - w / 2, 0)):int(cx + w / 2)]
            if args.faint is None:
                region[...] = 0.0
            else:
                region[...] = region.mean() + args.faint * (region - region.mean())
            d = det.detect([im])[0]
            if d.boxes[k] is None:
                counts[k]["rejected"] += 1
            elif any(f.code == LOW_SCORE and f.roi == k for f in d.flags):
                counts[k]["rescued"] += 1
                ious[k].append(_iou(d.boxes[k], b))
            else:
                counts[k]["above threshold anyway"] += 1
    n = len(records)
    recipe = det.recipe
    what = ("set to background" if args.faint is None
            else f"kept at {args.faint:g} of its contrast")
    lines = [f"Bundled detector (`{Path(args.weights).name}`, score threshold "
             f"{recipe.score_threshold:g}, rescue floor {recipe.rescue_threshold}), {n} held-out "
             f"phantoms (seed {args.seed}, {args.size} px), one ROI at a time: its box "
             f"x{args.grow:g} {what}.", "",
             "| ROI | rejected | a box above the threshold anyway | rescued | rescued IoU with "
             "the ROI's box (min-max) |", "|---|---:|---:|---:|---:|"]
    for k in args.rois:
        c = counts[k]
        iou = f"{min(ious[k]):.2f}-{max(ious[k]):.2f}" if ious[k] else "-"
        lines.append(f"| {k} | {c['rejected']} | {c['above threshold anyway']} | {c['rescued']} | {iou} |")
    total = sum(c["rescued"] for c in counts.values())
    lines += ["", f"Rescued {total} of {n * len(args.rois)} ROIs "
                  f"({100.0 * total / max(1, n * len(args.rois)):.1f} %).", ""]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        append_results(args.markdown, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
