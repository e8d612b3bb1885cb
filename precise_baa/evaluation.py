"""Evaluating the whole pipeline on a labelled set: the precise-BAA paper's tables.

``evaluate_pipeline(pipeline, manifest, out_dir)`` runs every image through the pipeline and
writes ``evaluation.json``, ``evaluation.md`` and plots (PNG): bone-age MAE / RMSE by age
group, within-1-year accuracy by sex, per-ROI stage accuracy, detection AP per ROI, palm
segmentation Dice, and the rejection rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paths import display_path
from .rois import ROI_KEYS

#: the paper's age groups (years, by reference bone age): [lo, hi)
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-3", 0.0, 4.0), ("4-7", 4.0, 8.0), ("8-11", 8.0, 12.0), ("12-15", 12.0, 16.0),
    ("16-18", 16.0, 99.0),
)

#: published figures on real radiographs, for orientation only (not comparable to phantoms)
PUBLISHED = {
    "precise-BAA (paper), MAE y": {"all": 0.61, "0-3": 0.95, "4-7": 0.72, "8-11": 0.48,
                                  "12-15": 0.57, "16-18": 0.94},
    "precise-BAA (paper), ROI grading mean accuracy": 0.6315,
    "precise-BAA (paper), palm segmentation pixel accuracy": 0.9801,
    "precise-BAA (paper), detection AP (all 13 ROIs)": 1.0,
}


def _correlation(x: np.ndarray, y: np.ndarray, kind: str) -> float | None:
    """Pearson or Spearman r (scipy.stats); None below 3 pairs or when either side is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy import stats

    fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
    return float(fn(x, y).statistic)


def age_metrics(pred: Sequence[float], ref: Sequence[float], sexes: Sequence[str]) -> dict[str, Any]:
    """Agreement of predicted with reference bone ages (years), overall, by age group and by sex.

    Each block holds ``n``, ``mae``, ``rmse``, ``within_1y``, ``bias`` (mean of predicted minus
    reference), ``bias_removed_mae`` (MAE after subtracting the *overall* mean bias, the same
    constant for every block: what is left once a constant offset between standards, e.g. a
    Greulich-Pyle reference against RUS-CHN scoring, is calibrated away), ``pearson_r`` and
    ``spearman_r`` (None below 3 images). Age groups go by the reference age.
    """
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    s = np.asarray(sexes)
    err = p - r
    offset = float(err.mean()) if len(err) else 0.0

    def block(mask) -> dict[str, Any]:
        n = int(mask.sum())
        if n == 0:
            return {"n": 0, "mae": None, "rmse": None, "within_1y": None, "bias": None,
                    "bias_removed_mae": None, "pearson_r": None, "spearman_r": None}
        e = err[mask]
        return {"n": n, "mae": float(np.abs(e).mean()), "rmse": float(math.sqrt((e**2).mean())),
                "within_1y": float((np.abs(e) <= 1.0).mean()), "bias": float(e.mean()),
                "bias_removed_mae": float(np.abs(e - offset).mean()),
                "pearson_r": _correlation(p[mask], r[mask], "pearson"),
                "spearman_r": _correlation(p[mask], r[mask], "spearman")}

    out = {"all": block(np.ones(len(p), bool))}
    out["by_age_group"] = {name: block((r >= lo) & (r < hi)) for name, lo, hi in AGE_GROUPS}
    out["by_sex"] = {sx: block(s == sx) for sx in ("M", "F")}
    return out


def stage_accuracy(pred: dict[str, list[int]], true: dict[str, list[int]]) -> dict[str, Any]:
    """Per-ROI exact and within-one-stage accuracy, and their means over ROIs."""
    per = {}
    for k in ROI_KEYS:
        p, t = np.asarray(pred.get(k, []), int), np.asarray(true.get(k, []), int)
        if len(t) == 0:
            continue
        per[k] = {"n": int(len(t)), "exact": float((p == t).mean()),
                  "within_one": float((np.abs(p - t) <= 1).mean())}
    return {
        "per_roi": per,
        "mean_exact": float(np.mean([v["exact"] for v in per.values()])) if per else None,
        "mean_within_one": float(np.mean([v["within_one"] for v in per.values()])) if per else None,
    }


