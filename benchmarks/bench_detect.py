"""Detect-stage speed and memory: per-image inference time and peak memory per config.

Each config runs in its own process (clean peak-memory numbers) on a phantom's hand crop, with
freshly initialised weights (speed does not depend on training). CPU: peak resident memory of
the process and its peak above the built model's; CUDA: ``torch.cuda.max_memory_allocated``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_detect.py                 # CPU, 1 thread
    .venv/bin/python benchmarks/bench_detect.py --device cuda --batch 4 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("stages/detect/detectors-cascade-rcnn-r50.py", "stages/detect/detectors-cascade-rcnn-lite.py")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(config: str, device: str, batch: int, repeats: int, warmup: int, size: int,
            threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from precise_baa.handcrop import hand_crop
    from precise_baa.registry import load_stage
    from precise_baa.synth import render_phantom

    phantom = render_phantom(0, size)
    crop, _ = hand_crop(phantom.image, phantom.mask)
    t0 = time.perf_counter()
    det = load_stage("detect", recipe={"stage": "detect", "implementation": "mmdet",
                                       "config": config, "max_batch": batch}, device=device)
    build_s = time.perf_counter() - t0
    rss_model = _rss_mb()
    images = [crop] * batch
    cuda = det.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        det.detect(images)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        det.detect(images)
        sync()
        times.append((time.perf_counter() - t) / batch)
    row = {
        "config": Path(config).stem, "device": det.device, "threads": threads, "batch": batch,
        "input": list(crop.shape), "parameters_m": round(det.num_parameters / 1e6, 2),
        "build_s": round(build_s, 2),
        "ms_per_image_median": round(1000 * float(np.median(times)), 1),
        "ms_per_image_min": round(1000 * float(np.min(times)), 1),
        "peak_rss_mb": round(_peak_mb(), 0),
        # peak resident memory above the built model's (inference activations, workspace)
        "inference_peak_over_model_mb": round(max(0.0, _peak_mb() - rss_model), 0),
    }
    if cuda:
        row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 0)
        row["gpu_name"] = torch.cuda.get_device_name()
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", type=int, default=1024, help="phantom radiograph size (the crop is smaller)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.device, a.batch, a.repeats, a.warmup, a.size, a.threads)))
        return 0
    rows = []
    for cfg in a.configs:
        cmd = [sys.executable, __file__, "--one", cfg, "--device", a.device, "--batch", str(a.batch),
               "--repeats", str(a.repeats), "--warmup", str(a.warmup), "--size", str(a.size),
               "--threads", str(a.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            print(f"{cfg}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    keys = ["config", "device", "threads", "batch", "input", "parameters_m", "ms_per_image_median",
            "ms_per_image_min", "peak_rss_mb", "inference_peak_over_model_mb", "gpu_peak_allocated_mb"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "-")) for k in keys))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
