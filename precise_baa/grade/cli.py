"""``precise-baa train grade`` and ``precise-baa evaluate grade`` (argparse only at import)."""

from __future__ import annotations

import argparse


def add_train(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_training_options, handler

    p = sub.add_parser(
        "grade", help="train a per-ROI maturity grader (stage 3)",
        description="Train a grader on a COCO manifest with per-ROI stages, or with bone ages "
                    "only (--supervision bone-age / mixed). Crops come from the boxes (jittered) "
                    "on the hand crop of the mask; boxes and masks a manifest lacks can come "
                    "from trained stages (--boxes-from, --segment). The best epoch (validation "
                    "mean accuracy, or bone-age error) is written to --out.")
    p.add_argument("--recipe", required=True, help="grader recipe, e.g. stages/grade/densenet-attention-lite.yaml")
    p.add_argument("--coco", required=True,
                   help="COCO manifest with 'stage' (or 'stage_tw3') per annotation, and/or "
                        "'bone_age' + 'sex' per image")
    p.add_argument("--images", default=None, help="images folder (default: images/ beside the manifest)")
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/my-grader")
    p.add_argument("--supervision", default="stages", choices=["stages", "bone-age", "mixed"],
                   help="what the labels teach: stages (per-ROI 'stage', default), bone-age (each "
                        "image's bone_age and sex only, through stage 4 in torch), mixed (stages "
                        "where an image has them, its bone age elsewhere)")
    p.add_argument("--boxes-from", default=None, metavar="WEIGHTS",
                   help="detector weights folder that boxes the images without boxes in the "
                        "manifest (on the hand crop; cached in OUT/predicted-labels)")
    p.add_argument("--segment", default=None, metavar="WEIGHTS",
                   help="segmenter weights for images without mask_file (default with "
                        "--boxes-from: the bundled weights/segment-unet-lite)")
    add_training_options(p, batch_help="radiographs per step (13 crops each)")
    p.set_defaults(func=handler("precise_baa.grade.cli:run_train"))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = sub.add_parser(
        "grade", help="evaluate a grader on ground-truth boxes (stage 3 alone)",
        description="Per-ROI exact and within-one-stage accuracy, confusion matrices and the "
                    "bone-age error of scoring predicted instead of true stages.")
    p.add_argument("--weights", required=True, help="trained grader weights folder")
    p.add_argument("--coco", required=True, help="labelled COCO manifest")
    p.add_argument("--images", default=None, help="images folder (default: images/ beside the manifest)")
    p.add_argument("--out", default=None,
                   help="report folder (default: evaluation/grade-WEIGHTSNAME)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16, help="radiographs per forward pass")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=handler("precise_baa.grade.cli:run_evaluate"))


def run_train(args: argparse.Namespace) -> int:
    from .train import train_grader

    res = train_grader(args.recipe, args.coco, args.images, args.out, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                       device=args.device, seed=args.seed, workers=args.workers,
                       cache=not args.no_cache, init_weights=args.init_weights,
                       progress=not args.quiet, supervision=args.supervision,
                       boxes_from=args.boxes_from, segment=args.segment)
    if args.supervision == "stages":
        what = f"best mean accuracy {res.best_metric:.4f} at epoch {res.best_epoch}"
    else:  # chosen by the error averaged over the epochs up to it (age_select_window)
        own = res.history[res.best_epoch - 1]["bone_age_mae_vs_label"]
        what = (f"best epoch {res.best_epoch}: val bone-age MAE {own:.4f} y (averaged with "
                f"the epochs before it, as chosen: {res.best_metric:.4f} y)")
    print(f"{what}; weights in {res.out_dir} ({res.seconds:.0f} s)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..registry import load_stage
    from .evaluate import evaluate_grader

    grader = load_stage("grade", weights=args.weights, device=args.device)
    out = Path(args.out) if args.out else Path("evaluation") / f"grade-{Path(args.weights).name}"
    res = evaluate_grader(grader, args.coco, args.images, out, batch_size=args.batch_size,
                          progress=not args.quiet)
    acc, ba = res["accuracy"], res["bone_age"]
    mae = f"{ba['mae_vs_true_stages']:.3f} y" if ba["n"] else "n/a"
    print(f"{res['n_images']} radiographs: mean exact accuracy {acc['mean_exact']:.4f}, "
          f"within one stage {acc['mean_within_one']:.4f}, bone-age MAE vs true stages {mae}; "
          f"report in {out}")
    return 0
