"""Evaluating a grader alone (``precise-baa evaluate grade``): ground-truth boxes in, stages out.

Writes to ``out_dir``: ``evaluation.json`` (per-ROI exact and within-one-stage accuracy, their
means, bone-age error), ``evaluation.md``, ``confusion.json`` (rows = true stage, columns =
predicted) and confusion heatmaps (``confusion.png`` with all 13 ROIs, ``confusion/ROI.png``).

The bone-age figures isolate the grader's error: each radiograph's predicted stages and its
true stages are both scored by stage 4 (the grader's standard, by sex); ``mae_vs_true_stages``
is the mean absolute difference of the two ages. When the manifest carries ``bone_age``, the
age from predicted stages is also compared with it (``vs_reference``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import age_metrics, pyplot, stage_accuracy
from ..paths import display_path
from ..rois import ROI_BY_KEY, ROI_KEYS, stage_counts, stage_label


def confusion_matrices(pred: Sequence[dict[str, int]], true: Sequence[dict[str, int]],
                       standard: str) -> dict[str, np.ndarray]:
    """Per ROI ``[stages, stages]`` counts, rows = true stage, columns = predicted stage."""
    counts = stage_counts(standard)
    mats = {k: np.zeros((counts[k], counts[k]), dtype=np.int64) for k in ROI_KEYS}
    for p, t in zip(pred, true, strict=True):
        for k, s in t.items():
            if k in p:
                mats[k][s, p[k]] += 1
    return mats


def grading_metrics(
    pred: Sequence[dict[str, int]],
    true: Sequence[dict[str, int]],
    sexes: Sequence[str | None],
    standard: str,
    reference_ages: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Accuracy, confusion matrices and bone-age error of predicted vs true stages.

    One dict of ``{roi: stage}`` per radiograph in ``pred`` and ``true`` (ROIs absent from
    either are left out of the accuracy); bone ages only for radiographs with all 13 stages
    on both sides and a sex.
    """
    from ..score import create_scorer

    by_pred = {k: [p[k] for p, t in zip(pred, true) if k in p and k in t] for k in ROI_KEYS}
    by_true = {k: [t[k] for p, t in zip(pred, true) if k in p and k in t] for k in ROI_KEYS}
    accuracy = stage_accuracy(by_pred, by_true)
    scorer = create_scorer(standard)
    age_pred, age_true, age_ref, ref_sex = [], [], [], []
    refs = reference_ages if reference_ages is not None else [None] * len(pred)
    for p, t, sex, ref in zip(pred, true, sexes, refs, strict=True):
        if sex is None or len(p) < len(ROI_KEYS) or len(t) < len(ROI_KEYS):
            continue
        a = scorer.score(p, sex).bone_age_years
        age_pred.append(a)
        age_true.append(scorer.score(t, sex).bone_age_years)
        if ref is not None:
            age_ref.append((a, float(ref)))
            ref_sex.append(sex)
    err = np.abs(np.asarray(age_pred) - np.asarray(age_true))
    bone_age: dict[str, Any] = {
        "n": len(age_pred),
        "mae_vs_true_stages": float(err.mean()) if len(err) else None,
        "p90_abs_vs_true_stages": float(np.percentile(err, 90)) if len(err) else None,
        "within_1y_vs_true_stages": float((err <= 1.0).mean()) if len(err) else None,
        "vs_reference": age_metrics([a for a, _ in age_ref], [r for _, r in age_ref], ref_sex)
        if age_ref else None,
    }
    return {"accuracy": accuracy,
            "confusion": {k: m.tolist() for k, m in confusion_matrices(pred, true, standard).items()},
            "bone_age": bone_age}


