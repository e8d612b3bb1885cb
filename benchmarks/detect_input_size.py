#!/usr/bin/env python
"""Detection AP against the detector's input size: what resolution do the 13 ROIs need?

    .venv/bin/python benchmarks/detect_input_size.py --sizes 256 320 384 512 \
        --markdown benchmarks/RESULTS.md

For each size the same recipe (default: the lite DetectoRS) is trained from scratch on the same
phantoms with the hand crop resized into SIZE x SIZE (recipe ``input_size``), then evaluated on
held-out phantoms (``precise-baa evaluate detect``: COCO AP after one-box-per-ROI selection
and the anatomical checks) and timed on hand crops (batch 1, median). Times are also given as
ratios to the fixed ResNet-50 reference (benchmarks/reference.py) measured in the same run.
Each size runs in its own process (``--parallel N`` at once; their timings are then taken
under each other's load, so time the sizes alone, or read the latencies as upper bounds). The knee of AP against size is where the ROIs stop gaining
from more pixels; the recipe's ``image_scale`` is set there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(args) -> dict:
    import torch

    from precise_baa.data import load_coco, prepared_example
    from precise_baa.detect.evaluate import evaluate_detector
    from precise_baa.detect.train import train_detector
    from precise_baa.registry import load_stage

    torch.set_num_threads(args.threads)
    out = Path(args.work) / f"detect-{args.size}"
    recipe = {"stage": "detect", "implementation": "mmdet", "config": args.recipe,
              "input_size": args.size}
    t0 = time.time()
    fit = train_detector(recipe, args.train / "annotations.json", args.train / "images", out,
                         epochs=args.epochs, val_fraction=0.1, seed=args.seed, workers=1)
    train_s = time.time() - t0
    det = load_stage("detect", weights=out)
    res = evaluate_detector(det, args.eval / "annotations.json", args.eval / "images",
                            out / "evaluation", progress=False)
    records = load_coco(args.eval / "annotations.json", args.eval / "images").records
    crops = [prepared_example(r)[0] for r in records[: args.timing_n]]
    times = []
    if crops:
        det.detect(crops[:1])  # warm-up
    for c in crops:
        t = time.perf_counter()
        det.detect([c])
        times.append(1000.0 * (time.perf_counter() - t))
    worst = min(res["per_roi"], key=lambda k: res["per_roi"][k]["ap"])
    return {"size": args.size, "map50": res["map50"], "map": res["map"],
            "all_13_found": res["all_13_found"], "worst_roi": worst,
            "worst_ap": res["per_roi"][worst]["ap"], "best_val_map": fit.best_metric,
            "latency_ms": statistics.median(times) if times else None, "train_s": train_s,
            "per_roi_ap": {k: v["ap"] for k, v in res["per_roi"].items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 320, 384, 512])
    p.add_argument("--recipe", default="stages/detect/detectors-cascade-rcnn-lite.py")
    p.add_argument("--train-n", type=int, default=400)
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--phantom-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-n", type=int, default=10)
    p.add_argument("--work", default="runs/detect-input-size")
    p.add_argument("--parallel", type=int, default=1, help="sizes trained at once (one process each)")
    p.add_argument("--markdown", default=None, help="append the table to this file")
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--eval", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.size:
        print("RESULT " + json.dumps(child(args)))
        return 0

    from reference import Reference

    from precise_baa.synth.dataset import ensure_dataset

    work = Path(args.work)
    train, evald = work / f"phantoms-train-s{args.seed}", work / f"phantoms-eval-s{args.seed + 1}"
    ensure_dataset(train, args.train_n, args.seed, size=args.phantom_size, workers=2)
    ensure_dataset(evald, args.eval_n, args.seed + 1, size=args.phantom_size, workers=2)
    ref = Reference.measure(threads=args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    def start(size: int) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--size", str(size), "--train", str(train), "--eval",
               str(evald), "--recipe", args.recipe, "--epochs", str(args.epochs), "--work",
               str(work), "--seed", str(args.seed), "--threads", str(args.threads),
               "--timing-n", str(args.timing_n)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)

    rows = []
    todo = list(args.sizes)
    while todo:
        batch, todo = todo[: args.parallel], todo[args.parallel:]
        procs = [(size, start(size)) for size in batch]
        for size, proc in procs:
            out, err = proc.communicate()
            line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(out[-3000:], err[-3000:], file=sys.stderr)
                raise SystemExit(f"size {size} failed")
            row = json.loads(line[7:])
            rows.append(row)
            print(f"size {size}: mAP {row['map']:.3f}, AP50 {row['map50']:.3f}, all 13 found "
                  f"{100 * row['all_13_found']:.1f} %, worst {row['worst_roi']} {row['worst_ap']:.3f}, "
                  f"{row['latency_ms'] or 0:.0f} ms", flush=True)
    rows.sort(key=lambda r: r["size"])
    ref.again()
    lines = [
        f"### {time.strftime('%Y-%m-%d')}: `detect_input_size.py --sizes {' '.join(map(str, args.sizes))} "
        f"--train-n {args.train_n} --eval-n {args.eval_n} --epochs {args.epochs}`",
        "",
        f"Recipe `{args.recipe}` trained from scratch per size on {args.train_n} phantoms "
        f"({args.phantom_size} px, seed {args.seed}), evaluated on {args.eval_n} held-out phantoms "
        f"(seed {args.seed + 1}). Machine: {platform.processor() or platform.machine()}, "
        f"{args.threads} threads. {ref.describe()}.",
        "",
        "| input size | AP@[.5:.95] | AP@0.5 | all 13 found | worst ROI (AP) | detector ms | x reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['map']:.3f} | {r['map50']:.3f} | {100 * r['all_13_found']:.1f} % | "
                     f"{r['worst_roi']} ({r['worst_ap']:.3f}) | "
                     + (f"{r['latency_ms']:.0f} | {ref.ratio(r['latency_ms']):.3f} |"
                        if r["latency_ms"] else "- | - |"))
    text = "\n".join(lines) + "\n"
    print(text)
    (work / "results.json").write_text(json.dumps({"rows": rows, "reference_ms": ref.readings}, indent=2))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
