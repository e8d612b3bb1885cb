#!/usr/bin/env python
"""Deployment runtime speed: each exportable network in eager PyTorch against ONNX Runtime.

    .venv/bin/python benchmarks/bench_runtime.py                         # lite + full, 2 threads
    nice -n 10 .venv/bin/python benchmarks/bench_runtime.py --markdown benchmarks/RESULTS.md

Times the stages' forward pass alone (``UnetSegmenter.logits``, ``RoiGrader.forward``: the one
place where the runtimes differ; pre- and post-processing are the same code) on the CPU:

- ``lite``: the bundled segmenter and grader (weights/, exported into a temporary copy);
- ``full``: U-Net ResNet34 (512 px) and DenseNet121 + ROI attention (128 px crops) with random
  weights (speed does not depend on training).

Batch 1 and 8 (radiographs: the grader sees 13 crops each), median of ``--repeats`` after
``--warmup`` calls, ``--threads`` threads for both (``torch.set_num_threads`` and onnxruntime's
``intra_op_num_threads``). Each time is also a ratio to the fixed reference of
benchmarks/reference.py (torchvision ResNet-50 forward, 1 x 3 x 1024 x 1024, same threads),
measured before and after in the same run. The load average is printed with the numbers: on a
shared machine they are only comparable at a similar load. The largest difference between the
two runtimes' probabilities on the benchmark inputs is reported too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: name -> (stage, bundled weights folder or None, recipe for random weights)
MODELS = {
    "lite": [("segment", "weights/segment-unet-lite", "stages/segment/unet-lite.yaml"),
             ("grade", "weights/grade-densenet-attention-lite",
              "stages/grade/densenet-attention-lite.yaml")],
    "full": [("segment", None, "stages/segment/unet-resnet34.yaml"),
             ("grade", None, "stages/grade/densenet121-attention.yaml")],
}


def prepare(stage: str, weights: str | None, recipe: str, tmp: Path) -> tuple[Path, bool, float]:
    """A weights folder with its ONNX export: (folder, trained, export seconds)."""
    import torch

    from precise_baa.registry import load_stage
    from precise_baa.runtime.export import export_onnx

    name = Path(weights or recipe).stem
    folder = tmp / name
    trained = weights is not None and (ROOT / weights / "model.safetensors").is_file()
    if trained:
        res = export_onnx(ROOT / weights, folder)  # a copy: the bundled folder is not touched
    else:
        torch.manual_seed(0)
        load_stage(stage, recipe=ROOT / recipe, device="cpu").save_pretrained(folder)
        res = export_onnx(folder)
    return folder, trained, res.seconds


def inputs(stage: str, obj, batch: int) -> tuple:
    """Network inputs of ``batch`` radiographs, as the stage's forward takes them."""
    rng = np.random.default_rng(batch)
    r = obj.recipe
    if stage == "segment":
        from precise_baa.segment.unet import network_input
        from precise_baa.synth import render_phantom

        x, _ = network_input([render_phantom(i, 1024).image for i in range(batch)], r)
        return (x,)
    crops = rng.random((batch, 13, r.crop_size, r.crop_size), dtype=np.float32)
    return crops, np.arange(batch, dtype=np.int64) % 2, np.ones((batch, 13), bool)


def forward_fn(stage: str, obj):
    if stage == "segment":
        return lambda x: [obj.logits(x)]
    return lambda crops, sex, present: obj.forward(crops, sex, present)[0]


def probabilities(stage: str, outs) -> np.ndarray:
    if stage == "segment":
        return outs[0].float().sigmoid().numpy().ravel()
    return np.concatenate([o.float().softmax(-1).numpy().ravel() for o in outs])


def median_ms(fn, args, warmup: int, repeats: int) -> tuple[float, list]:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            out = fn(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn(*args)
            times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times), out


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def markdown(rows: list[dict], desc: str, ref, loads: tuple[str, str], args, exports: dict) -> str:
    lines = [
        f"Machine: {desc}; {args.threads} threads for each runtime (torch.set_num_threads, "
        f"onnxruntime intra_op_num_threads), nice {os.nice(0)}. Load average (1 / 5 / 15 min) "
        f"before: {loads[0]}, after: {loads[1]}. {ref.describe()}.",
        f"Forward pass only (pre/post-processing is shared), median of {args.repeats} after "
        f"{args.warmup} warm-up; batch = radiographs (the grader runs 13 crops each). "
        "Export times (torch.onnx.export + check): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in exports.items()) + ".",
        "",
        "| model | weights | batch | torch ms | onnxruntime ms | **torch / onnxruntime** | "
        "torch x ref | onnxruntime x ref | max abs diff of probabilities |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'trained' if r['trained'] else 'random'} | {r['batch']} | "
            f"{r['torch_ms']:.1f} | {r['ort_ms']:.1f} | **{r['torch_ms'] / r['ort_ms']:.2f}** | "
            f"{ref.ratio(r['torch_ms']):.3f} | {ref.ratio(r['ort_ms']):.3f} | {r['diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["lite", "full"], choices=sorted(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--markdown", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from bench_pipeline import machine
    from reference import Reference, append_results

    from precise_baa.registry import load_stage
    from precise_baa.runtime import with_runtime

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    ref = Reference.measure(threads=args.threads)
    print(f"load average {load_before}; reference before: {ref.readings[-1]:.0f} ms", flush=True)
    rows, exports = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    try:
        for config in args.configs:
            for stage, weights, recipe in MODELS[config]:
                folder, trained, secs = prepare(stage, weights, recipe, tmp)
                model = f"{stage} {Path(recipe).stem}"
                exports[model] = secs
                pt = load_stage(stage, weights=folder, device="cpu")
                ox = load_stage(stage, recipe=with_runtime(stage, None, folder, "onnxruntime"),
                                weights=folder, device="cpu")
                for batch in args.batches:
                    x = inputs(stage, pt, batch)
                    t_ms, t_out = median_ms(forward_fn(stage, pt), x, args.warmup, args.repeats)
                    o_ms, o_out = median_ms(forward_fn(stage, ox), x, args.warmup, args.repeats)
                    diff = float(np.abs(probabilities(stage, t_out) - probabilities(stage, o_out)).max())
                    row = dict(model=model, trained=trained, batch=batch, torch_ms=t_ms, ort_ms=o_ms,
                               diff=diff)
                    rows.append(row)
                    print(f"{model:36s} batch {batch}: torch {t_ms:8.1f} ms, onnxruntime "
                          f"{o_ms:8.1f} ms ({t_ms / o_ms:.2f}x), max |dp| {diff:.1e}", flush=True)
                del pt, ox
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref.again()
    load_after = loadavg()
    table = markdown(rows, machine("cpu", args.threads), ref, (load_before, load_after), args,
                     exports)
    print(table)
    if args.markdown:
        append_results(args.markdown, table)


if __name__ == "__main__":
    main()
