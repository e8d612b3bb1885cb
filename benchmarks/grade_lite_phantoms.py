"""Train a grader recipe on phantoms on the CPU and evaluate it on held-out phantoms.

Generates ``--train`` and ``--test`` phantoms (different seeds) under ``--work``, trains with
``precise_baa.grade.train_grader`` and evaluates with ``evaluate_grader`` (ground-truth boxes).
Prints held-out mean exact / within-one accuracy, bone-age MAE (predicted vs true stages, and vs
the phantoms' bone age) and the wall time. Phantom numbers show the method learns; they say
nothing about real radiographs.

    OMP_NUM_THREADS=1 python benchmarks/grade_lite_phantoms.py --train 200 --test 60 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from precise_baa.grade.evaluate import evaluate_grader
from precise_baa.grade.train import train_grader
from precise_baa.registry import load_stage
from precise_baa.synth import ensure_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="stages/grade/densenet-attention-lite.yaml")
    ap.add_argument("--work", default="/tmp/precise-baa-grade-bench")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    sets = {name: ensure_dataset(work / name, n, seed, size=args.size, progress=False).parent
            for name, n, seed in (("train", args.train, 1000), ("test", args.test, 2000))}
    out = work / "weights" / Path(args.recipe).stem
    t0 = time.perf_counter()
    fit = train_grader(args.recipe, sets["train"] / "annotations.json", None, out,
                       epochs=args.epochs, batch_size=args.batch_size, device="cpu",
                       seed=args.seed, workers=args.workers, progress=False)
    train_s = time.perf_counter() - t0
    grader = load_stage("grade", weights=out, device="cpu")
    t0 = time.perf_counter()
    res = evaluate_grader(grader, sets["test"] / "annotations.json", None, work / "eval",
                          progress=False)
    eval_s = time.perf_counter() - t0
    acc, ba = res["accuracy"], res["bone_age"]
    ref = (ba.get("vs_reference") or {}).get("all", {})
    summary = {
        "recipe": args.recipe, "train_images": args.train, "test_images": res["n_images"],
        "epochs": args.epochs, "best_epoch": fit.best_epoch,
        "val_mean_accuracy": round(fit.best_metric, 4),
        "test_mean_exact": round(acc["mean_exact"], 4),
        "test_mean_within_one": round(acc["mean_within_one"], 4),
        "test_bone_age_mae_vs_true_stages_y": round(ba["mae_vs_true_stages"], 3),
        "test_bone_age_mae_vs_reference_y": round(ref["mae"], 3) if ref.get("mae") is not None else None,
        "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
        "threads": args.threads,
        "per_roi_exact": {k: round(v["exact"], 3) for k, v in acc["per_roi"].items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
