"""Train a U-Net segmenter recipe on phantoms on the CPU and evaluate it on held-out phantoms.

Generates ``--train`` and ``--test`` phantoms (different seeds) under ``--work``, trains with
``precise_baa.segment.train.train_segmenter`` and evaluates the trained U-Net and the
``threshold`` baseline with ``evaluate_segmenter`` (full-size Dice / IoU / pixel accuracy,
before and after cleanup). Prints those and the wall times. Phantom numbers show the method
learns; they say nothing about real radiographs.

    OMP_NUM_THREADS=1 python benchmarks/segment_phantoms.py --train 150 --test 60 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from precise_baa.registry import load_stage
from precise_baa.segment.evaluate import evaluate_segmenter, format_report
from precise_baa.segment.train import train_segmenter
from precise_baa.synth import ensure_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="stages/segment/unet-lite.yaml")
    ap.add_argument("--work", default="/tmp/precise-baa-segment-bench")
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    sets = {name: ensure_dataset(work / name, n, seed, size=args.size, progress=False).parent
            for name, n, seed in (("train", args.train, 1000), ("test", args.test, 2000))}
    out = work / "weights" / Path(args.recipe).stem
    t0 = time.perf_counter()
    fit = train_segmenter(args.recipe, sets["train"], out, epochs=args.epochs,
                          batch_size=args.batch_size, device="cpu", seed=args.seed,
                          phantom=True, progress=False)
    train_s = time.perf_counter() - t0
    print(f"trained {Path(args.recipe).stem} on {args.train} phantoms ({args.epochs} epochs, "
          f"{args.threads} thread(s)): {train_s:.0f} s; best validation Dice {fit.best_metric:.4f} "
          f"at epoch {fit.best_epoch}")
    summary = {"recipe": args.recipe, "train": args.train, "test": args.test,
               "epochs": args.epochs, "train_seconds": round(train_s, 1),
               "best_val_dice": fit.best_metric}
    for name, seg in (("unet", load_stage("segment", weights=out, device="cpu")),
                      ("threshold", load_stage("segment", recipe="stages/segment/threshold.yaml"))):
        t0 = time.perf_counter()
        rep = evaluate_segmenter(seg, sets["test"], progress=False)
        ms = 1000 * (time.perf_counter() - t0) / max(1, rep["n_images"])
        print(f"\nheld-out ({args.test} phantoms, {ms:.0f} ms/image incl. reading):")
        print(format_report(rep))
        summary[name] = {k: rep[k] for k in ("before_cleanup", "after_cleanup", "rejected")}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary in {work / 'summary.json'}")


if __name__ == "__main__":
    main()