# --------------------------------------------------------------------------------------------
def _heatmap(ax, mat: np.ndarray, key: str, standard: str, annotate: bool) -> None:
    rows = mat.sum(1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros(mat.shape, float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    n = mat.shape[0]
    labels = [stage_label(key, s, standard) for s in range(n)]
    ax.set_xticks(range(n), labels, fontsize=5)
    ax.set_yticks(range(n), labels, fontsize=5)
    acc = np.trace(mat) / mat.sum() if mat.sum() else float("nan")
    ax.set_title(f"{ROI_BY_KEY[key].name} ({acc:.0%})", fontsize=7)
    if annotate:
        for i, j in zip(*np.nonzero(mat)):
            ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=5,
                    color="white" if frac[i, j] > 0.6 else "black")


def write_confusion_plots(out_dir: Path, confusion: dict[str, list[list[int]]], standard: str) -> None:
    """``confusion.png`` (all ROIs, rows normalised) and ``confusion/ROI.png`` with counts."""

    plt = pyplot()
    fig, axes = plt.subplots(4, 4, figsize=(10, 10), dpi=110)
    for ax in axes.flat[len(ROI_KEYS):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, ROI_KEYS):
        _heatmap(ax, np.asarray(confusion[k]), k, standard, annotate=False)
    fig.supxlabel("predicted stage", fontsize=8)
    fig.supylabel("true stage", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png")
    plt.close(fig)
    (out_dir / "confusion").mkdir(exist_ok=True)
    for k in ROI_KEYS:
        fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=110)
        _heatmap(ax, np.asarray(confusion[k]), k, standard, annotate=True)
        ax.set_xlabel("predicted stage", fontsize=7)
        ax.set_ylabel("true stage", fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "confusion" / f"{k}.png")
        plt.close(fig)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    acc, ba = res["accuracy"], res["bone_age"]
    lines = [f"# Grader evaluation: {res['weights']}", "",
             f"{res['n_images']} radiographs of `{res['dataset']}`, ground-truth boxes, "
             f"standard {res['standard']}.", ""]
    if res.get("phantom_trained"):
        lines += ["> Phantom-trained weights: these numbers show the method learns; they are not "
                  "clinical accuracy.", ""]
    lines += [f"Mean exact accuracy {_pct(acc['mean_exact'])}, within one stage "
              f"{_pct(acc['mean_within_one'])}.", "",
              "| ROI | n | exact | within one |", "|---|---|---|---|"]
    for k, v in acc["per_roi"].items():
        lines.append(f"| {k} | {v['n']} | {_pct(v['exact'])} | {_pct(v['within_one'])} |")
    lines += ["", "## Bone age from predicted stages", ""]
    if ba["n"]:
        lines.append(f"- vs bone age from the true stages ({ba['n']} radiographs): MAE "
                     f"{ba['mae_vs_true_stages']:.3f} y, 90th percentile "
                     f"{ba['p90_abs_vs_true_stages']:.3f} y, within 1 y "
                     f"{_pct(ba['within_1y_vs_true_stages'])}")
        ref = ba.get("vs_reference")
        if ref:
            lines.append(f"- vs the manifest's bone_age ({ref['all']['n']}): MAE "
                         f"{ref['all']['mae']:.3f} y, within 1 y {_pct(ref['all']['within_1y'])}")
    else:
        lines.append("- no radiograph had all 13 stages and a sex; not computed")
    lines += ["", "Confusion matrices: `confusion.png`, `confusion/ROI.png`, `confusion.json` "
              "(rows = true stage, columns = predicted).", ""]
    path.write_text("\n".join(lines))


def evaluate_grader(grader, coco: str | Path, images_dir: str | Path | None, out_dir: str | Path,
                    *, batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Grade every radiograph of a labelled COCO set with its ground-truth boxes; write reports.

    Images are prepared as in training (:func:`precise_baa.data.prepared_example`: the hand crop
    of the ground-truth mask) and graded through ``grader.grade``, the inference path.
    """
    from tqdm.auto import tqdm

    from ..data import load_coco
    from .dataset import prepare_record, usable_records

    manifest = load_coco(coco, images_dir)
    recipe = grader.recipe
    records = usable_records(manifest.records, recipe, str(coco))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred, true = [], []
    for start in tqdm(range(0, len(records), batch_size), disable=not progress, unit="batch",
                      desc="grading"):
        chunk = records[start:start + batch_size]
        prepared = [prepare_record(r) for r in chunk]
        # usable_records ensured every sex is known when the model uses it; otherwise it is ignored
        grades = grader.grade([im for im, _ in prepared], [bx for _, bx in prepared],
                              [r.sex or "F" for r in chunk])
        for r, g in zip(chunk, grades, strict=True):
            truth = r.stages_for(grader.standard)
            stages = {k: s for k, s in g.stages.items() if k in truth}
            pred.append(stages)
            true.append({k: truth[k] for k in stages})
    metrics = grading_metrics(pred, true, [r.sex for r in records], grader.standard,
                              [r.bone_age for r in records])
    info = grader.info
    res = {
        "weights": info.weights or info.name, "dataset": display_path(coco), "standard": grader.standard,
        "n_images": len(records), "phantom_trained": info.phantom_trained,
        "model": info.model_dump(), **metrics,
    }
    confusion = res.pop("confusion")
    (out_dir / "confusion.json").write_text(json.dumps(
        {k: {"labels": [stage_label(k, s, grader.standard) for s in range(len(m))], "matrix": m}
         for k, m in confusion.items()}, indent=1) + "\n")
    (out_dir / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out_dir / "evaluation.md", res)
    write_confusion_plots(out_dir, confusion, grader.standard)
    return {**res, "confusion": confusion}
