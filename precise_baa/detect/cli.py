"""``precise-baa train detect`` and ``precise-baa evaluate detect`` (argparse only at import)."""

from __future__ import annotations

import argparse


def add_train(sub: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = sub.add_parser(
        "detect", help="train a 13-ROI detector (stage 2, mmdet)",
        description="Train an mmdet detector on a COCO manifest with ROI boxes and palm masks. "
                    "Images are the hand crops of the ground-truth masks (what the segmenter "
                    "gives at inference); the best epoch by validation bbox mAP is written to "
                    "--out as safetensors with the config stored as data.")
    p.add_argument("--recipe", required=True,
                   help="mmdet config or detect recipe, e.g. stages/detect/detectors-cascade-rcnn-lite.py")
    p.add_argument("--trust-recipe", action="store_true",
                   help="run a .py config from outside the project's stages/ folder (it is Python "
                        "code, executed when loaded)")
    p.add_argument("--coco", required=True, help="COCO manifest (13 ROI categories, mask_file per image)")
    p.add_argument("--images", default=None, help="images folder (default: images/ beside the manifest)")
    p.add_argument("--out", required=True, help="weights folder to write, e.g. weights/my-detector")
    p.add_argument("--epochs", type=int, default=None, help="default: the config's max_epochs")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of images held out (default 0.15)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda when visible; mmengine uses a visible GPU)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", action="store_true",
                   help="initialise the backbone from the ImageNet weights the config names (a download)")
    p.add_argument("--phantom", action="store_true",
                   help="mark the weights phantom-trained (default: when the manifest's images say "
                        "\"phantom\": true)")
    p.add_argument("--init-weights", default=None, metavar="WEIGHTS",
                   help="detector weights folder (same recipe) to start from; with --unlabelled: "
                        "the teacher")
    s = p.add_argument_group(
        "self-training on unlabelled radiographs",
        "With --unlabelled the teacher (--init-weights, or a detector first trained on --coco into "
        "OUT/teacher) boxes the unlabelled radiographs; images whose 13 boxes all pass the "
        "anatomy checks and score >= --pseudo-threshold join the training split (manifest in "
        "OUT/pseudo-labels/round-N) and a student trains from the teacher's weights.")
    s.add_argument("--unlabelled", default=None, metavar="DIR",
                   help="folder of unlabelled radiographs (searched recursively)")
    s.add_argument("--segment", default=None, metavar="WEIGHTS",
                   help="segmenter for their hand crops (default: weights/segment-unet-lite)")
    s.add_argument("--pseudo-threshold", type=float, default=0.7,
                   help="every one of the 13 boxes must score at least this (default 0.7)")
    s.add_argument("--rounds", type=int, default=1,
                   help="teacher-student rounds: each student teaches the next (default 1)")
    s.add_argument("--teacher-epochs", type=int, default=None,
                   help="epochs of the teacher trained on --coco when no --init-weights "
                        "(default: --epochs)")
    p.set_defaults(func=handler("precise_baa.detect.cli:run_train"))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = sub.add_parser(
        "detect", help="evaluate a detector on labelled boxes (stage 2 alone)",
        description="AP per ROI and mAP at IoU 0.5 and 0.5:0.95 (COCO, pycocotools) of the boxes "
                    "the pipeline would get, the share of images with all 13 ROIs found, and the "
                    "missing / implausible counts per ROI.")
    p.add_argument("--weights", required=True, help="trained detector weights folder")
    p.add_argument("--coco", required=True, help="labelled COCO manifest (boxes and palm masks)")
    p.add_argument("--images", default=None, help="images folder (default: images/ beside the manifest)")
    p.add_argument("--out", default=None, help="report folder (default: evaluation/detect-WEIGHTSNAME)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=4, help="radiographs per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler("precise_baa.detect.cli:run_evaluate"))


def run_train(args: argparse.Namespace) -> int:
    from ..registry import trusted_recipes

    with trusted_recipes(args.trust_recipe):
        return _run_train(args)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from .train import self_train_detector, train_detector

    common = dict(batch_size=args.batch_size, val_fraction=args.val_fraction,
                  device=args.device, seed=args.seed, workers=args.workers,
                  pretrained=True if args.pretrained else None,
                  phantom=True if args.phantom else None)
    if args.unlabelled:
        st = self_train_detector(args.recipe, args.coco, args.images, args.out,
                                 unlabelled=args.unlabelled, init_weights=args.init_weights,
                                 segment=args.segment, threshold=args.pseudo_threshold,
                                 rounds=args.rounds, epochs=args.epochs,
                                 teacher_epochs=args.teacher_epochs or args.epochs, **common)
        for r in st.rounds:
            print(f"round {r['round']}: {r['kept']} of {r['unlabelled']} unlabelled radiographs "
                  f"pseudo-labelled (no hand {r['no_hand']}, missing or implausible ROI "
                  f"{r['missing_or_implausible']}, a box below {args.pseudo_threshold} "
                  f"{r['low_score']})")
        card = json.loads((st.final / "card.json").read_text())
        best = card.get("metrics", {}).get("coco/bbox_mAP")
        print(f"student val bbox mAP {best if best is not None else 'n/a'}; teacher in "
              f"{st.teacher}, weights in {st.final}")
        return 0
    res = train_detector(args.recipe, args.coco, args.images, args.out, epochs=args.epochs,
                         init_weights=args.init_weights, **common)
    metric = "n/a (no validation split)" if res.best_metric != res.best_metric else f"{res.best_metric:.4f}"
    print(f"best val bbox mAP {metric} at epoch {res.best_epoch}; weights in {res.out_dir} "
          f"({res.seconds:.0f} s)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..registry import load_stage
    from .evaluate import evaluate_detector, format_table

    detector = load_stage("detect", weights=args.weights, device=args.device)
    out = Path(args.out) if args.out else Path("evaluation") / f"detect-{Path(args.weights).name}"
    res = evaluate_detector(detector, args.coco, args.images, out, batch_size=args.batch_size,
                            progress=not args.quiet)
    print(format_table(res))
    print(f"report in {out}")
    return 0
