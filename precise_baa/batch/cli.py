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
    from ..cli import non_negative_int, positive_int

    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="radiographs per model batch (default 4); results do not depend on it")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="local engine: decoding worker processes (default 0); ray engine: detector "
                        "actors (default 0: one per GPU of the cluster, else as many as the CPUs "
                        "hold; the segment and grade pools scale with it)")
    p.add_argument("--no-pictures", action="store_true",
                   help="skip overlays, thumbnails, plots and report.html (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    from ..cli import handler, max_pixels_arg, shard_arg

    s = sub.add_parser(
        "score", help="score a folder / file list / file of radiographs with the whole pipeline",
        description="Score radiographs: segment -> detect -> grade -> score. Writes results.csv "
                    "(one row per input file), assessments.jsonl, skipped.csv (paths that are not "
                    "inputs, with the reason), run.json, overlays/ and report.html to --out. An "
                    "input's id is its path relative to INPUT without suffix (ward3/p001); inputs "
                    "that would share an id (a.png, a.jpg) keep their suffix (a.png, a.jpg). Hidden "
                    "files and folders are skipped; linked folders are followed once. Exit code 1 "
                    "when any input failed (error rows) or has no result; rejected inputs are "
                    "reported, not failures; 2 for bad arguments.")
    s.add_argument("input", help="folder (searched recursively), a .txt list of paths, or one file")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--meta", default=None, help="CSV (UTF-8) with columns id,sex[,chronological_age]; "
                   "id = path relative to INPUT without suffix, or with it for inputs whose ids keep "
                   "it. DICOM tags fill what it lacks.")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: repair a last line cut short, skip inputs done")
    s.add_argument("--max-pixels", type=max_pixels_arg, default=None, metavar="N",
                   help="refuse images whose header declares more than N pixels (width x height), "
                        "before decoding; suffix M for megapixels (default 100M, or "
                        "PRECISE_BAA_MAX_PIXELS)")
    s.add_argument("--dicom-out", action="store_true",
                   help="also write DICOM results for DICOM inputs: OUT/dicom/ID_sr.dcm (Structured "
                        "Report) and ID_sc.dcm (overlay Secondary Capture), in the source study")
    s.add_argument("--shard", type=shard_arg, default=None, metavar="K/N",
                   help="score only shard K of N (stable by id); output goes to OUT/shard-K-of-N; "
                        "combine with `precise-baa merge OUT`")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data, decoding in tasks and each "
                        "stage in its own pool of actors (pip install 'precise-baa[ray]'); same "
                        "outputs")
    s.add_argument("--address", default=None, metavar="ADDR",
                   help="with --engine ray: join this running Ray cluster (auto, HOST:6379 or "
                        "ray://HOST:10001) instead of starting a local one")
    _pipeline_args(s)
    _batch_args(s)
    s.set_defaults(func=handler("precise_baa.batch.cli:cmd_score"))

    d = sub.add_parser("demo", help="score the bundled example phantoms with the bundled weights",
                       description="Score examples/ with the bundled phantom-trained weights and "
                                   "write a report (not clinical results).")
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo; replaced)")
    _pipeline_args(d)
    d.set_defaults(func=handler("precise_baa.batch.cli:cmd_demo"))

    m = sub.add_parser("merge", help="combine OUT/shard-*/ results into OUT/results.csv and report.html",
                       description="Combine OUT/shard-K-of-N/ into OUT/results.csv, assessments.jsonl, "
                                   "skipped.csv and report.html. Every shard 1..N must be present "
                                   "and finished (its run.json), else the missing ones are named and "
                                   "the exit code is 1.")
    m.add_argument("out", help="the --out folder the shards were written under")
    m.add_argument("--allow-partial", action="store_true",
                   help="merge the shards present even when some are missing or unfinished (warning)")
    m.set_defaults(func=handler("precise_baa.batch.cli:cmd_merge"))