def detection_ap(
    gt: Sequence[dict[str, Any]], dets: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """COCO AP per ROI and overall with pycocotools.

    ``gt[i] = {roi: Box}``, ``dets[i] = {roi: (Box, score)}`` for image ``i``. Returns AP@0.5 and
    AP@[.5:.95] per ROI and their means, and the share of images with all 13 ROIs found.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = [{"id": i + 1, "name": k} for i, k in enumerate(ROI_KEYS)]
    images, anns, results = [], [], []
    for i, (g, d) in enumerate(zip(gt, dets, strict=True)):
        images.append({"id": i + 1})
        for c, k in enumerate(ROI_KEYS, 1):
            if k in g:
                b = g[k]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0,
                             "bbox": [b.x0, b.y0, b.width, b.height], "area": b.width * b.height})
            if d.get(k) is not None:
                b, score = d[k]
                results.append({"image_id": i + 1, "category_id": c, "score": float(score or 1.0),
                                "bbox": [b.x0, b.y0, b.width, b.height]})
    all_found = float(np.mean([all(d.get(k) is not None for k in ROI_KEYS) for d in dets])) if dets else 0.0
    if not results:
        return {"per_roi": {k: {"ap50": 0.0, "ap": 0.0} for k in ROI_KEYS}, "map50": 0.0, "map": 0.0,
                "all_13_found": all_found}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": cats}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [iou thr, recall, cat, area, maxdet]

    def ap(c: int, thresholds: slice) -> float:
        v = prec[thresholds, :, c, 0, -1]
        v = v[v > -1]
        return float(v.mean()) if v.size else 0.0

    per = {k: {"ap50": ap(c, slice(0, 1)), "ap": ap(c, slice(None))} for c, k in enumerate(ROI_KEYS)}
    return {"per_roi": per, "map50": float(np.mean([v["ap50"] for v in per.values()])),
            "map": float(np.mean([v["ap"] for v in per.values()])), "all_13_found": all_found}


def mask_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Dice, IoU and pixel accuracy of two boolean masks."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    inter = float(np.logical_and(p, t).sum())
    total = float(p.sum() + t.sum())
    union = float(np.logical_or(p, t).sum())
    return {"dice": 2 * inter / total if total else 1.0, "iou": inter / union if union else 1.0,
            "pixel_accuracy": float((p == t).mean())}


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    a = res["bone_age"]
    lines = [
        f"# Pipeline evaluation: {res['dataset']}",
        "",
        f"Pipeline `{res['pipeline']}` on {res['n_images']} images; standard {res['standard']}. "
        f"Rejected: {res['rejected']} ({_fmt(res['rejection_rate'], True)}), errors: {res['errors']}.",
        "",
    ]
    if res.get("phantom"):
        lines += ["> Phantom-trained weights evaluated on synthetic phantoms: these numbers show "
                  "that the method runs end to end and learns; they are not clinical accuracy.", ""]
    lines += ["## Bone age (scored images)", "",
              "| group | n | MAE (y) | RMSE (y) | within 1 y | bias (y) | paper MAE (y) |",
              "|---|---|---|---|---|---|---|"]
    paper = PUBLISHED["precise-BAA (paper), MAE y"]
    for name, blk in [("all", a["all"]), *a["by_age_group"].items()]:
        lines.append(f"| {name} | {blk['n']} | {_fmt(blk['mae'])} | {_fmt(blk['rmse'])} | "
                     f"{_fmt(blk['within_1y'], True)} | {_fmt(blk['bias'])} | {paper.get(name, '-')} |")
    lines += ["", "| sex | n | MAE (y) | within 1 y |", "|---|---|---|---|"]
    for sx, blk in a["by_sex"].items():
        lines.append(f"| {sx} | {blk['n']} | {_fmt(blk['mae'])} | {_fmt(blk['within_1y'], True)} |")
    g = res["grading"]
    lines += ["", "## Per-ROI stage accuracy (ROIs found)", "",
              f"Mean exact {_fmt(g['mean_exact'], True)}, within one stage "
              f"{_fmt(g['mean_within_one'], True)} (paper: 63.15 % exact with DenseNet121).", "",
              "| ROI | n | exact | within one | AP@0.5 | AP@[.5:.95] |", "|---|---|---|---|---|---|"]
    d = res["detection"]
    for k in ROI_KEYS:
        gk = g["per_roi"].get(k, {})
        dk = d["per_roi"].get(k, {})
        lines.append(f"| {k} | {gk.get('n', 0)} | {_fmt(gk.get('exact'), True)} | "
                     f"{_fmt(gk.get('within_one'), True)} | {_fmt(dk.get('ap50'))} | {_fmt(dk.get('ap'))} |")
    s = res["segmentation"]
    lines += ["", "## Detection and segmentation", "",
              f"- detection mAP@0.5 {_fmt(d['map50'])}, mAP@[.5:.95] {_fmt(d['map'])}; "
              f"all 13 ROIs found in {_fmt(d['all_13_found'], True)} of images (paper: AP 1.0)",
              f"- palm segmentation Dice {_fmt(s.get('dice'))}, IoU {_fmt(s.get('iou'))}, pixel accuracy "
              f"{_fmt(s.get('pixel_accuracy'), True)} over {s.get('n', 0)} masks (paper: 98.01 % pixel accuracy)",
              "", "Plots: `bone_age_scatter.png`, `bland_altman.png`, `roi_accuracy.png`.", ""]
    path.write_text("\n".join(lines))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def age_plots(out_dir: Path, pred: Sequence[float], ref: Sequence[float], *,
              sexes: Sequence[str] | None = None, offset_line: bool = False) -> list[Path]:
    """``bone_age_scatter.png`` (predicted against reference, ±1 y band) and ``bland_altman.png``
    (difference against mean, bias and 95 % limits of agreement) in ``out_dir``; nothing when
    there are no pairs. ``sexes`` colours boys and girls; ``offset_line`` adds the line
    reference + mean bias to the scatter (a constant offset between standards)."""
    plt = pyplot()
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    if not len(p):
        return []
    fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
    if sexes is not None:
        s = np.asarray(sexes)
        for sx, label in (("M", "boys"), ("F", "girls")):
            if (s == sx).any():
                ax.scatter(r[s == sx], p[s == sx], s=12, alpha=0.75, label=label)
    else:
        ax.scatter(r, p, s=10, alpha=0.7)
    hi = max(18.0, float(max(p.max(), r.max())))
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.fill_between([0, hi], [-1, hi - 1], [1, hi + 1], color="gray", alpha=0.15, label="±1 y")
    if offset_line:
        m = float((p - r).mean())
        ax.plot([0, hi], [m, hi + m], color="#c05621", lw=1, label=f"reference {m:+.2f} y (mean bias)")
        rho = _correlation(p, r, "pearson")
        if rho is not None:
            ax.set_title(f"Pearson r {rho:.3f}, n {len(p)}", fontsize=8)
    ax.set_xlabel("reference bone age (y)")
    ax.set_ylabel("predicted bone age (y)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "bone_age_scatter.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    mean, diff = (p + r) / 2, p - r
    ax.scatter(mean, diff, s=10, alpha=0.7)
    m, sd = float(diff.mean()), float(diff.std())
    for y, style in ((m, "-"), (m + 1.96 * sd, "--"), (m - 1.96 * sd, "--")):
        ax.axhline(y, color="k", ls=style, lw=1)
    ax.set_xlabel("mean of predicted and reference (y)")
    ax.set_ylabel("predicted - reference (y)")
    ax.set_title(f"bias {m:+.2f} y, limits ±{1.96 * sd:.2f} y", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bland_altman.png")
    plt.close(fig)
    return [out_dir / "bone_age_scatter.png", out_dir / "bland_altman.png"]


def write_plots(out_dir: Path, pred: list[float], ref: list[float], grading: dict[str, Any]) -> None:
    """The pipeline evaluation's plots: :func:`age_plots` and ``roi_accuracy.png``."""
    plt = pyplot()
    age_plots(out_dir, pred, ref)
    per = grading["per_roi"]
    if per:
        fig, ax = plt.subplots(figsize=(6, 3), dpi=110)
        x = np.arange(len(per))
        ax.bar(x - 0.2, [v["exact"] for v in per.values()], 0.4, label="exact")
        ax.bar(x + 0.2, [v["within_one"] for v in per.values()], 0.4, label="within one stage")
        ax.set_xticks(x, list(per), rotation=45, fontsize=7)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "roi_accuracy.png")
        plt.close(fig)


