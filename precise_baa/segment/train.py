"""Training a U-Net palm segmenter on image / mask pairs (``precise-baa train segment``).

Data: ``DIR/images`` + ``DIR/masks`` (same names; the phantom generator's layout) or a COCO
manifest whose images carry ``mask_file`` (:func:`precise_baa.data.segmentation_pairs`).
Every image is prepared exactly as at inference (:func:`precise_baa.segment.unet.network_input`:
longest side to ``input_size``, percentile window, zero padded square) and cached; training
adds a random radiograph appearance (:mod:`precise_baa.augment`: exposure, display curve,
blur / sharpening, noise, resolution) and a geometric change of image and mask together with
OpenCV (rotation, zoom 0.6-1.3 by default, shift, flips). The loss is soft Dice + BCE;
:func:`precise_baa.training.fit` runs the loop and keeps the epoch with the best validation Dice.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..augment import photometric_augment
from ..data import read_pair, segmentation_pairs
from ..errors import RecipeError
from ..evaluation import mask_metrics
from ..paths import display_path
from ..registry import parse_recipe, read_recipe
from ..training import (
    FitResult,
    fit,
    make_loaders,
    pick_device,
    seed_everything,
    setup_distributed,
    with_training_overrides,
)
from .base import letterbox
from .recipes import AugmentSettings, UnetRecipe
from .unet import UnetSegmenter, build_unet, input_card, normalise_canvas

log = logging.getLogger(__name__)

INTENDED_USE = ("Stage 1 of precise-baa: palm (hand, wrist and forearm soft tissue) mask of a "
                "hand radiograph, cleaned and used to crop the hand for ROI detection and "
                "grading. Research use; not a medical device.")

Pair = tuple[Path, Path]


# --------------------------------------------------------------------------------------------
# Data
def prepare_pair(image_path: Path, mask_path: Path, recipe: UnetRecipe
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(canvas float32 [S, S] in [0, 1], soft mask float32 [S, S], image part (h, w))``:
    the network's view of one labelled radiograph, before normalisation and augmentation."""
    image, mask = read_pair(image_path, mask_path)
    canvas, hw = letterbox(image, recipe.input_size, recipe.intensity_window)
    target, _ = letterbox(mask.astype(np.float32), recipe.input_size)
    return canvas, target, hw


def augment(image: np.ndarray, mask: np.ndarray, hw: tuple[int, int], rng: np.random.Generator,
            a: AugmentSettings) -> tuple[np.ndarray, np.ndarray]:
    """One random appearance + geometric change of a letterboxed image and its mask.

    The appearance change (:func:`precise_baa.augment.photometric_augment`) touches the image
    part only (the zero padding stays zero, as at inference); flips, then one affine warp
    (rotation and zoom about the image's centre, shift) move image and mask together, new
    borders filled with zero, so the hand's size in the frame varies over ``a.scale``.
    """
    image, mask = image.copy(), mask.copy()
    h, w = hw
    image[:h, :w] = photometric_augment(image[:h, :w], rng, a.photometric)
    size = image.shape[0]
    cx, cy = w / 2, h / 2  # centre of the image part
    if rng.random() < a.hflip:
        image, mask, cx = image[:, ::-1], mask[:, ::-1], size - cx
    if rng.random() < a.vflip:
        image, mask, cy = image[::-1], mask[::-1], size - cy
    angle = float(rng.uniform(-a.rotation, a.rotation))
    scale = float(rng.uniform(*a.scale))
    if angle or scale != 1.0 or a.shift:
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[:, 2] += rng.uniform(-a.shift, a.shift, size=2) * size
        warp = dict(dsize=(size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0)
        image = cv2.warpAffine(np.ascontiguousarray(image), m, **warp)
        mask = cv2.warpAffine(np.ascontiguousarray(mask), m, **warp)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class SegmentationDataset(Dataset):
    """``(image [1, S, S] normalised, mask [1, S, S] in [0, 1])`` per pair, augmented when ``train``.

    ``cache`` keeps each prepared pair in memory (float16) after the first read; randomness
    depends on (seed, epoch, index) only, so runs repeat with any number of workers.
    """

    def __init__(self, pairs: Sequence[Pair], recipe: UnetRecipe, *, train: bool, seed: int = 0,
                 cache: bool = True):
        self.pairs = list(pairs)
        self.recipe = recipe
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._cache: list | None = [None] * len(self.pairs) if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        if self._cache is None:
            return prepare_pair(*self.pairs[i], self.recipe)
        if self._cache[i] is None:
            canvas, target, hw = prepare_pair(*self.pairs[i], self.recipe)
            self._cache[i] = (canvas.astype(np.float16), target.astype(np.float16), hw)
        canvas, target, hw = self._cache[i]
        return canvas.astype(np.float32), target.astype(np.float32), hw

    def preload(self) -> None:
        """Fill the cache now (before DataLoader workers fork and share it)."""
        if self._cache is not None:
            for i in range(len(self)):
                self.example(i)

    def as_eval(self) -> SegmentationDataset:
        """The same pairs (and cache) without augmentation."""
        other = copy.copy(self)
        other.train = False
        return other

    def __getitem__(self, i: int):
        canvas, target, hw = self.example(i)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            canvas, target = augment(canvas, target, hw, rng, self.recipe.training.augment)
        x = normalise_canvas(canvas, self.recipe)[None]
        return torch.from_numpy(x), torch.from_numpy(target[None].astype(np.float32))


# --------------------------------------------------------------------------------------------
def segment_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0,
                 bce_weight: float = 1.0) -> torch.Tensor:
    """``dice_weight`` x soft Dice loss (smp, over the batch) + ``bce_weight`` x BCE (logits)."""
    from segmentation_models_pytorch.losses import DiceLoss

    logits, target = logits.float(), target.float()
    loss = logits.new_zeros(())
    if dice_weight:
        loss = loss + dice_weight * DiceLoss(mode="binary", from_logits=True)(logits, target)
    if bce_weight:
        loss = loss + bce_weight * F.binary_cross_entropy_with_logits(logits, target)
    return loss


