"""``precise-baa train segment`` and ``precise-baa evaluate segment`` (argparse only at import)."""

from __future__ import annotations

import argparse

_DATA_HELP = ("folder with images/ and masks/ (same file names, non-zero = hand; the phantom "
              "layout) or a COCO manifest whose images carry 'mask_file'")


def add_train(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_training_options, handler

    p = sub.add_parser(
        "segment", help="train a U-Net palm segmenter (stage 1)",
        description="Train a U-Net on image / mask pairs with Dice + BCE loss and augmentation "
                    "(rotation, scale, flips, gamma); the best epoch by validation Dice is "
                    "written to --out as safetensors + recipe + card.")
    p.add_argument("--recipe", required=True, help="U-Net recipe, e.g. stages/segment/unet-lite.yaml")
    p.add_argument("--data", required=True, help=_DATA_HELP)
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/my-segmenter")
    add_training_options(p, batch_help="images per step")
    p.set_defaults(func=handler("precise_baa.segment.cli:run_train"))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = sub.add_parser(
        "segment", help="evaluate a palm segmenter on image / mask pairs (stage 1 alone)",
        description="Dice, IoU and pixel accuracy at the original image size, before and after "
                    "the morphological cleanup.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="trained segmenter weights folder")
    src.add_argument("--recipe", help="segmenter recipe without weights, e.g. stages/segment/threshold.yaml")
    p.add_argument("--data", required=True, help=_DATA_HELP)
    p.add_argument("--out", default=None, help="write the full report (per image too) to this JSON file")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=handler("precise_baa.segment.cli:run_evaluate"))


def run_train(args: argparse.Namespace) -> int:
    from .train import train_segmenter

    res = train_segmenter(args.recipe, args.data, args.out, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                          device=args.device, seed=args.seed, workers=args.workers,
                          cache=not args.no_cache, init_weights=args.init_weights,
                          progress=not args.quiet)
    print(f"best validation Dice {res.best_metric:.4f} at epoch {res.best_epoch}; "
          f"weights in {res.out_dir} ({res.seconds:.0f} s)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..registry import load_stage
    from .evaluate import evaluate_segmenter, format_report

    segmenter = load_stage("segment", recipe=args.recipe, weights=args.weights, device=args.device)
    report = evaluate_segmenter(segmenter, args.data, out=args.out, batch_size=args.batch_size,
                                progress=not args.quiet)
    print(format_report(report))
    if args.out:
        print(f"report in {args.out}")
    return 0
