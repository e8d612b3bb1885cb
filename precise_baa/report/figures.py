"""Pictures for people: the annotated radiograph, the P50 curve with the patient on it, the
13x13 ROI attention map, ROI thumbnails, and contact sheets tiling many pictures into one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
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


def contact_sheet(
    images: Sequence[np.ndarray],
    path: str | Path,
    *,
    cols: int = 4,
    tile: int = 256,
    captions: Sequence[str] | None = None,
    caption_colours: Sequence[tuple[int, int, int]] | None = None,
    boxes: Sequence[dict] | None = None,
) -> Path:
    """Tile images into one PNG, each scaled to fit a ``tile`` x ``tile`` square (aspect kept,
    centred), with an optional caption band under each tile and optional ROI boxes.

    ``images``: grey float [0, 1] or uint8/uint16, or BGR uint8 (e.g. :func:`overlay`).
    ``captions``: one text per image, lines split on ``\\n`` (BGR ``caption_colours`` per image).
    ``boxes``: per image ``{roi: Box}`` in that image's pixels, drawn on the tile.
    """
    if not len(images):
        raise InputError("contact sheet: no images")
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (_, line_h), _ = cv2.getTextSize("Ag", font, fs, 1)
    line_h += 6
    n_lines = max((len(c.split("\n")) for c in captions), default=0) if captions else 0
    band = n_lines * line_h + (4 if n_lines else 0)
    tiles = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        h, w = arr.shape[:2]
        k = tile / max(h, w)
        th, tw = max(1, round(h * k)), max(1, round(w * k))
        ox, oy = (tile - tw) // 2, (tile - th) // 2
        small = cv2.resize((np.clip(arr, 0, 1) * 255).astype(np.uint8), (tw, th), interpolation=cv2.INTER_AREA)
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        t = np.zeros((tile + band, tile, 3), np.uint8)
        t[oy:oy + th, ox:ox + tw] = small[:, :, :3]
        if boxes is not None:
            sx, sy = tw / w, th / h
            for b in boxes[i].values():
                cv2.rectangle(t, (ox + int(b.x0 * sx), oy + int(b.y0 * sy)),
                              (ox + int(b.x1 * sx), oy + int(b.y1 * sy)), (0, 200, 255), 1)
        if captions is not None:
            colour = caption_colours[i] if caption_colours is not None else (0, 255, 255)
            for j, text in enumerate(captions[i].split("\n")):
                cv2.putText(t, text, (4, tile + (j + 1) * line_h - 3), font, fs, colour, 1, cv2.LINE_AA)
        cv2.rectangle(t, (0, 0), (tile - 1, tile + band - 1), (70, 70, 70), 1)
        tiles.append(t)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(rows, 0)):
        raise OSError(f"{path}: could not write PNG")
    return path