def canvas_metrics(segmenter: UnetSegmenter, loader: DataLoader) -> dict[str, float]:
    """Mean Dice and IoU at network resolution (thresholded as the cleanup does) over ``loader``."""
    threshold = segmenter.recipe.cleanup.threshold
    rows = []
    for x, y in loader:
        probs = segmenter.predict_canvas(x.numpy())
        for p, t in zip(probs, y.numpy()[:, 0]):
            rows.append(mask_metrics(p >= threshold, t >= 0.5))
    return {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "iou")}


def _is_phantom(data: Path) -> bool:
    """Whether the dataset's manifest marks its images as phantoms (``"phantom": true``)."""
    manifest = data if data.suffix == ".json" else data / "annotations.json"
    if not manifest.is_file():
        return False
    try:
        images = json.loads(manifest.read_text()).get("images", [])
    except (json.JSONDecodeError, AttributeError):
        return False
    return any(isinstance(im, dict) and im.get("phantom") for im in images)


def train_segmenter(
    recipe: UnetRecipe | dict | str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    val_fraction: float | None = None,
    device: str | None = None,
    seed: int = 0,
    workers: int = 0,
    cache: bool = True,
    init_weights: str | Path | None = None,
    phantom: bool | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a U-Net segmenter; the best weights folder (by validation Dice) goes to ``out_dir``.

    ``recipe``: a recipe file, mapping or model; ``epochs`` / ``batch_size`` / ``lr`` /
    ``val_fraction`` override its ``training`` block. ``data``: a folder with ``images/`` and
    ``masks/`` or a COCO manifest with ``mask_file``. ``init_weights``: a weights folder to
    start from (fine-tuning). ``phantom``: mark the card phantom-trained (default: read from
    the dataset's manifest, ``"phantom": true`` on its images).
    """
    if isinstance(recipe, (str, Path)):
        recipe = read_recipe("segment", recipe)
    elif isinstance(recipe, dict):
        recipe = parse_recipe("segment", recipe)
    if not isinstance(recipe, UnetRecipe):
        raise RecipeError(f"the {recipe.implementation!r} segmenter has no weights to train; "
                          "train a recipe with implementation: unet (e.g. stages/segment/unet-lite.yaml)")
    recipe = with_training_overrides(recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                     val_fraction=val_fraction)
    t = recipe.training
    device = setup_distributed(pick_device(device))  # under torchrun: this process's device
    seed_everything(seed)
    data = Path(data)
    pairs = segmentation_pairs(data)
    loaders = make_loaders(
        pairs, lambda items, train: SegmentationDataset(items, recipe, train=train, seed=seed, cache=cache),
        val_fraction=t.val_fraction, seed=seed, batch_size=t.batch_size,
        val_batch_size=max(t.batch_size, 8), workers=workers, device=device, cache=cache)
    train_loader, val_loader = loaders.train, loaders.val

    model = build_unet(recipe, pretrained=init_weights is None)
    if init_weights is not None:
        from ..weights import load_into, load_weights

        load_into(model, load_weights(init_weights))
    segmenter = UnetSegmenter(model, recipe, device=device)

    def loss_fn(model, batch):
        x, y = (v.to(device, non_blocking=True) for v in batch)
        return segment_loss(model(x), y, dice_weight=t.dice_weight, bce_weight=t.bce_weight)

    def validate(model) -> dict[str, float]:
        return canvas_metrics(segmenter, val_loader)

    card = {
        "intended_use": INTENDED_USE,
        "phantom_trained": bool(_is_phantom(data) if phantom is None else phantom),
        "training_data": {"data": display_path(data), "pairs": len(pairs), "train": len(loaders.train_items),
                          "val": len(loaders.val_items), "seed": seed},
        "training": {**t.model_dump(), "device": device},
        "metric": "dice: validation Dice of the thresholded network output at input_size "
                  "(before cleanup); precise-baa evaluate segment gives full-size metrics",
        **input_card(recipe),
    }
    return fit(model, loaders.batches, loss_fn, validate, metric="dice", out_dir=out_dir,
               recipe=recipe, card=card, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
               device=device, steps_per_epoch=len(train_loader), progress=progress)
