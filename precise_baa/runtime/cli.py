"""``precise-baa export WEIGHTS --format onnx`` (argparse only at import)."""

from __future__ import annotations

import argparse


def add_commands(top: argparse._SubParsersAction) -> None:
    from ..cli import handler

    p = top.add_parser(
        "export", help="export a trained stage's network for a deployment runtime (ONNX)",
        description="Export the network of a weights folder to ONNX (opset >= 17, dynamic batch "
                    "axis), check that onnxruntime reproduces PyTorch's outputs, and record the "
                    "file's sha256 in the folder's card.json. A recipe (or a pipeline stage "
                    "line) with `runtime: onnxruntime` then runs it. Exports: the unet "
                    "segmenter and the graders. The mmdet detectors (DetectoRS, Faster R-CNN) "
                    "do not export: they run in PyTorch.")
    p.add_argument("weights", metavar="WEIGHTS", help="trained weights folder, e.g. weights/my-grader")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--out", default=None, metavar="FILE_OR_DIR",
                   help="default: WEIGHTS/model.onnx, recorded in WEIGHTS/card.json; a folder: a "
                        "copy of the weights folder with the export recorded in the copy's card; "
                        "a name ending in .onnx: that file alone (not recorded unless in WEIGHTS)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing onnxruntime's outputs with PyTorch's")
    p.set_defaults(func=handler("precise_baa.runtime.cli:run_export"))


def run_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    result = export_onnx(args.weights, args.out, opset=args.opset, check=not args.no_check)
    print(result.summary())
    return 0
