#!/usr/bin/env python
"""Pipeline speed and memory: per-stage and end-to-end latency, batch throughput, peak memory.

    .venv/bin/python benchmarks/bench_pipeline.py                     # lite + full on CPU
    .venv/bin/python benchmarks/bench_pipeline.py --configs lite lite-onnx full   # + ONNX Runtime
    .venv/bin/python benchmarks/bench_pipeline.py --device cuda --precision bf16 --batch-size 32
    .venv/bin/python benchmarks/bench_pipeline.py --markdown benchmarks/RESULTS.md

Each configuration runs in its own process (clean peak-memory reading). Inputs are phantom
radiographs rendered at ``--size`` (fixed seeds). Every stage is timed on real inputs: the
segmenter on the radiograph; the detector on the hand crop of the phantom's true mask (what a
trained segmenter gives); the grader on that crop with the true boxes (so its cost does not
depend on what an untrained detector finds); the scorer on the grades.

- latency: batch of 1, median over ``--repeats`` radiographs, per stage and their sum
- throughput: all ``--n`` radiographs in batches of ``--batch-size`` through the four stages
  (images already decoded), radiographs per second
- folder: ``precise-baa score``'s own loop over PNG files (decoding in ``--workers``
  processes, pictures off), for the configurations with trained weights, after a warm-up
  run over one batch (the timed run still starts its own decoding workers)
- peak memory: process peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU)

Every time is also given as a ratio to the fixed reference of benchmarks/reference.py (a
torchvision ResNet-50 forward on one 1 x 3 x 1024 x 1024 image, same device and thread count),
measured in the same run before and after the configurations, because machines of one kind
differ 2-3x in absolute speed. Targets: the full recipe at <= 1.85 x the reference end to end,
the lite one at <= 0.09 x; ``precise-baa score``'s own throughput >= 80 % of the batch
throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = {
    # the bundled pipeline (trained lite weights when present, else the lite recipes)
    "lite": {
        "pipeline": "stages/pipelines/default.yaml",
        "recipes": {"segment": "stages/segment/unet-lite.yaml",
                    "detect": "stages/detect/detectors-cascade-rcnn-lite.py",
                    "grade": "stages/grade/densenet-attention-lite.yaml"},
    },
    # the bundled pipeline with its segmenter and grader in ONNX Runtime (the deployment
    # runtime; the bundled folders are exported into a temporary copy first: needs the [onnx] extra)
    "lite-onnx": {
        "pipeline": "stages/pipelines/default-onnx.yaml",
        "export": ("segment", "grade"),
    },
    # the paper's full-size architecture (random weights: timing only)
    "full": {
        "recipes": {"segment": "stages/segment/unet-resnet34.yaml",
                    "detect": "stages/detect/detectors-cascade-rcnn-r50.py",
                    "grade": "stages/grade/densenet121-attention.yaml"},
    },
}


def _build(name: str, device: str, precision: str):
    from precise_baa.errors import PreciseBaaError
    from precise_baa.pipeline import Pipeline

    cfg = CONFIGS[name]
    if cfg.get("export"):
        return _exported(cfg, device, precision), True
    if cfg.get("pipeline"):
        try:
            return Pipeline.from_recipe(cfg["pipeline"], device=device, precision=precision), True
        except PreciseBaaError as e:
            print(f"[{name}] bundled weights unavailable ({e}); timing the recipes", file=sys.stderr)
    recipe = {s: {"recipe": r} for s, r in cfg["recipes"].items()}
    recipe["score"] = {"recipe": "stages/score/rus-chn.yaml"}
    return Pipeline.from_recipe(recipe, device=device, precision=precision), False


def _exported(cfg: dict, device: str, precision: str):
    """The pipeline of ``cfg`` with the stages in ``cfg["export"]`` exported to ONNX (copies of
    the bundled weights folders in a temporary folder, removed at exit)."""
    import atexit
    import shutil

    from precise_baa.pipeline import Pipeline
    from precise_baa.runtime.export import export_onnx
    from precise_baa.schemas import read_yaml

    recipe = read_yaml(ROOT / cfg["pipeline"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for stage in cfg["export"]:
        line = dict(recipe[stage])
        res = export_onnx(ROOT / line["weights"], tmp / stage)
        print(f"[export] {res.summary()}", file=sys.stderr)
        recipe[stage] = {**line, "weights": str(tmp / stage), "runtime": "onnxruntime"}
    for stage, line in recipe.items():  # the other stages' folders, from the repository root
        if isinstance(line, dict) and "weights" in line and stage not in cfg["export"]:
            recipe[stage] = {**line, "weights": str(ROOT / line["weights"])}
    return Pipeline.from_recipe(recipe, device=device, precision=precision)


def child(args) -> dict:
    import torch

    from precise_baa.handcrop import hand_crop
    from precise_baa.synth import render_phantom

    torch.set_num_threads(args.threads)
    pipe, trained = _build(args.config, args.device, args.precision)
    st = {k: v.obj for k, v in pipe.stages.items()}
    phantoms = [render_phantom(9000 + i, size=args.size) for i in range(max(args.n, args.repeats))]
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run(batch):
        """The four stages on a batch of phantoms; returns per-stage seconds."""
        times = {}
        t = time.perf_counter()
        with torch.inference_mode(), pipe._autocast():
            st["segment"].segment([p.image for p in batch])
            sync()
            times["segment"] = time.perf_counter() - t
            # later stages get the hand crop of the true mask: what a trained segmenter gives,
            # so their cost does not depend on an untrained segmenter's output
            crops = [hand_crop(p.image, p.mask) for p in batch]
            t = time.perf_counter()
            st["detect"].detect([c for c, _ in crops])
            sync()
            times["detect"] = time.perf_counter() - t
            boxes = [{k: b.shift(-cb.x0, -cb.y0) for k, b in p.boxes.items()}
                     for p, (_, cb) in zip(batch, crops, strict=True)]
            t = time.perf_counter()
            grades = st["grade"].grade([c for c, _ in crops], boxes, [p.sex for p in batch])
            sync()
            times["grade"] = time.perf_counter() - t
            t = time.perf_counter()
            for g, p in zip(grades, batch, strict=True):
                st["score"].score(g.stages, p.sex, p.chronological_age)
            times["score"] = time.perf_counter() - t
        return times

    run(phantoms[:1])  # warm-up (lazy init, caches, cudnn autotune)
    per = [run([phantoms[i % len(phantoms)]]) for i in range(args.repeats)]
    latency = {k: 1000 * statistics.median(r[k] for r in per) for k in per[0]}
    latency["end_to_end"] = 1000 * statistics.median(sum(r.values()) for r in per)
    n = args.n
    batches = [phantoms[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    run(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        run(b)
    throughput = n / (time.perf_counter() - t0)
    out = {
        "config": args.config, "trained_weights": trained, "device": args.device,
        "precision": args.precision, "threads": args.threads, "size": args.size,
        "batch_size": args.batch_size, "n": n, "repeats": args.repeats,
        "latency_ms": {k: round(v, 1) for k, v in latency.items()},
        "throughput_per_s": round(throughput, 2),
        "parameters_m": {k: round(sum(p.numel() for p in (getattr(v, "model", None) or torch.nn.Module()).parameters()) / 1e6, 2)
                         for k, v in st.items() if k != "score"},
    }
    if trained and args.folder:
        from precise_baa.batch import score_folder
        from precise_baa.imaging import save_png

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in"
            rows = ["id,sex,chronological_age"]
            for i, p in enumerate(phantoms[:n]):
                save_png(src / f"p{i:03d}.png", p.image)
                rows.append(f"p{i:03d},{p.sex},{p.chronological_age}")
            (Path(tmp) / "meta.csv").write_text("\n".join(rows) + "\n")
            # warm-up on a copy of the first batch (first-call costs are not throughput)
            warm = Path(tmp) / "warm"
            warm.mkdir()
            for f in sorted(src.iterdir())[:args.batch_size]:
                (warm / f.name).write_bytes(f.read_bytes())
            score_folder(pipe, warm, Path(tmp) / "warm-out", meta=Path(tmp) / "meta.csv",
                         batch_size=args.batch_size, workers=args.workers, pictures=False,
                         progress=False)
            s = score_folder(pipe, src, Path(tmp) / "out", meta=Path(tmp) / "meta.csv",
                             batch_size=args.batch_size, workers=args.workers, pictures=False,
                             progress=False)
            out["folder_per_s"] = round(n / s.seconds, 2)
            out["folder_counts"] = dict(s.counts)
    if cuda:
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    # OpenMP's wait policy changes small-op CPU work a lot (PASSIVE: the lite pipeline ~1.5x slower)
    desc = (f"{cpu}, {os.cpu_count()} logical CPUs ({threads} torch threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), torch {torch.__version__}")
    if device.startswith("cuda") and torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def markdown(results: list[dict], desc: str, ref) -> str:
    lines = [
        f"Machine: {desc}. Inputs: phantom radiographs, {results[0]['size']} px. {ref.describe()}.",
        "Ratios (x ref) are times in units of the reference forward; throughputs are also given as",
        "radiographs per reference forward time.",
        "",
        "| config | weights | device | latency ms: segment | detect | grade | score | **end-to-end** | "
        "**x ref** | throughput /s (batch) | folder /s | folder / batch | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_ms"]
        mem = r.get("peak_gpu_mb", r["peak_rss_mb"])
        folder = r.get("folder_per_s")
        share = f"{100 * folder / r['throughput_per_s']:.0f} %" if folder else "-"
        lines.append(
            f"| {r['config']} | {'trained' if r['trained_weights'] else 'random'} | {r['device']} "
            f"{r['precision']} | {lat['segment']} | {lat['detect']} | {lat['grade']} | {lat['score']} | "
            f"**{lat['end_to_end']}** | **{ref.ratio(lat['end_to_end']):.3f}** | "
            f"{r['throughput_per_s']} ({r['batch_size']}) | {folder or '-'} | {share} | "
            f"{mem}{' (GPU)' if 'peak_gpu_mb' in r else ' (RSS)'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["lite", "full"], choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n", type=int, default=8, help="radiographs for throughput")
    ap.add_argument("--repeats", type=int, default=5, help="radiographs for latency medians")
    ap.add_argument("--size", type=int, default=1024, help="phantom size in pixels")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0,
                    help="decoding workers for the folder run (default 0, as precise-baa score)")
    ap.add_argument("--no-folder", dest="folder", action="store_false")
    ap.add_argument("--markdown", type=Path, default=None, help="append the table to this file")
    ap.add_argument("--child", dest="config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.config:
        print(json.dumps(child(args)))
        return
    from reference import Reference, append_results

    ref = Reference.measure(threads=args.threads, device=args.device)
    print(f"reference before: {ref.readings[-1]:.0f} ms", flush=True)
    results = []
    for name in args.configs:
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device,
               "--precision", args.precision, "--threads", str(args.threads), "--n", str(args.n),
               "--repeats", str(args.repeats), "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        cmd += [] if args.folder else ["--no-folder"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name}: benchmark failed")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r))
    ref.again()
    table = markdown(results, machine(args.device, args.threads), ref)
    print(table)
    if args.markdown:
        append_results(args.markdown, table)


if __name__ == "__main__":
    main()
