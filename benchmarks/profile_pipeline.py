#!/usr/bin/env python
"""Where the time goes: torch.profiler over the pipeline, per stage, per module and per op.

    .venv/bin/python benchmarks/profile_pipeline.py --config lite full --markdown benchmarks/PROFILE.md

Same inputs as bench_pipeline.py (phantom radiographs, the later stages on the hand crop of the
true mask). Each stage runs inside a ``record_function`` span; every module down to
``--depth`` levels under each stage's network gets its own span (forward hooks), so the table
shows e.g. ``detect/backbone`` and ``detect/roi_head``; op totals come from the profiler's
self-CPU times. Spans are inclusive (a module's time contains its children's).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _hook_modules(stage: str, net, depth: int) -> list:
    import torch

    handles = []
    for name, mod in net.named_modules():
        if not name or name.count(".") >= depth:
            continue
        label = f"{stage}/{name}"

        def pre(m, args, label=label):
            m._pb_span = torch.profiler.record_function(label)
            m._pb_span.__enter__()

        def post(m, args, out):
            span = getattr(m, "_pb_span", None)
            if span is not None:
                span.__exit__(None, None, None)
                m._pb_span = None

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def child(config: str, n: int, size: int, threads: int, depth: int) -> str:
    import torch
    from bench_pipeline import _build

    from precise_baa.handcrop import hand_crop
    from precise_baa.synth import render_phantom

    torch.set_num_threads(threads)
    pipe, trained = _build(config, "cpu", "fp32")
    st = {k: v.obj for k, v in pipe.stages.items()}
    for stage in ("segment", "detect", "grade"):
        # the detector predicts with its inference form (precise_baa.detect.fast): hook that
        form = getattr(st[stage], "inference_model", None)
        net = form() if callable(form) else getattr(st[stage], "model", None)
        if isinstance(net, torch.nn.Module):
            _hook_modules(stage, net, depth)
    phantoms = [render_phantom(9000 + i, size=size) for i in range(n + 1)]

    def run(p):
        with torch.inference_mode():
            with torch.profiler.record_function("segment"):
                st["segment"].segment([p.image])
            crop, cb = hand_crop(p.image, p.mask)
            with torch.profiler.record_function("detect"):
                st["detect"].detect([crop])
            boxes = {k: b.shift(-cb.x0, -cb.y0) for k, b in p.boxes.items()}
            with torch.profiler.record_function("grade"):
                g = st["grade"].grade([crop], [boxes], [p.sex])[0]
            with torch.profiler.record_function("score"):
                st["score"].score(g.stages, p.sex, p.chronological_age)

    run(phantoms[-1])  # warm-up
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for p in phantoms[:n]:
            run(p)
    events = prof.key_averages()
    spans = {e.key: e.cpu_time_total / 1000.0 / n for e in events
             if e.key in ("segment", "detect", "grade", "score") or "/" in e.key}
    total = sum(spans.get(s, 0.0) for s in ("segment", "detect", "grade", "score"))
    lines = [f"#### {config} ({'trained' if trained else 'random'} weights), {size} px phantoms, "
             f"{threads} threads, mean of {n} radiographs: {total:.0f} ms", "",
             "| span | ms per radiograph | share |", "|---|---|---|"]
    for key in sorted(spans, key=lambda k: (k.split("/")[0] != "segment", k.split("/")[0] != "detect",
                                            k.split("/")[0] != "grade", -spans[k])):
        if spans[key] >= 0.005 * total:
            lines.append(f"| {key} | {spans[key]:.1f} | {100 * spans[key] / total:.1f} % |")
    ops = sorted((e for e in events if "/" not in e.key and e.key not in spans),
                 key=lambda e: -e.self_cpu_time_total)[:12]
    lines += ["", "| op (self time) | ms per radiograph | share | calls |", "|---|---|---|---|"]
    for e in ops:
        ms = e.self_cpu_time_total / 1000.0 / n
        lines.append(f"| `{e.key}` | {ms:.1f} | {100 * ms / total:.1f} % | {e.count // n} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["lite", "full"])
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, default=2, help="module levels under each network")
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(child(args.child, args.n, args.size, args.threads, args.depth))
        return 0
    parts = []
    for config in args.config:
        cmd = [sys.executable, __file__, "--child", config, "--n", str(args.n), "--size",
               str(args.size), "--threads", str(args.threads), "--depth", str(args.depth)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        parts.append(proc.stdout.split("#### ", 1)[1])
        print("#### " + parts[-1])
    if args.markdown:
        from reference import append_results

        append_results(args.markdown, "\n".join("#### " + t for t in parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