def add_evaluate(sub) -> None:
    from ..cli import handler, non_negative_int, positive_int

    e = sub.add_parser(
        "pipeline", help="the paper's tables for the whole pipeline on a labelled COCO set",
        description="Bone-age MAE/RMSE by age group, within-1-year accuracy by sex, per-ROI stage "
                    "accuracy, detection AP per ROI, segmentation Dice and rejection rate; written as "
                    "evaluation.md + evaluation.json + PNG plots.")
    e.add_argument("--coco", required=True, help="COCO manifest with stages, sex and bone_age")
    e.add_argument("--images", default=None, help="images folder (default: beside the manifest, images/)")
    e.add_argument("--out", required=True, help="output folder for the report")
    e.add_argument("--batch-size", type=positive_int, default=4)
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
    a.add_argument("--batch-size", type=positive_int, default=4,
                   help="radiographs per model batch (default 4)")
    a.add_argument("--workers", type=non_negative_int, default=0,
                   help="decoding worker processes (default 0)")
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
    from .loop import names

    if summary.missing:
        print(f"error: {len(summary.missing)} input(s) have no result in results.csv: "
              f"{names(summary.missing)}; run again with --resume", file=sys.stderr)
    print(summary.line(), file=sys.stderr)
    if summary.report:
        print(f"report: {summary.report}")
    print(f"results: {summary.out_dir / 'results.csv'}")
    return 1 if summary.failed else 0


def _spec(args):
    from .engines import PipelineSpec

    return PipelineSpec(recipe=args.pipeline, overrides=_overrides(args), device=args.device,
                        precision=args.precision, trust=getattr(args, "trust_recipe", False),
                        allow_unverified=getattr(args, "allow_unverified_weights", False))


def cmd_score(args) -> int:
    from ..errors import InputError
    from . import prepare_output, read_meta, score_folder, shard_dir

    if args.address is not None and args.engine != "ray":
        raise InputError(f"--address {args.address}: joins a Ray cluster; add --engine ray")
    engine = args.engine
    if args.engine == "ray":
        from .ray_engine import RayEngine, require_ray

        require_ray()  # says how to install it
        engine = RayEngine(address=args.address, workers=args.workers)
        engine.check_address()  # before minutes of loading
    out = shard_dir(args.out, args.shard) if args.shard is not None else Path(args.out)
    prepare_output(out)  # a bad --out or --meta fails now, not after the models are loaded
    meta = read_meta(args.meta) if args.meta else None
    if args.engine == "ray":  # the actors build the pipeline; built here once (CPU) to check it
        target = _spec(args)
        phantom = target.build(device="cpu").phantom_trained
    else:
        target = _build(args)
        phantom = target.phantom_trained
    if phantom:
        print("note: these weights are phantom-trained (synthetic radiographs only): results are "
              "not clinical", file=sys.stderr)
    dicom = None
    if args.dicom_out:
        from ..dicom.writer import DicomWriter

        dicom = DicomWriter(out)
    summary = score_folder(
        target, args.input, out, meta=meta, batch_size=args.batch_size, workers=args.workers,
        resume=args.resume, shard=args.shard, pictures=not args.no_pictures, progress=not args.quiet,
        on_result=dicom, max_pixels=args.max_pixels, engine=engine,
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
        if not out.is_dir():
            raise PreciseBaaError(f"--out {out}: is a file, not a folder")
        if any(out.iterdir()) and not ((out / "run.json").is_file() or (out / "assessments.jsonl").is_file()):
            raise PreciseBaaError(f"--out {out}: holds other files (not an earlier demo output), so it "
                                  "is not replaced; choose another --out")
        shutil.rmtree(out)
    ex = examples_dir()
    meta = ex / "meta.csv"
    print("Scoring the bundled phantom radiographs in examples/ with phantom-trained weights "
          "(synthetic data: not clinical results).", file=sys.stderr)
    summary = score_folder(pipe, ex, out, meta=meta if meta.is_file() else None,
                           batch_size=4, title="demo on phantoms")
    return _finish(summary)


def cmd_merge(args) -> int:
    from .shards import IncompleteShardsError, check_shards, merge_shards

    check = check_shards(args.out)
    if not check.complete and args.allow_partial:
        print(f"warning: partial merge: {check.problems()}", file=sys.stderr)
    try:
        report = merge_shards(args.out, allow_partial=args.allow_partial)
    except IncompleteShardsError as e:
        print(f"precise-baa: error: {e}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    print(f"results: {Path(args.out) / 'results.csv'}")
    return 0
