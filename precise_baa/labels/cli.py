"""``precise-baa export-labels`` and ``precise-baa import-labels`` (argparse only at import)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    from ..batch.cli import DEFAULT_PIPELINE
    from ..cli import handler

    e = sub.add_parser(
        "export-labels", help="write the pipeline's predictions as pre-annotations (CVAT, Label Studio)",
        description="Predict the 13 ROI boxes with their stages and the palm mask for every "
                    "radiograph of INPUT and write them as pre-annotations: CVAT (COCO 1.0 with a "
                    "stage attribute per box and the palm polygon; labels for the task in "
                    "cvat-labels.json) or Label Studio (tasks.json with predictions, the "
                    "labelling interface in label-studio-config.xml). Correct them in the tool, "
                    "export, and read them back with import-labels.")
    e.add_argument("input", help="folder (searched recursively), a .txt list of paths, or one file")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--format", required=True, choices=["cvat", "label-studio"])
    e.add_argument("--meta", default=None,
                   help="CSV id,sex[,chronological_age] (stages need the sex; without it boxes "
                        "and masks are still exported)")
    e.add_argument("--image-url", default="/data/local-files/?d=",
                   help="Label Studio: prefix of data.image before the path relative to INPUT "
                        "(default: Label Studio's local files URL)")
    e.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help=f"pipeline recipe (default {DEFAULT_PIPELINE})")
    for stage in ("segment", "detect", "grade"):
        e.add_argument(f"--{stage}", default=None, metavar="RECIPE|WEIGHTS",
                       help=f"swap the {stage} stage: a recipe file or a trained weights folder")
    e.add_argument("--device", default=None)
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=handler("precise_baa.labels.cli:run_export"))

    i = sub.add_parser(
        "import-labels", help="read a corrected CVAT / Label Studio export into a COCO manifest",
        description="Read a labelling tool's export (CVAT: COCO 1.0 zip or JSON; Label Studio: "
                    "JSON export) into the project's COCO manifest, with palm polygons as masks "
                    "in masks/ beside it; train on it with precise-baa train detect|grade.")
    i.add_argument("export", help="the tool's export file (.zip or .json)")
    i.add_argument("--format", required=True, choices=["cvat", "label-studio"])
    i.add_argument("--out", required=True, help="manifest to write, e.g. data/labelled/annotations.json")
    i.add_argument("--images", default=None,
                   help="folder the images' names are relative to (default: the folder "
                        "export-labels read, from export.json beside the export)")
    i.add_argument("--meta", default=None, help="CSV id,sex[,chronological_age] for the manifest")
    i.add_argument("--standard", default=None, choices=["rus-chn", "tw3"],
                   help="stage convention of the stage values (default: the exporting grader's, "
                        "else rus-chn)")
    i.add_argument("--accept-predictions", action="store_true",
                   help="Label Studio: take the predictions of tasks nobody submitted as they are "
                        "(default: leave such tasks out)")
    i.set_defaults(func=handler("precise_baa.labels.cli:run_import"))


def run_export(args: argparse.Namespace) -> int:
    from .export import export_labels

    res = export_labels(args.input, args.out, format=args.format, pipeline=args.pipeline,
                        overrides={"segment": args.segment, "detect": args.detect,
                                   "grade": args.grade},
                        meta=args.meta, device=args.device, batch_size=args.batch_size,
                        image_url=args.image_url, progress=not args.quiet)
    print(f"{res['n']} radiographs: {res['with_all_13']} with all 13 ROIs, {res['rejected']} "
          f"without a hand crop; wrote {', '.join(res['files'])} and export.json to {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .importer import import_labels

    res = import_labels(args.export, args.out, format=args.format, images_dir=args.images,
                        meta=args.meta, standard=args.standard,
                        accept_predictions=args.accept_predictions)
    left = f", {res['unreviewed']} unreviewed task(s) left out" if res["unreviewed"] else ""
    print(f"{res['images']} images ({res['boxes']} boxes, {res['stages']} with a stage, "
          f"{res['masks']} masks; {res['empty']} without labels left out{left}) -> {res['manifest']}")
    return 0