def evaluate_pipeline(
    pipeline, coco: str | Path, images: str | Path | None, out_dir: str | Path,
    *, batch_size: int = 4, progress: bool = True,
) -> dict[str, Any]:
    """Run ``pipeline`` over a labelled COCO set and write the evaluation report."""
    from tqdm.auto import tqdm

    from .data import load_coco, read_mask
    from .imaging import read_radiograph

    manifest = load_coco(coco, images, require_stages=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    standard = pipeline.standard
    pred_age, ref_age, sexes = [], [], []
    pred_st: dict[str, list[int]] = {k: [] for k in ROI_KEYS}
    true_st: dict[str, list[int]] = {k: [] for k in ROI_KEYS}
    gt_boxes, det_boxes, masks = [], [], []
    statuses = []
    recs = manifest.records
    bar = tqdm(total=len(recs), disable=not progress, unit="img", desc="evaluating")
    for start in range(0, len(recs), batch_size):
        chunk = recs[start:start + batch_size]
        rads = [read_radiograph(r.path) for r in chunk]
        details: list[dict[str, Any]] = []
        out = pipeline.assess_batch(rads, [r.sex for r in chunk], [r.chronological_age for r in chunk],
                                    [r.name for r in chunk], details=details)
        for r, a, det in zip(chunk, out, details, strict=True):
            statuses.append(a.status)
            gt_boxes.append(r.boxes)
            det_boxes.append({x.key: (x.box, x.detection_score) for x in a.rois if x.box is not None})
            truth = r.stages_for(standard)
            for x in a.rois:
                if x.stage is not None and x.key in truth:
                    pred_st[x.key].append(x.stage)
                    true_st[x.key].append(truth[x.key])
            seg = det.get("segment")
            if seg is not None and r.mask_path is not None and r.mask_path.is_file():
                true_mask = read_mask(r.mask_path)
                masks.append(mask_metrics(seg.mask, true_mask))
            if a.status == "ok" and r.bone_age is not None:
                pred_age.append(a.bone_age_years)
                ref_age.append(float(r.bone_age))
                sexes.append(r.sex)
        bar.update(len(chunk))
    bar.close()
    seg_summary: dict[str, Any] = {"n": len(masks)}
    for key in ("dice", "iou", "pixel_accuracy"):
        seg_summary[key] = float(np.mean([m[key] for m in masks])) if masks else None
    grading = stage_accuracy(pred_st, true_st)
    res = {
        "dataset": display_path(coco), "pipeline": pipeline.recipe.name if pipeline.recipe else "pipeline",
        "standard": standard, "n_images": len(recs),
        "rejected": statuses.count("rejected"), "errors": statuses.count("error"),
        "rejection_rate": statuses.count("rejected") / max(1, len(recs)),
        "phantom": pipeline.phantom_trained,
        "bone_age": age_metrics(pred_age, ref_age, sexes),
        "grading": grading,
        "detection": detection_ap(gt_boxes, det_boxes),
        "segmentation": seg_summary,
        "models": [m.model_dump() for m in pipeline.models],
        "published_reference": PUBLISHED,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out_dir / "evaluation.md", res)
    write_plots(out_dir, pred_age, ref_age, grading)
    return res
