"""What the training-time radiograph appearance randomisation does, and how far it reaches.

    OMP_NUM_THREADS=1 python benchmarks/augmentation_sheet.py \\
        [--figure docs/augmentation.png] [--real /work/shared/data/real-dev] [--n 8]

* ``--figure``: a phantom hand crop as the detector sees it (384 px; the library defaults of
  :class:`precise_baa.augment.Photometric`, as in the detector and segmenter recipes) and four
  of its ROI crops as the lite grader sees them (64 px; the grader's resolution jitter and
  milder blur): the original and 8 random changes. Phantom pixels only, safe to commit.
* the cost of one change at 512 px (median of 50, one thread);
* ``--real DIR`` (``DIR/images/*.png``, hands segmented onto black): appearance statistics of
  the real hand crops next to ``--n`` phantoms and 12 random changes of each, all at 384 px:
  noise (robust std of the high-pass residual inside the hand), sharpness (99th percentile of
  the gradient), band-pass energy (edge enhancement: std of the difference of Gaussians, sigma 1
  and 4) and intensity percentiles. Numbers only; no real pixel is written anywhere.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from precise_baa.augment import Photometric, photometric_augment
from precise_baa.crops import crop_rois
from precise_baa.handcrop import CleanupParams, hand_crop
from precise_baa.rois import ROI_KEYS
from precise_baa.synth import render_phantom

SIDE = 384  # the lite detector's input size
SHOWN_ROIS = ("radius", "mc3", "pp3", "dp3")


def fit(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """``image`` with its longer side resized to ``side``."""
    h, w = image.shape
    f = side / max(h, w)
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (round(w * f), round(h * f)), interpolation=interp)


def phantom_crop(seed: int, size: int = 512):
    p = render_phantom(seed, size, style="preprocessed" if seed % 2 else "raw")
    crop, box = hand_crop(p.image, p.mask, CleanupParams())
    return crop, {k: b.shift(-box.x0, -box.y0) for k, b in p.boxes.items()}


def figure(path: Path, seed: int = 107, n: int = 8) -> None:
    from precise_baa.grade.dataset import downscale_hand
    from precise_baa.grade.recipes import GradeTraining

    hand_settings, grade = Photometric(), GradeTraining()
    crop, boxes = phantom_crop(seed)
    hand = fit(crop)
    pick = [ROI_KEYS.index(k) for k in SHOWN_ROIS]
    tile = 256

    def hand_tile(im):
        t = np.zeros((SIDE, SIDE), np.float32)
        t[:im.shape[0], :im.shape[1]] = im
        return cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA)

    def roi_tile(rois):
        grid = np.vstack([np.hstack(list(rois[:2])), np.hstack(list(rois[2:]))])
        return cv2.resize(grid, (tile, tile), interpolation=cv2.INTER_NEAREST)

    top, bottom = [hand_tile(hand)], [roi_tile(crop_rois(crop, boxes, 64)[pick])]
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        top.append(hand_tile(photometric_augment(hand, rng, hand_settings)))
        image, moved = crop, boxes
        factor = grade.hand_downscale.sample(rng)
        if factor is not None and factor < 1:
            image, moved = downscale_hand(crop, boxes, factor)
        rois = crop_rois(image, moved, 64)[pick]
        bottom.append(roi_tile(photometric_augment(rois, rng, grade.photometric)))
    sheet = (np.vstack([np.hstack(top), np.hstack(bottom)]) * 255).astype(np.uint8)
    sheet = cv2.copyMakeBorder(sheet, 28, 0, 0, 0, cv2.BORDER_CONSTANT, value=255)
    for i in range(n + 1):
        cv2.putText(sheet, "phantom" if i == 0 else f"random change {i}", (i * tile + 6, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, 0, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)
    print(f"wrote {path} ({sheet.shape[1]} x {sheet.shape[0]})")


def cost_ms(repeats: int = 50) -> float:
    crop, _ = phantom_crop(3)
    image = np.zeros((512, 512), np.float32)
    small = fit(crop, 512)
    image[:small.shape[0], :small.shape[1]] = small
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        photometric_augment(image, rng)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def appearance(crop: np.ndarray) -> list[float]:
    """noise, sharpness, band-pass energy, intensity percentiles 5/50/95 inside the hand."""
    fg = cv2.erode((crop > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    noise = np.median(np.abs(crop - cv2.GaussianBlur(crop, (0, 0), 1.0))[fg]) * 1.4826
    grad = np.hypot(cv2.Sobel(crop, cv2.CV_32F, 1, 0), cv2.Sobel(crop, cv2.CV_32F, 0, 1))
    band = cv2.GaussianBlur(crop, (0, 0), 1.0) - cv2.GaussianBlur(crop, (0, 0), 4.0)
    return [float(noise), float(np.percentile(grad[fg], 99)), float(band[fg].std()),
            *np.percentile(crop[fg], [5, 50, 95]).tolist()]


def compare(real_dir: Path, n: int) -> None:
    real = []
    for f in sorted((real_dir / "images").glob("*.png")):
        image = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        real.append(appearance(fit(hand_crop(image, image > 8 / 255, CleanupParams())[0])))
    phantom, changed = [], []
    for seed in range(100, 100 + n):
        crop = fit(phantom_crop(seed)[0])
        phantom.append(appearance(crop))
        changed += [appearance(photometric_augment(crop, np.random.default_rng([seed, j])))
                    for j in range(12)]
    names = ["noise", "sharpness", "band-pass", "p5", "p50", "p95"]
    print(f"\n{'':10s} {'real (' + str(len(real)) + ')':>16s} {'phantoms':>16s} "
          f"{'changed phantoms':>18s} {'(5-95 %)':>14s}")
    for k, name in enumerate(names):
        r, p, c = (np.array(v)[:, k] for v in (real, phantom, changed))
        lo, hi = np.percentile(c, [5, 95])
        print(f"{name:10s} {r.min():7.3f}-{r.max():<8.3f} {p.min():7.3f}-{p.max():<8.3f} "
              f"{c.min():8.3f}-{c.max():<9.3f} {lo:6.3f}-{hi:<7.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figure", type=Path, default=Path("docs/augmentation.png"))
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--n", type=int, default=8, help="phantoms in the --real comparison")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    figure(args.figure)
    print(f"one change at 512 px: {cost_ms():.1f} ms (median, one thread)")
    if args.real is not None:
        compare(args.real, args.n)


if __name__ == "__main__":
    main()
