#!/usr/bin/env python
"""The scoring engines on one folder: ``local`` against ``ray``, same pipeline, same inputs.

    nice -n 10 .venv/bin/python benchmarks/bench_engines.py
    nice -n 10 .venv/bin/python benchmarks/bench_engines.py --n 48 --markdown benchmarks/RESULTS.md

Inputs: ``--n`` phantom radiographs (PNG, ``--size`` px, fixed seeds) with a metadata CSV,
scored by the bundled pipeline (trained lite weights), pictures off. Each configuration runs
in its own process:

- ``local``: the local engine as ``precise-baa score`` runs it by default: the models with
  every CPU (``--threads``), decoding in ``--workers`` DataLoader processes;
- ``local-1``: the same with one torch thread (the compute of one Ray actor);
- ``ray``: a local Ray with ``--threads`` CPUs: decoding tasks and one pipeline actor per CPU
  but one (one torch thread each), results streamed back to the one writer.

Reported per configuration: wall time of the whole run (start-up, model loading, scoring,
writing; for Ray also starting and stopping Ray), time to the first result, steady throughput
(a batch over the median time between batches written; needs 4 batches or more), the models'
mean time per radiograph and stage (from each
assessment's ``timings_ms``), and the ratios: wall and steady time against ``local`` and
``local-1`` (the engine's overhead at equal compute), and against the ResNet-50 reference of
benchmarks/reference.py measured before and after in the same run. The load average is
printed with the numbers: on a shared machine the absolute times move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = ("local", "local-1", "ray")
STAGES = ("segment", "detect", "grade")


def make_inputs(folder: Path, n: int, size: int) -> Path:
    """``n`` phantom PNGs in ``folder/in`` and ``folder/meta.csv``; returns the metadata path."""
    from precise_baa.imaging import save_png
    from precise_baa.synth import render_phantom

    rows = ["id,sex,chronological_age"]
    for i in range(n):
        p = render_phantom(7000 + i, size=size)
        save_png(folder / "in" / f"p{i:03d}.png", p.image)
        rows.append(f"p{i:03d},{p.sex},{p.chronological_age}")
    meta = folder / "meta.csv"
    meta.write_text("\n".join(rows) + "\n")
    return meta


def child(args) -> dict:
    """One configuration, timed from the start of this process's work."""
    t0 = time.perf_counter()
    arrivals: list[float] = []
    folder = Path(args.folder)
    kw = dict(meta=folder / "meta.csv", batch_size=args.batch_size, pictures=False, progress=False,
              on_result=lambda a, pixels: arrivals.append(time.perf_counter()))
    from precise_baa.batch import PipelineSpec, score_folder

    spec = PipelineSpec("stages/pipelines/default.yaml", device="cpu")
    if args.config == "ray":
        import logging

        import ray

        from precise_baa.batch import RayEngine

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=args.threads, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
        ready = time.perf_counter()
        summary = score_folder(spec, folder / "in", folder / "out-ray", engine=RayEngine(), **kw)
        ray.shutdown()
        setup = ready - t0
    else:
        import torch

        torch.set_num_threads(args.threads if args.config == "local" else 1)
        pipe = spec.build()
        setup = time.perf_counter() - t0
        summary = score_folder(pipe, folder / "in", folder / f"out-{args.config}",
                               workers=args.workers, **kw)
    wall = time.perf_counter() - t0
    from precise_baa.report import read_assessments

    out = summary.out_dir
    assessments = list(read_assessments(out / "assessments.jsonl").values())
    per_stage = {s: statistics.mean(a.timings_ms.get(s, 0.0) for a in assessments) for s in STAGES}
    # steady rate: a batch over the median gap between batches written (robust to the first
    # batch's start-up and to Ray handing the last batches over together)
    done = arrivals[args.batch_size - 1::args.batch_size]
    gaps = [b - a for a, b in zip(done, done[1:])]
    steady = args.batch_size / statistics.median(gaps) if len(gaps) >= 3 else None
    return {
        "config": args.config, "n": len(arrivals), "counts": dict(summary.counts),
        "wall_s": round(wall, 2), "setup_s": round(setup, 2),
        "first_result_s": round(arrivals[0] - t0, 2),
        "steady_per_s": round(steady, 3) if steady else None,
        "stage_ms": {k: round(v, 1) for k, v in per_stage.items()},
        "results_csv": (out / "results.csv").read_text(),
    }


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def markdown(results: dict[str, dict], ref, args, loads: tuple[str, str], same: bool) -> str:
    base, one = results["local"], results["local-1"]
    lines = [
        f"Machine: {os.cpu_count()} logical CPUs, nice {os.nice(0)}; {args.n} phantom radiographs "
        f"of {args.size} px (PNG), bundled lite pipeline, batch {args.batch_size}, pictures off; "
        f"local decodes in {args.workers} worker process(es). Load average (1 / 5 / 15 min) "
        f"before: {loads[0]}, after: {loads[1]}. {ref.describe()}. results.csv of all "
        f"configurations {'identical' if same else 'DIFFERENT'}.",
        "",
        "| engine | wall s | x local | x local-1 | wall x ref | first result s | steady /s | "
        "steady x local-1 | models ms/radiograph: segment | detect | grade |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        r = results[name]
        st = r["stage_ms"]
        steady = r["steady_per_s"]
        rel = f"{steady / one['steady_per_s']:.2f}" if steady and one["steady_per_s"] else "-"
        lines.append(
            f"| {name} | {r['wall_s']} | {r['wall_s'] / base['wall_s']:.2f} | "
            f"{r['wall_s'] / one['wall_s']:.2f} | {ref.ratio(1000 * r['wall_s']):.1f} | "
            f"{r['first_result_s']} | {steady or '-'} | {rel} | {st['segment']} | {st['detect']} | "
            f"{st['grade']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="radiographs")
    ap.add_argument("--size", type=int, default=1024, help="phantom size in pixels")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPUs for the models (local) / for the local Ray")
    ap.add_argument("--workers", type=int, default=1, help="local engine: decoding processes")
    ap.add_argument("--markdown", type=Path, default=None, help="append the table to this file")
    ap.add_argument("--child", dest="config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.config:
        print(json.dumps(child(args)))
        return
    from reference import Reference, append_results

    before = load()
    ref = Reference.measure(threads=args.threads)
    print(f"reference before: {ref.readings[-1]:.0f} ms; load {before}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        make_inputs(Path(tmp), args.n, args.size)
        for name in CONFIGS:
            cmd = [sys.executable, __file__, "--child", name, "--folder", tmp, "--n", str(args.n),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--workers", str(args.workers)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name}: benchmark failed")
            results[name] = json.loads(p.stdout.strip().splitlines()[-1])
            shown = {k: v for k, v in results[name].items() if k != "results_csv"}
            print(json.dumps(shown), flush=True)
    ref.again()
    after = load()
    same = len({r["results_csv"] for r in results.values()}) == 1  # results.csv has no timings
    table = markdown(results, ref, args, (before, after), same)
    print(table)
    if args.markdown:
        append_results(args.markdown, table)


if __name__ == "__main__":
    main()
