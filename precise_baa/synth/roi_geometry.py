"""Remake ``precise_baa/detect/geometry.json``, the ROI geometry of phantom hands that the
detector's low-score rescue checks (:mod:`precise_baa.detect.geometry`), from boxes only::

    python -m precise_baa.synth.roi_geometry [--n 400]

Run it when the generator's hands change (``GENERATOR_VERSION``; a test says when).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..detect.geometry import GEOMETRY_FILE, fit
from .render import GENERATOR_VERSION, render_phantom


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=100_000, help="first phantom seed")
    ap.add_argument("--out", type=Path, default=GEOMETRY_FILE)
    args = ap.parse_args(argv)
    hands = [render_phantom(args.seed + i, 256).boxes for i in range(args.n)]
    data = {"about": "ROI centre and size against two anchor ROIs (precise_baa.detect.geometry)",
            "generator": GENERATOR_VERSION, "phantoms": {"n": args.n, "first_seed": args.seed},
            "rois": fit(hands)}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out} from {args.n} phantom hands")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
