"""Training from partial labels, measured on phantoms (where every label is known).

Two experiments; each writes ``WORK/PART.json`` and, with ``--markdown FILE``, appends a table:

``--part grade``: the lite grader trained on the same phantoms (``--train`` images, 15 % of
them validation) for the same epochs with
  - full supervision: 13 stages per image (``--supervision stages``);
  - bone-age only: the manifest's stages removed (``--supervision bone-age``);
  - mixed: stages kept on ``--stage-share`` of the images, removed elsewhere (``mixed``);
  - stages-only baseline: the same stage-labelled share alone (what mixed adds to);
  - ablations of the bone-age loss (``--ablations``): without the hand prior, without the
    concentration term, with the l2 form of the hand prior instead of the soft one; mixed with
    a weaker hand prior (0.3) and none, with the stage loss weighted x1 and x3 (default 6),
    with the hand prior also on stage-labelled images (default: only on the others).
Each is evaluated on ``--test`` held-out phantoms with ground-truth boxes
(:func:`precise_baa.grade.evaluate.evaluate_grader`): per-ROI stage accuracy (exact, within one)
and the bone-age MAE of the predicted stages (a phantom's bone age is its true stages' score).

``--part detect``: detector self-training across a phantom style. A teacher is trained on
labelled ``raw``-style phantoms only; it pseudo-labels unlabelled ``preprocessed``-style phantoms
(palm masks from the bundled segmenter, boxes kept when all 13 pass the anatomy checks with
score >= the bar) and a student trained from the teacher's weights on both
(:func:`precise_baa.detect.train.self_train_detector`). A control continues the teacher on its
labelled images alone for the student's epochs. All are evaluated (AP, COCO) on held-out
preprocessed phantoms and on held-out raw ones.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/partial_labels.py --part grade \\
        --train 400 --test 100 --epochs 45 --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from precise_baa.synth import ensure_dataset

GRADE_RECIPE = "stages/grade/densenet-attention-lite.yaml"
DETECT_RECIPE = "stages/detect/detectors-cascade-rcnn-lite.py"


def strip_stages(manifest: Path, out: Path, keep_share: float, seed: int) -> tuple[Path, int]:
    """A copy of ``manifest`` with stages removed from all images but ``keep_share`` of them."""
    data = json.loads(manifest.read_text())
    ids = sorted(im["id"] for im in data["images"])
    keep = set(random.Random(seed).sample(ids, round(keep_share * len(ids)))) if keep_share else set()
    for a in data["annotations"]:
        if a["image_id"] not in keep:
            a.pop("stage", None)
            a.pop("stage_tw3", None)
    out.write_text(json.dumps(data))
    return out, len(keep)


def only_images(manifest: Path, out: Path, ids: set[int]) -> Path:
    data = json.loads(manifest.read_text())
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    out.write_text(json.dumps(data))
    return out


LEVEL_ONLY = "reference: no image, each bone at the hand level of its true bone age"


def level_only(test: Path, standard: str) -> dict:
    """What the bone-age label alone says about the stages, with no image looked at: each bone
    at the stage nearest (in points fraction) the hand's level that the image's true bone age
    implies (the hand prior's centre, :meth:`DifferentiableScorer.level_target`). A grader
    that reads the bones must beat this, but it has to find the level from the image."""
    from precise_baa.data import load_coco
    from precise_baa.grade.evaluate import grading_metrics
    from precise_baa.rois import ROI_KEYS
    from precise_baa.score.torch import SEXES, DifferentiableScorer

    scorer = DifferentiableScorer(standard)
    pred, true, sexes, ages = [], [], [], []
    for r in load_coco(test, None).records:
        stages = r.stages_for(standard)
        if r.bone_age is None or r.sex is None or not stages:
            continue
        sex = torch.tensor([SEXES.index(r.sex)])
        level = scorer.level(torch.tensor([float(r.bone_age)], dtype=torch.float64), sex)
        pred.append({k: int(scorer.level_target(i, level, sex, 0.05).argmax())  # any sd
                     for i, k in enumerate(ROI_KEYS)})
        true.append(stages)
        sexes.append(r.sex)
        ages.append(r.bone_age)
    m = grading_metrics(pred, true, sexes, standard, ages)
    return {"run": LEVEL_ONLY, "supervision": "none", "manifest": Path(test).name,
            "best_epoch": None, "train_s": None, "exact": m["accuracy"]["mean_exact"],
            "within_one": m["accuracy"]["mean_within_one"],
            "bone_age_mae": m["bone_age"]["mae_vs_true_stages"], "bone_age_mae_vs_label": None}


# --------------------------------------------------------------------------------------------
def run_grade(args, work: Path) -> dict:
    from precise_baa.grade.evaluate import evaluate_grader
    from precise_baa.grade.train import train_grader
    from precise_baa.registry import load_stage
    from precise_baa.schemas import read_yaml

    train = ensure_dataset(work / "grade-train", args.train, 3000, size=args.size, progress=False)
    test = ensure_dataset(work / "grade-test", args.test, 3001, size=args.size, progress=False)
    ba_only, _ = strip_stages(train, train.parent / "bone-age-only.json", 0.0, args.seed)
    mixed, n_staged = strip_stages(train, train.parent / "mixed.json", args.stage_share, args.seed)
    staged_ids = {im["id"] for im in json.loads(mixed.read_text())["images"]
                  if any(a.get("stage") is not None and a["image_id"] == im["id"]
                         for a in json.loads(mixed.read_text())["annotations"])}
    staged_only = only_images(train, train.parent / "stage-share-only.json", staged_ids)
    base = read_yaml(GRADE_RECIPE)
    runs = [("full supervision (stages)", train, "stages", base),
            ("bone-age only", ba_only, "bone-age", base),
            (f"mixed ({n_staged} of {args.train} with stages)", mixed, "mixed", base),
            (f"stages only, the same {n_staged} images", staged_only, "stages", base)]
    if args.ablations:
        for name, change in (("bone-age only, no hand prior", {"hand_prior_weight": 0.0}),
                             ("bone-age only, no concentration term",
                              {"concentration_weight": 0.0}),
                             ("bone-age only, l2 hand prior", {"hand_prior": "l2",
                                                               "hand_prior_weight": 2.0})):
            runs.append((name, ba_only, "bone-age",
                         {**base, "training": {**base.get("training", {}), **change}}))
        for weight in (0.3, 0.0):  # mixed: the stage labels anchor the bones, not the prior
            runs.append((f"mixed, hand prior weight {weight}", mixed, "mixed",
                         {**base, "training": {**base.get("training", {}),
                                               "hand_prior_weight": weight}}))
        for weight in (1.0, 3.0):  # mixed: the stage loss's weight (default 6)
            runs.append((f"mixed, stage loss x{weight:g}", mixed, "mixed",
                         {**base, "training": {**base.get("training", {}),
                                               "mixed_stage_weight": weight}}))
        runs.append(("mixed, hand prior also on stage-labelled images", mixed, "mixed",
                     {**base, "training": {**base.get("training", {}),
                                           "hand_prior_on_staged": True}}))
    rows = [level_only(test, base.get("standard", "rus-chn"))]
    print(json.dumps(rows[0]), flush=True)
    for i, (name, manifest, supervision, recipe) in enumerate(runs):
        if args.only and i not in args.only:
            continue
        out = work / "grade-weights" / f"run{i}"
        t0 = time.perf_counter()
        fit = train_grader(recipe, manifest, train.parent / "images", out, epochs=args.epochs,
                           device="cpu", seed=args.seed, supervision=supervision,
                           progress=False)
        seconds = time.perf_counter() - t0
        grader = load_stage("grade", weights=out, device="cpu")
        res = evaluate_grader(grader, test, None, work / "grade-eval" / f"run{i}", progress=False)
        acc, ba = res["accuracy"], res["bone_age"]
        row = {"run": name, "supervision": supervision, "manifest": manifest.name,
               "best_epoch": fit.best_epoch, "train_s": round(seconds),
               "exact": acc["mean_exact"], "within_one": acc["mean_within_one"],
               "bone_age_mae": ba["mae_vs_true_stages"],
               "bone_age_mae_vs_label": (ba.get("vs_reference") or {}).get("all", {}).get("mae")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (work / "grade.json").write_text(json.dumps(
            {"args": vars(args), "rows": rows}, indent=1, default=str))
    return {"args": vars(args), "rows": rows}


def grade_markdown(res: dict, command: str) -> str:
    a = res["args"]
    lines = [f"### {time.strftime('%Y-%m-%d')}: `{command}`", "",
             f"Lite grader (`{GRADE_RECIPE}`), {a['train']} training phantoms ({a['size']} px, "
             f"15 % of them validation), {a['epochs']} epochs each, seed {a['seed']}, CPU; "
             f"evaluated on {a['test']} held-out phantoms with ground-truth boxes.", "",
             "| training labels | exact stage | within one stage | bone-age MAE (y) | best epoch "
             "| train s |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['run']} | {100 * r['exact']:.1f} % | {100 * r['within_one']:.1f} % | "
                     f"{r['bone_age_mae']:.3f} | {r['best_epoch'] or '-'} | {r['train_s'] or '-'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def run_detect(args, work: Path) -> dict:
    from precise_baa.detect.evaluate import evaluate_detector
    from precise_baa.detect.train import self_train_detector
    from precise_baa.registry import load_stage

    raw = ensure_dataset(work / "det-raw", args.det_train, 4000, size=args.size, style="raw",
                         progress=False)
    unl = ensure_dataset(work / "det-unlabelled", args.det_unlabelled, 4001, size=args.size,
                         style="preprocessed", progress=False)
    test_pre = ensure_dataset(work / "det-test-pre", args.det_test, 4002, size=args.size,
                              style="preprocessed", progress=False)
    test_raw = ensure_dataset(work / "det-test-raw", args.det_test, 4003, size=args.size,
                              style="raw", progress=False)
    recipe: str | Path = DETECT_RECIPE
    if args.det_input_size:  # the lite detector at a smaller input (CPU time)
        recipe = work / f"detect-lite-{args.det_input_size}.yaml"
        recipe.write_text(f"stage: detect\nimplementation: mmdet\nconfig: {DETECT_RECIPE}\n"
                          f"input_size: {args.det_input_size}\n")
    out = work / "det-weights"
    t0 = time.perf_counter()
    result = self_train_detector(
        recipe, raw, None, out, unlabelled=unl.parent / "images",
        teacher_epochs=args.teacher_epochs, epochs=args.student_epochs, rounds=args.rounds,
        threshold=args.pseudo_threshold, seed=args.seed, workers=0)
    seconds = time.perf_counter() - t0
    # control: the teacher trained as long again on its labelled images only (no pseudo-labels),
    # so what the student gains is not mistaken for the effect of more epochs
    from precise_baa.detect.train import train_detector

    control = work / "det-control"
    train_detector(recipe, raw, None, control, epochs=args.student_epochs * args.rounds,
                   init_weights=result.teacher, seed=args.seed, workers=0)
    rows = []
    for name, weights in (("teacher (raw labels only)", result.teacher),
                          ("control: teacher + the student's epochs, raw labels only", control),
                          *((f"student, round {i + 1}", w) for i, w in enumerate(result.students))):
        det = load_stage("detect", weights=weights, device="cpu")
        row = {"model": name}
        for label, test in (("preprocessed", test_pre), ("raw", test_raw)):
            ev = evaluate_detector(det, test, progress=False)
            row[label] = {"map50": ev["map50"], "map": ev["map"], "all_13": ev["all_13_found"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = {"args": vars(args), "rows": rows, "rounds": result.rounds, "seconds": round(seconds)}
    (work / "detect.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def detect_markdown(res: dict, command: str) -> str:
    a = res["args"]
    lines = [f"### {time.strftime('%Y-%m-%d')}: `{command}`", "",
             f"Lite DetectoRS (`{DETECT_RECIPE}`"
             f"{', input ' + str(a['det_input_size']) + ' px' if a.get('det_input_size') else ''}"
             f"), CPU; self-training (teacher, pseudo-labels, "
             f"student) took {res['seconds']} s. Teacher: "
             f"{a['det_train']} labelled raw-style phantoms ({a['size']} px, 15 % validation), "
             f"{a['teacher_epochs']} epochs. Unlabelled: {a['det_unlabelled']} preprocessed-style "
             f"phantoms (masks from the bundled segmenter), pseudo-boxes kept when all 13 pass the "
             f"anatomy checks with score >= {a['pseudo_threshold']}. Student: from the teacher's "
             f"weights, {a['student_epochs']} epochs on both sets, {a['rounds']} round(s); the control "
             f"continues the teacher for as many epochs on the labelled set alone. Tested on "
             f"{a['det_test']} held-out phantoms of each style.", "",
             "| model | pseudo-labelled kept | AP@0.5 pre. | mAP pre. | all 13 found pre. "
             "| AP@0.5 raw | mAP raw | all 13 found raw |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    kept = ["-", "-"] + [f"{r['kept']} / {r['unlabelled']}" for r in res["rounds"]]
    for r, k in zip(res["rows"], kept):
        p, q = r["preprocessed"], r["raw"]
        lines.append(f"| {r['model']} | {k} | {p['map50']:.3f} | {p['map']:.3f} | "
                     f"{100 * p['all_13']:.0f} % | {q['map50']:.3f} | {q['map']:.3f} | "
                     f"{100 * q['all_13']:.0f} % |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["grade", "detect"], required=True)
    ap.add_argument("--work", default="/tmp/precise-baa-partial-labels")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", default=None, help="append the table to this file")
    ap.add_argument("--report-only", action="store_true",
                    help="only write the table of the results in WORK (no training)")
    g = ap.add_argument_group("grade")
    g.add_argument("--train", type=int, default=400)
    g.add_argument("--test", type=int, default=100)
    g.add_argument("--epochs", type=int, default=45)
    g.add_argument("--stage-share", type=float, default=0.1)
    g.add_argument("--ablations", action="store_true")
    g.add_argument("--only", type=int, nargs="*", default=None, help="run indices to run")
    d = ap.add_argument_group("detect")
    d.add_argument("--det-train", type=int, default=160)
    d.add_argument("--det-unlabelled", type=int, default=160)
    d.add_argument("--det-test", type=int, default=60)
    d.add_argument("--teacher-epochs", type=int, default=8)
    d.add_argument("--student-epochs", type=int, default=4)
    d.add_argument("--rounds", type=int, default=1)
    d.add_argument("--pseudo-threshold", type=float, default=0.7)
    d.add_argument("--det-input-size", type=int, default=None,
                   help="detector input size (default: the lite recipe's 256)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/partial_labels.py " + " ".join(sys.argv[1:])
    if args.report_only:  # the table of an earlier (perhaps interrupted) run, from its JSON
        res = json.loads((work / f"{args.part}.json").read_text())
        command = "python benchmarks/partial_labels.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in res["args"].items()
            if k in ("part", "train", "test", "epochs", "det_train", "det_unlabelled", "det_test",
                     "teacher_epochs", "student_epochs", "det_input_size") and v)
        text = (grade_markdown if args.part == "grade" else detect_markdown)(res, command)
    elif args.part == "grade":
        text = grade_markdown(run_grade(args, work), command)
    else:
        text = detect_markdown(run_detect(args, work), command)
    print(text)
    if args.markdown:
        path = Path(args.markdown)
        head = "" if "## `benchmarks/partial_labels.py`" in path.read_text() else \
            "\n## `benchmarks/partial_labels.py` (training from partial labels, phantoms)\n\n"
        with path.open("a") as f:
            f.write(head + text + "\n")


if __name__ == "__main__":
    main()
