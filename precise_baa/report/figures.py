"""Pictures for people: the annotated radiograph, the P50 curve with the patient on it, the
13x13 ROI attention map, and ROI thumbnails."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..evaluation import pyplot
from ..imaging import save_png
from ..rois import ROI_BY_KEY, ROI_KEYS
from ..schemas import Assessment

# one colour per ray (BGR): forearm, I, II, III, IV, V
_RAY_COLOURS = {0: (60, 180, 255), 1: (80, 220, 80), 3: (255, 170, 60), 5: (220, 90, 230)}
_STATUS_COLOURS = {"ok": (90, 200, 90), "rejected": (40, 160, 255), "error": (60, 60, 230)}


def overlay(pixels: np.ndarray, a: Assessment, max_side: int = 1024) -> np.ndarray:
    """BGR uint8 picture: the radiograph, the hand crop, each ROI box with its name and stage."""
    h, w = pixels.shape
    s = min(1.0, max_side / max(h, w))
    img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    if s < 1.0:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    font, lw = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(img.shape[0] / 500))
    fs = 0.35 * max(1.0, img.shape[0] / 600)
    if a.crop_box is not None:
        b = a.crop_box
        cv2.rectangle(img, (round(b.x0 * s), round(b.y0 * s)), (round(b.x1 * s) - 1, round(b.y1 * s) - 1),
                      (150, 150, 150), 1)
    for r in a.rois:
        if r.box is None:
            continue
        colour = _RAY_COLOURS.get(ROI_BY_KEY[r.key].ray, (255, 255, 255))
        if r.flags:
            colour = (40, 160, 255)
        p0 = (round(r.box.x0 * s), round(r.box.y0 * s))
        p1 = (round(r.box.x1 * s), round(r.box.y1 * s))
        cv2.rectangle(img, p0, p1, colour, lw)
        label = r.key if r.stage_label is None else f"{r.key} {r.stage_label}"
        (tw, th), _ = cv2.getTextSize(label, font, fs, 1)
        y = p0[1] - 3 if p0[1] - th - 4 > 0 else p1[1] + th + 3
        cv2.rectangle(img, (p0[0], y - th - 2), (p0[0] + tw + 2, y + 2), (0, 0, 0), -1)
        cv2.putText(img, label, (p0[0] + 1, y), font, fs, colour, 1, cv2.LINE_AA)
    if a.status == "ok":
        head = f"bone age {a.bone_age_years:.2f} y  ({a.standard}, score {a.maturity_score})"
    else:
        head = f"{a.status.upper()}: {a.reason or ''}"
    lines = [head[:90]]
    if any(f.code == "phantom_weights" for f in a.flags):
        lines.append("phantom-trained weights: not for clinical use")
    y = 6
    for i, text in enumerate(lines):
        (tw, th), _ = cv2.getTextSize(text, font, fs * 1.2, 1)
        y += th + 6
        cv2.rectangle(img, (4, y - th - 4), (10 + tw, y + 4), (0, 0, 0), -1)
        colour = _STATUS_COLOURS[a.status] if i == 0 else (80, 200, 255)
        cv2.putText(img, text, (7, y), font, fs * 1.2, colour, 1, cv2.LINE_AA)
    return img


def curve_plot(path: Path, a: Assessment) -> None:
    """The sex's P50 curve (age -> maturity score) with this patient's score and ages on it."""
    from ..score import load_tables

    plt = pyplot()
    std = a.standard if a.standard in ("rus-chn", "tw3") else "rus-chn"
    ages, scores = load_tables(std).curve[a.sex]
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    ax.plot(ages, scores, color="#2b6cb0", lw=1.8, label=f"P50 {std.upper()} ({'boys' if a.sex == 'M' else 'girls'})")
    if a.maturity_score is not None and a.bone_age_years is not None:
        ax.scatter([a.bone_age_years], [a.maturity_score], color="#2b6cb0", zorder=3, s=24,
                   label=f"bone age {a.bone_age_years:.1f} y")
        if a.chronological_age_years is not None:
            ax.scatter([a.chronological_age_years], [a.maturity_score], color="#c53030", zorder=3,
                       marker="D", s=26, label=f"patient (age {a.chronological_age_years:.1f} y)")
            ax.annotate("", xy=(a.bone_age_years, a.maturity_score),
                        xytext=(a.chronological_age_years, a.maturity_score),
                        arrowprops=dict(arrowstyle="->", color="#718096"))
    ax.set_xlabel("age (years)")
    ax.set_ylabel("maturity score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def attention_plot(path: Path, attention: list[list[float]]) -> None:
    plt = pyplot()
    att = np.asarray(attention, dtype=float)
    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=110)
    im = ax.imshow(att, cmap="magma", vmin=0, vmax=max(1e-6, float(att.max())))
    ax.set_xticks(range(len(ROI_KEYS)), ROI_KEYS, rotation=90, fontsize=6)
    ax.set_yticks(range(len(ROI_KEYS)), ROI_KEYS, fontsize=6)
    ax.set_xlabel("attended ROI", fontsize=7)
    ax.set_ylabel("querying ROI", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def roi_thumbnails(folder: Path, pixels: np.ndarray, a: Assessment, size: int = 96) -> dict[str, str]:
    """One PNG per found ROI, cut with the graders' own crop function; returns key -> file name."""
    from ..crops import crop_roi

    out = {}
    for r in a.rois:
        if r.box is None:
            continue
        name = f"{r.key}.png"
        save_png(folder / name, crop_roi(pixels, r.box, size))
        out[r.key] = name
    return out
