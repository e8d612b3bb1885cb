"""Grader inference speed and memory: radiographs per second through ``grade()`` per recipe.

Random weights (speed does not depend on them), random 512 x 400 hand crops with 13 boxes,
all crops of a batch in one forward pass. Prints one line per recipe and batch size.

    OMP_NUM_THREADS=1 python benchmarks/grade_speed.py --threads 1
    python benchmarks/grade_speed.py --device cuda --recipes stages/grade/densenet121-attention.yaml
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from precise_baa.registry import load_stage
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box

DEFAULT = ["stages/grade/densenet-attention-lite.yaml", "stages/grade/densenet121-attention.yaml",
           "stages/grade/resnet-shuffle.yaml"]


def _inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(n):
        images.append(rng.random((512, 400), dtype=np.float32))
        b = {}
        for k in ROI_KEYS:
            x, y = rng.uniform(20, 330), rng.uniform(20, 420)
            b[k] = Box(x0=x, y0=y, x1=x + rng.uniform(20, 60), y1=y + rng.uniform(25, 70))
        boxes.append(b)
    return images, boxes, ["F" if i % 2 else "M" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    for path in args.recipes:
        grader = load_stage("grade", recipe=path, device=args.device)
        for n in args.batch:
            images, boxes, sexes = _inputs(n)
            grader.grade(images, boxes, sexes)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t_crop = time.perf_counter()
            grader.crops(images, boxes)
            t_crop = time.perf_counter() - t_crop
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                grader.grade(images, boxes, sexes)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            best = min(times)
            mem = (f"peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                   if args.device.startswith("cuda")
                   else f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
            print(f"{grader.recipe.name:28s} crop {grader.recipe.crop_size:4d}  batch {n:3d}: "
                  f"{1000 * best / n:8.1f} ms/radiograph ({n / best:6.1f}/s; cropping "
                  f"{1000 * t_crop / n:.1f} ms of it), {mem}")


if __name__ == "__main__":
    main()
