"""Segment-stage inference speed: milliseconds per image for each recipe, whole ``segment()``
call (resize, network, resize back, cleanup, hand crop), fresh weights (speed does not
depend on training).

    OMP_NUM_THREADS=1 python benchmarks/segment_speed.py                    # CPU, 1 thread
    python benchmarks/segment_speed.py --device cuda --batch 8 --repeats 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from precise_baa.registry import load_stage
from precise_baa.synth import render_phantom

RECIPES = ("stages/segment/threshold.yaml", "stages/segment/unet-lite.yaml",
           "stages/segment/unet-resnet34.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048],
                    help="input image side(s) in px (a phantom resized)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    base = render_phantom(0, 512).image
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch}")
    print(f"{'recipe':24s} {'params':>8s} " + " ".join(f"{f'{s}px ms/img':>14s}" for s in args.sizes))
    for recipe in args.recipes:
        seg = load_stage("segment", recipe=recipe, device=args.device)
        model = getattr(seg, "model", None)
        params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M" if model else "-"
        cells = []
        for size in args.sizes:
            image = cv2.resize(base, (size, size), interpolation=cv2.INTER_LINEAR)
            batch = [image] * args.batch
            seg.segment(batch)  # warm-up
            times = []
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                seg.segment(batch)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / args.batch)
            cells.append(f"{1000 * float(np.median(times)):14.1f}")
        name = recipe.rsplit("/", 1)[-1].removesuffix(".yaml")
        print(f"{name:24s} {params:>8s} " + " ".join(cells))


if __name__ == "__main__":
    main()
