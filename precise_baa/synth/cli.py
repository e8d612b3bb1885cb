"""``precise-baa synth``: write a phantom dataset (argparse only at import)."""

from __future__ import annotations

import argparse


def add_commands(top: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = top.add_parser(
        "synth", help="render synthetic hand radiographs with labels (phantoms)",
        description="Render procedural left-hand PA radiograph phantoms: images, palm masks and one "
                    "COCO manifest (13 ROI boxes with RUS-CHN 'stage' and 'stage_tw3'; sex, "
                    "chronological_age and bone_age per image). Image i depends only on "
                    "(--seed, i). Styles: 'raw' films (square, markers, collimator strips), "
                    "'preprocessed' (hand on black, upright, filling a 1600:2080 portrait "
                    "frame) or 'mixed' (50/50).")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output folder (images/, masks/, annotations.json)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=512,
                   help="longer image side in pixels (default 512)")
    p.add_argument("--style", default="mixed", choices=["raw", "preprocessed", "mixed"],
                   help="phantom style (default mixed: raw and preprocessed 50/50)")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="PNG bit depth (default 8)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--contact-sheet", default=None, metavar="PATH",
                   help="also write a PNG tiling the first 16 images")
    p.add_argument("--sheet-boxes", action="store_true", help="draw the ROI boxes on the contact sheet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler("precise_baa.synth.dataset:cmd_synth"))
