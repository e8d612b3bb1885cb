"""CLI commands over the whole pipeline: ``score``, ``demo``, ``merge`` (argparse only here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PIPELINE = "stages/pipelines/default.yaml"


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help=f"pipeline recipe naming one recipe/weights per stage (default {DEFAULT_PIPELINE})")
    for stage in ("segment", "detect", "grade", "score"):
        p.add_argument(f"--{stage}", default=None, metavar="RECIPE|WEIGHTS",
                       help=f"swap the {stage} stage: a recipe file or a trained weights folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="autocast precision on GPU (default fp32)")
    p.add_argument("--trust-recipe", action="store_true",
                   help="run .py (mmdet) recipes from outside the project's stages/ folder: they are "
                        "Python code, executed when loaded")
    p.add_argument("--allow-unverified-weights", action="store_true",
                   help="load weights folders without their card.json (no sha256 to check the "
                        "tensors); every result is flagged weights_unverified")


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=4, help="radiographs per model batch (default 4)")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0)")
    p.add_argument("--no-pictures", action="store_true",
                   help="skip overlays, thumbnails, plots and report.html (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    from ..cli import handler

    s = sub.add_parser(
        "score", help="score a folder / file list / file of radiographs with the whole pipeline",
        description="Score radiographs: segment -> detect -> grade -> score. Writes results.csv, "
                    "assessments.jsonl, overlays/ and report.html to --out. Exit code 1 when any "
                    "input failed (error rows); rejected inputs are reported, not failures.")
    s.add_argument("input", help="folder (searched recursively), a .txt list of paths, or one file")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--meta", default=None, help="CSV with columns id,sex[,chronological_age]; "
                   "id = path relative to INPUT without suffix. DICOM tags fill what it lacks.")
    s.add_argument("--resume", action="store_true", help="continue a run: skip inputs already done")
    s.add_argument("--dicom-out", action="store_true",
                   help="also write DICOM results for DICOM inputs: OUT/dicom/ID_sr.dcm (Structured "
                        "Report) and ID_sc.dcm (overlay Secondary Capture), in the source study")
    s.add_argument("--shard", default=None, metavar="K/N",
                   help="score only shard K of N (stable by id); output goes to OUT/shard-K-of-N; "
                        "combine with `precise-baa merge OUT`")
    _pipeline_args(s)
    _batch_args(s)
    s.set_defaults(func=handler("precise_baa.batch.cli:cmd_score"))

    d = sub.add_parser("demo", help="score the bundled example phantoms with the bundled weights",
                       description="Score examples/ with the bundled phantom-trained weights and "
                                   "write a report (not clinical results).")
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo; replaced)")
    _pipeline_args(d)
    d.set_defaults(func=handler("precise_baa.batch.cli:cmd_demo"))

    m = sub.add_parser("merge", help="combine OUT/shard-*/ results into OUT/results.csv and report.html")
    m.add_argument("out", help="the --out folder the shards were written under")
    m.set_defaults(func=handler("precise_baa.batch.cli:cmd_merge"))


def add_evaluate(sub) -> None:
    from ..cli import handler

    e = sub.add_parser(
        "pipeline", help="the paper's tables for the whole pipeline on a labelled COCO set",
        description="Bone-age MAE/RMSE by age group, within-1-year accuracy by sex, per-ROI stage "
                    "accuracy, detection AP per ROI, segmentation Dice and rejection rate; written as "
                    "evaluation.md + evaluation.json + PNG plots.")
    e.add_argument("--coco", required=True, help="COCO manifest with stages, sex and bone_age")
    e.add_argument("--images", default=None, help="images folder (default: beside the manifest, images/)")
    e.add_argument("--out", required=True, help="output folder for the report")
    e.add_argument("--batch-size", type=int, default=4)
    _pipeline_args(e)
    e.set_defaults(func=handler("precise_baa.batch.cli:cmd_evaluate"))

    a = sub.add_parser(
        "ages", help="a pipeline's bone ages against reference readings (no ROI labels needed)",
        description="Score a folder (results in OUT/scored/) and compare the bone ages with a labels "
                    "CSV: counts with rejection reasons, MAE, RMSE, mean bias, bias-removed MAE, "
                    "Pearson/Spearman r, by age group and sex; evaluation.md + evaluation.json, "
                    "scatter, Bland-Altman and a contact sheet of every overlay. Exit code 1 when a "
                    "label line was left out or an input errored.")
    a.add_argument("--images", required=True, help="folder of radiographs (searched recursively)")
    a.add_argument("--labels", required=True,
                   help="CSV id,sex,bone_age[,chronological_age]; id = path relative to --images "
                        "without suffix; columns may be named bone_age_months / bone_age_years")
    a.add_argument("--out", required=True, help="output folder (outside --images)")
    a.add_argument("--age-unit", choices=["months", "years"], default=None,
                   help="unit of the CSV's ages (default: from a _months / _years column suffix)")
    a.add_argument("--batch-size", type=int, default=4, help="radiographs per model batch (default 4)")
    a.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted scoring run in OUT")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    _pipeline_args(a)
    a.set_defaults(func=handler("precise_baa.batch.ages:cmd_evaluate_ages"))


def cmd_evaluate(args) -> int:
    from ..evaluation import evaluate_pipeline

    res = evaluate_pipeline(_build(args), args.coco, args.images, args.out, batch_size=args.batch_size)
    a = res["bone_age"]["all"]
    mae = f"{a['mae']:.3f} y" if a["mae"] is not None else "-"
    print(f"MAE {mae} over {a['n']} scored images; rejected {res['rejected']}/{res['n_images']}; "
          f"report: {Path(args.out) / 'evaluation.md'}")
    return 0


def _overrides(args) -> dict:
    return {s: getattr(args, s) for s in ("segment", "detect", "grade", "score") if getattr(args, s)}


def _build(args):
    from ..pipeline import Pipeline

    return Pipeline.from_recipe(args.pipeline, overrides=_overrides(args), device=args.device,
                                precision=args.precision,
                                trust=getattr(args, "trust_recipe", False),
                                allow_unverified=getattr(args, "allow_unverified_weights", False))


def _finish(summary, quiet: bool = False) -> int:
    print(summary.line(), file=sys.stderr)
    if summary.report:
        print(f"report: {summary.report}")
    print(f"results: {summary.out_dir / 'results.csv'}")
    return 1 if summary.failed else 0


def cmd_score(args) -> int:
    from . import score_folder, shard_dir

    out = shard_dir(args.out, args.shard) if args.shard else Path(args.out)
    pipe = _build(args)
    if pipe.phantom_trained:
        print("note: these weights are phantom-trained (synthetic radiographs only): results are "
              "not clinical", file=sys.stderr)
    dicom = None
    if args.dicom_out:
        from ..dicom.writer import DicomWriter

        dicom = DicomWriter(out)
    summary = score_folder(
        pipe, args.input, out, meta=args.meta, batch_size=args.batch_size, workers=args.workers,
        resume=args.resume, shard=args.shard, pictures=not args.no_pictures, progress=not args.quiet,
        on_result=dicom,
    )
    if dicom is not None:
        print(dicom.line(), file=sys.stderr)
    return _finish(summary)


def cmd_demo(args) -> int:
    import shutil

    from ..errors import PreciseBaaError
    from ..paths import examples_dir, resolve
    from . import score_folder

    pipeline_file = resolve(args.pipeline)
    try:
        pipe = _build(args)
    except PreciseBaaError as e:
        raise PreciseBaaError(
            f"the demo pipeline {pipeline_file} cannot be built: {e}\n"
            "The bundled demo weights live in weights/ (see weights/MANIFEST.json); "
            "retrain them with scripts/train_demo_weights.sh") from None
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    ex = examples_dir()
    meta = ex / "meta.csv"
    print("Scoring the bundled phantom radiographs in examples/ with phantom-trained weights "
          "(synthetic data: not clinical results).", file=sys.stderr)
    summary = score_folder(pipe, ex, out, meta=meta if meta.is_file() else None,
                           batch_size=4, title="demo on phantoms")
    return _finish(summary)


def cmd_merge(args) -> int:
    from . import merge_shards

    print(f"report: {merge_shards(args.out)}")
    return 0
