"""``precise-baa`` command line: a thin layer over the library.

Commands are declared here; heavy modules (torch, mmdet) are imported only when a command
runs, so table-only commands (``stage-score``, ``--help``) start fast. Stage packages add their
``train`` / ``evaluate`` sub-commands from their own light ``cli.py`` (argparse only).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands: each may define add_train(sub), add_evaluate(sub) and
# add_commands(top) using only argparse at import time.
_CONTRIBUTORS = (
    "precise_baa.batch.cli",
    "precise_baa.synth.cli",
    "precise_baa.segment.cli",
    "precise_baa.detect.cli",
    "precise_baa.grade.cli",
    "precise_baa.labels.cli",
    "precise_baa.dicom.cli",
    "precise_baa.runtime.cli",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``precise-baa score: error: argument --batch-size: ...``
    and where to look, instead of the usage block (sub-commands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# argparse `type=` checks: a bad value is a one-line usage error (exit 2) before anything runs
def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def finite_non_negative_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def shard_arg(text: str) -> str:
    """``K/N`` with 1 <= K <= N (returned as given)."""
    from .batch.shards import parse_shard
    from .errors import InputError

    try:
        parse_shard(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"bad --shard {text!r}: ")) from None
    return text


def max_pixels_arg(text: str) -> int:
    from .imaging import parse_max_pixels

    try:
        return parse_max_pixels(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def handler(target: str):
    """``"module:function"`` resolved when the command runs (keeps start-up light)."""

    def run(args: argparse.Namespace) -> int | None:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def add_training_options(p: argparse.ArgumentParser, batch_help: str) -> None:
    """The options every torch-native ``train STAGE`` command shares (see training.fit)."""
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's training.epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help=batch_help)
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--val-fraction", type=float, default=None, help="share of images held out")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="data loader worker processes (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-weights", default=None, help="weights folder to start from (fine-tuning)")
    p.add_argument("--no-cache", action="store_true", help="re-read images every epoch (large sets)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------------------------
def parse_stages_arg(text: str) -> dict[str, str]:
    """``"radius=7,ulna=5,..."`` -> ``{"radius": "7", ...}``; duplicates and bad items are errors."""
    from .errors import InputError

    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InputError(f"bad --stages item {item!r}: expected ROI=STAGE, e.g. radius=7")
        if key in out:
            raise InputError(f"ROI {key!r} given twice in --stages")
        out[key] = value
    return out


def cmd_stage_score(args: argparse.Namespace) -> int:
    from .score import create_scorer

    scorer = create_scorer(args.standard, implementation=args.scorer,
                           deviation_threshold_years=args.threshold)
    result = scorer.score(parse_stages_arg(args.stages), args.sex, args.age)
    out = result.model_dump(mode="json", exclude_none=True)
    try:
        text = json.dumps(out, indent=2 if args.pretty else None, allow_nan=False)
    except ValueError:  # NaN / infinity are not JSON: never print them
        from .errors import InputError

        raise InputError("the result holds a value that is not a finite number; check --age and "
                         "--threshold") from None
    print(text)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__
    from .registry import STAGES, implementations

    print(f"precise-baa {__version__}")
    for stage in STAGES:
        try:
            names = ", ".join(sorted(implementations(stage)))
        except Exception as e:  # a stage whose stack does not import says why
            names = f"unavailable ({type(e).__name__}: {e})"
        print(f"  {stage:8s} {names}")
    if args.stack:
        import importlib.metadata as md

        for pkg in ("torch", "torchvision", "segmentation-models-pytorch", "timm", "mmcv",
                    "mmengine", "mmdet", "opencv-python", "pydicom", "safetensors"):
            try:
                print(f"  {pkg:28s} {md.version(pkg)}")
            except md.PackageNotFoundError:
                print(f"  {pkg:28s} not installed")
        try:
            from mmcv.ops import RoIAlign, SAConv2d, nms  # noqa: F401

            print("  mmcv compiled ops            ok")
        except Exception as e:
            print(f"  mmcv compiled ops            missing ({e})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="precise-baa",
        description="Bone age assessment from hand radiographs (segment -> detect -> grade -> score).",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    modules = []
    for name in _CONTRIBUTORS:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if not (e.name and name.startswith(e.name)):
                raise
    for mod in modules:
        if hasattr(mod, "add_commands"):
            mod.add_commands(sub)

    s = sub.add_parser("stage-score", help="score 13 per-bone stages into a bone age (stage 4 only)",
                       description="Score 13 per-bone maturity stages into a maturity score and bone age.")
    s.add_argument("--standard", default="rus-chn", choices=["rus-chn", "tw3"])
    s.add_argument("--scorer", default="table", choices=["table", "levels"],
                   help="table: the standard's points (default); levels: plain sum of stage indices")
    s.add_argument("--sex", required=True, help="M or F (male/female)")
    s.add_argument("--stages", required=True,
                   help="all 13 ROIs as ROI=STAGE, comma separated: radius=7,ulna=5,mc1=...,dp5=6 "
                        "(TW3 also takes letters A-I)")
    s.add_argument("--age", type=float, default=None, help="chronological age in years (optional)")
    s.add_argument("--threshold", type=finite_non_negative_float, default=2.0,
                   help="flag |bone age - age| beyond this many years (default 2)")
    s.add_argument("--pretty", action="store_true", help="indent the JSON")
    s.set_defaults(func=cmd_stage_score)

    train = sub.add_parser("train", help="train one stage on your data (see: train STAGE --help)")
    train_sub = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    evaluate = sub.add_parser("evaluate", help="evaluate one stage or the whole pipeline")
    eval_sub = evaluate.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for mod in modules:
        if hasattr(mod, "add_train"):
            mod.add_train(train_sub)
        if hasattr(mod, "add_evaluate"):
            mod.add_evaluate(eval_sub)

    i = sub.add_parser("info", help="version, registered stage implementations, installed stack")
    i.add_argument("--stack", action="store_true", help="also check torch / mmcv ops / mmdet")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import PreciseBaaError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except PreciseBaaError as e:
        print(f"precise-baa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("precise-baa: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
