"""Phantom generator throughput: images per minute (render only, and written to disk).

    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py [--n 120] [--size 512] [--workers 1 2] \
        [--styles raw preprocessed mixed]

Prints one line per measurement. Rendering is single-threaded OpenCV/numpy per image; the
dataset writer scales with worker processes (one per core). Rendering also reports CPU time
per image, which stays meaningful when other jobs share the cores (wall time then does not).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="images per measurement")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--styles", nargs="+", default=["raw", "preprocessed", "mixed"],
                   help="phantom styles (size is the longer side); datasets are timed as mixed")
    args = p.parse_args()

    import cv2

    cv2.setNumThreads(1)
    from precise_baa.synth import generate_dataset, render_phantom

    print(f"cpu cores: {os.cpu_count()}; size {args.size} px; n {args.n}")
    render_phantom(0, args.size)  # warm-up (imports, tables)
    for style in args.styles:
        t, c = time.perf_counter(), time.process_time()
        for i in range(args.n):
            render_phantom(i, args.size, style=style)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        print(f"render_phantom {style}, 1 process: {args.n / dt * 60:8.0f} images/min "
              f"({dt / args.n * 1000:.1f} ms/image; CPU {dc / args.n * 1000:.1f} ms/image = "
              f"{args.n / dc * 60:.0f} images/min per free core)")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            generate_dataset(tmp, args.n, seed=0, size=args.size, progress=False, workers=workers)
            dt = time.perf_counter() - t
        print(f"generate_dataset mixed (PNG + mask + manifest), {workers} worker(s): "
              f"{args.n / dt * 60:8.0f} images/min ({1000 / (args.n / dt * 60):.1f} min per 1,000)")


if __name__ == "__main__":
    main()
