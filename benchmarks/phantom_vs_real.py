"""How close phantoms come to real hand radiographs: intensity, layout, noise and sharpness.

    OMP_NUM_THREADS=1 python benchmarks/phantom_vs_real.py \\
        [--real /work/shared/data/real-dev] [--n 40] [--size 640] \\
        [--out out/phantom_vs_real] [--figure docs/phantoms_vs_real.png]

Measures each real radiograph (a folder with ``images/*.png`` and optionally ``labels.csv``:
``id,sex,bone_age_months``; hands segmented onto black, as public bone-age sets publish them)
and ``--n`` phantoms of each style with the same statistics:

* layout: hand area / frame, hand bounding box width and height / frame, top margin;
* raw 8-bit levels inside the hand (percentiles), background outside it, the skin line,
  soft tissue and bone (the two sides of Otsu's threshold inside the hand) and the bone share;
* after the pipeline's hand crop (``hand_crop`` with the mask; percentile window, background
  0) resized to 512 px: percentiles, histogram, noise (robust std of the high-pass residual
  in flat soft tissue) and sharpness (mean of the top 5 % gradient magnitudes);
* the distance of each style's pooled hand-crop histogram from the real one (Wasserstein-1,
  in units of the normalised intensity).

A real image's mask is ``image > 8`` (largest component, holes filled); a phantom's is its
true mask. Prints a table, writes ``metrics.json`` and, for a person to look at, a
side-by-side picture of real images and phantoms of the same sex and age with wrist and
middle-fingertip crops into ``--out`` (keep it out of the repository: real images may not be
copied). ``--figure`` writes a figure with phantoms and the aggregate comparison only
(histograms and numbers, no real pixels), safe to commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

CROP_SIDE = 512  # the hand crop is compared at about the size the detector sees


def _cleanup():
    try:
        from precise_baa import handcrop as mod
    except ImportError:  # older layout
        from precise_baa.segment import cleanup as mod
    return mod


def read_gray(path: Path) -> np.ndarray:
    """8-bit grayscale of a PNG (palette and RGB PNGs converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def real_mask(image: np.ndarray, threshold: int = 8) -> np.ndarray:
    mod = _cleanup()
    return mod.fill_holes(mod.largest_component(image > threshold))


def measure(image8: np.ndarray, mask: np.ndarray, exclude: np.ndarray | None = None) -> dict:
    """All statistics of one 8-bit image with its hand mask."""
    import cv2

    mod = _cleanup()
    h, w = image8.shape
    ys, xs = np.nonzero(mask)
    inside = image8[mask].astype(np.float32)
    out_px = ~mask if exclude is None else ~mask & ~exclude
    t, _ = cv2.threshold(inside.astype(np.uint8).reshape(-1, 1), 0, 255,
                         cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    erode = max(3, int(0.01 * (xs.max() - xs.min())))
    core = cv2.erode(mask.astype(np.uint8), np.ones((erode, erode), np.uint8)) > 0
    ring = mask & ~core
    m = {
        "area": float(mask.mean()),
        "bbox_w": float((xs.max() - xs.min() + 1) / w),
        "bbox_h": float((ys.max() - ys.min() + 1) / h),
        "top": float(ys.min() / h),
        "aspect": float(w / h),
        "background": float(np.median(image8[out_px])) if out_px.any() else float("nan"),
        "skin": float(np.median(image8[ring])),
        "tissue": float(np.median(inside[inside <= t])),
        "bone": float(np.median(inside[inside > t])),
        "bone_share": float((inside > t).mean()),
    }
    for q in (1, 10, 50, 90, 99):
        m[f"p{q}"] = float(np.percentile(inside, q))
    crop, box = mod.hand_crop(image8.astype(np.float32) / 255.0, mask)
    cmask = mask[int(box.y0):int(box.y1), int(box.x0):int(box.x1)]
    k = CROP_SIDE / max(crop.shape)
    size = (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    smask = cv2.resize(cmask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    vals = small[smask]
    for q in (10, 50, 90):
        m[f"crop_p{q}"] = float(np.percentile(vals, q))
    m["crop_hist"] = np.histogram(vals, bins=32, range=(0, 1))[0].astype(float).tolist()
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.hypot(gx, gy)
    inner = cv2.erode(smask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    g_in = grad[inner]
    m["sharpness"] = float(np.mean(np.sort(g_in)[-max(1, len(g_in) // 20):]))
    smooth = cv2.GaussianBlur(small, (0, 0), 2.0)
    sg = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    flat = inner & (sg < np.percentile(sg[inner], 30))
    resid = (small - cv2.GaussianBlur(small, (0, 0), 1.0))[flat]
    m["noise"] = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    return m


def wrist_and_tip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops found the same way in real images and phantoms: the forearm stub / wrist at the
    bottom of the hand, and the middle fingertip (the topmost point of the hand)."""
    ys, xs = np.nonzero(mask)
    h = ys.max() - ys.min()
    y0 = ys.min()
    tip_x = int(np.median(xs[ys <= y0 + 2]))
    side = int(0.1 * h)
    tip = image[max(0, y0 - side // 6):y0 + side, max(0, tip_x - side // 2):tip_x + side // 2]
    bottom = ys.max()
    row = np.nonzero(mask[bottom])[0] if mask[bottom].any() else xs
    cx, half = int(row.mean()), int(0.6 * (row.max() - row.min() + 1))
    wrist = image[max(0, bottom - int(0.2 * h)):bottom + 1, max(0, cx - half):cx + half]
    return wrist, tip


def render(seed: int, size: int, style: str, **kw):
    from precise_baa.synth import render_phantom

    try:
        return render_phantom(seed, size, style=style, **kw)
    except TypeError:  # a generator without styles (raw films only)
        return render_phantom(seed, size, **kw)


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "crop_hist"]
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    out.update({f"{k}_sd": float(np.nanstd([r[k] for r in rows])) for k in keys})
    hist = np.sum([np.asarray(r["crop_hist"]) / max(1.0, sum(r["crop_hist"])) for r in rows], 0)
    out["crop_hist"] = (hist / hist.sum()).tolist()
    out["n"] = len(rows)
    return out


def wasserstein(p: list[float], q: list[float]) -> float:
    """W1 between two histograms on [0, 1] with equal bins."""
    cp, cq = np.cumsum(p) / np.sum(p), np.cumsum(q) / np.sum(q)
    return float(np.abs(cp - cq).sum() / len(p))


TABLE = [("area", "hand area / frame", 2), ("bbox_w", "hand box width / frame", 2),
         ("bbox_h", "hand box height / frame", 2), ("top", "top margin / height", 3),
         ("aspect", "frame width / height", 2), ("background", "background (8-bit)", 0),
         ("skin", "skin line (8-bit)", 0), ("tissue", "soft tissue (8-bit)", 0),
         ("bone", "bone (8-bit)", 0), ("bone_share", "bone share of the hand", 2),
         ("p10", "hand p10 (8-bit)", 0), ("p50", "hand p50 (8-bit)", 0),
         ("p90", "hand p90 (8-bit)", 0), ("p99", "hand p99 (8-bit)", 0),
         ("crop_p10", "hand crop p10 (0-1)", 2), ("crop_p50", "hand crop p50 (0-1)", 2),
         ("crop_p90", "hand crop p90 (0-1)", 2), ("noise", "noise (crop, 0-1)", 4),
         ("sharpness", "sharpness (crop grad.)", 2)]


def table(sets: dict[str, dict]) -> str:
    names = list(sets)
    lines = ["| measure | " + " | ".join(f"{n} (n={sets[n]['n']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for key, label, digits in TABLE:
        cells = [f"{sets[n][key]:.{digits}f} ± {sets[n][key + '_sd']:.{digits}f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "real" in sets:
        cells = [f"{wasserstein(sets['real']['crop_hist'], sets[n]['crop_hist']):.3f}" for n in names]
        lines.append("| hand-crop histogram W1 to real | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tile(img: np.ndarray, height: int) -> np.ndarray:
    import cv2

    k = height / img.shape[0]
    return cv2.resize(img, (max(1, round(img.shape[1] * k)), height), interpolation=cv2.INTER_AREA)


def side_by_side(real: list[tuple[str, np.ndarray, np.ndarray, str, float]], size: int,
                 path: Path) -> None:
    """Real images next to phantoms (both styles) of the same sex and age, with crops."""
    import cv2

    rows = []
    for i, (_name, img, mask, sex, age) in enumerate(real):
        cells = [_tile(img, 400)]
        rw, rt = wrist_and_tip(img, mask)
        crops = [_tile(rw, 130), _tile(rt, 130)]
        for style in ("preprocessed", "raw"):
            p = render(1000 + i, size, style, sex=sex, chronological_age=min(age, 17.0))
            a = (p.image * 255).astype(np.uint8)
            cells.append(_tile(a, 400))
            if style == "preprocessed":
                pw, pt = wrist_and_tip(a, p.mask)
                crops += [_tile(pw, 130), _tile(pt, 130)]
                for key in ("radius", "dp3"):
                    b = p.boxes[key]
                    crops.append(_tile(a[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))], 130))
        cv2.putText(cells[0], f"real {sex} {age:.1f}y", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)
        cv2.putText(cells[1], f"phantom {p.sex} BA {p.bone_age:.1f}y", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)
        strip = np.concatenate([np.pad(c, ((0, 0), (0, 4))) for c in crops], 1)
        strip = np.pad(strip, ((0, 400 - 130), (0, 0)))[:400]
        rows.append(np.concatenate([np.pad(c, ((0, 0), (0, 6))) for c in cells] + [strip], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))


def figure(sets: dict[str, dict], size: int, path: Path) -> None:
    """Phantoms and the aggregate comparison (histograms and statistics; no real pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ages = (("F", 2.0), ("M", 4.5), ("F", 8.0), ("M", 10.0), ("F", 13.0), ("M", 16.0))
    fig = plt.figure(figsize=(15, 9.5), dpi=100)
    grid = fig.add_gridspec(3, 6, height_ratios=[1.3, 1.3, 1.0])
    for row, style in enumerate(("preprocessed", "raw")):
        for col, (sex, age) in enumerate(ages):
            p = render(500 + col, size, style, sex=sex, chronological_age=age)
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(p.image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{style} {sex} {age:g} y (BA {p.bone_age:.1f})", fontsize=8)
            ax.axis("off")
    ax = fig.add_subplot(grid[2, :3])
    centres = (np.arange(32) + 0.5) / 32
    for name, s in sets.items():
        ax.plot(centres, s["crop_hist"], label=f"{name} (n={s['n']})", lw=2 if name == "real" else 1.3)
    ax.set_xlabel("intensity in the hand crop (pipeline normalisation)")
    ax.set_ylabel("share of hand pixels")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[2, 3:])
    keys = [("area", "area"), ("bbox_w", "box w"), ("bbox_h", "box h"), ("bone_share", "bone share"),
            ("crop_p10", "crop p10"), ("crop_p50", "crop p50"), ("crop_p90", "crop p90"),
            ("tissue", "tissue/255"), ("bone", "bone/255")]
    x = np.arange(len(keys))
    width = 0.8 / len(sets)
    for i, (name, s) in enumerate(sets.items()):
        scale = [255.0 if k in ("tissue", "bone") else 1.0 for k, _ in keys]
        ax.bar(x + i * width, [s[k] / f for (k, _), f in zip(keys, scale)], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, [label for _, label in keys], fontsize=8, rotation=30)
    ax.legend(fontsize=8)
    ax.set_title("layout and levels (means)", fontsize=9)
    fig.suptitle("precise-baa phantoms (top: preprocessed style, middle: raw style) and how they "
                 "compare with real preprocessed radiographs (aggregate statistics only)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default="/work/shared/data/real-dev",
                   help="folder with images/*.png (+ labels.csv); skipped when missing")
    p.add_argument("--n", type=int, default=40, help="phantoms per style")
    p.add_argument("--size", type=int, default=640, help="phantom size (longer side)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--styles", nargs="+", default=["preprocessed", "raw"])
    p.add_argument("--out", default="out/phantom_vs_real", help="metrics.json + side-by-side (not committed)")
    p.add_argument("--figure", default=None, help="also write the committable figure here")
    args = p.parse_args()

    import cv2

    cv2.setNumThreads(1)
    from precise_baa.synth import image_rng

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets: dict[str, dict] = {}
    real = []
    real_dir = Path(args.real)
    if (real_dir / "images").is_dir():
        labels = {}
        if (real_dir / "labels.csv").is_file():
            with (real_dir / "labels.csv").open() as f:
                labels = {r["id"]: r for r in csv.DictReader(f)}
        rows = []
        for path in sorted((real_dir / "images").glob("*.png")):
            img = read_gray(path)
            mask = real_mask(img)
            rows.append(measure(img, mask))
            lab = labels.get(path.stem, {})
            real.append((path.stem, img, mask, lab.get("sex", "M"),
                         float(lab.get("bone_age_months", 120)) / 12.0))
        sets["real"] = summarise(rows)
    for style in args.styles:
        rows = []
        for i in range(args.n):
            ph = render(image_rng(args.seed, i), args.size, style)
            a = np.round(ph.image * 255).astype(np.uint8)
            rows.append(measure(a, ph.mask, ph.artefact_mask))
        sets[f"phantom {style}" if getattr(ph, "style", None) else "phantom"] = summarise(rows)
    text = table(sets)
    print(text)
    (out / "metrics.json").write_text(json.dumps(
        {"size": args.size, "n": args.n, "table": text, "sets": sets}, indent=1))
    if real:
        side_by_side(real, args.size, out / "side_by_side.png")
        print(f"side-by-side (real images: do not commit): {out / 'side_by_side.png'}")
    if args.figure:
        figure(sets, args.size, Path(args.figure))
        print(f"figure (aggregate statistics only): {args.figure}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
