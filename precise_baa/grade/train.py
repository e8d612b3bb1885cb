"""Training a grader on a COCO manifest (``precise-baa train grade``).

Each radiograph is first turned into what the grader sees at inference, the segmenter's hand
crop (:func:`precise_baa.data.prepared_example`: ground-truth mask, boxes moved into the crop).
Its 13 ROIs are cut with the inference crop function, with box jitter (shift, scale, aspect,
rotation) so ground-truth crops look like detector crops, plus gray-level augmentation (gamma,
contrast, brightness, noise). The loss is class-weighted cross entropy per ROI head (weights
from the training stage histogram, smoothed) plus an optional ordinal term, the distance of
the expected stage from the true one. :func:`precise_baa.training.fit` runs the loop and keeps
the checkpoint with the best validation mean exact accuracy over ROIs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..crops import Jitter, crop_rois, present_mask
from ..data import ImageRecord, load_coco
from ..errors import InputError
from ..registry import parse_recipe, read_recipe
from ..rois import ROI_KEYS, stage_counts
from ..training import (
    FitResult,
    fit,
    make_loaders,
    pick_device,
    seed_everything,
    with_training_overrides,
)
from ..weights import PHANTOM_NOTICE
from .models import GraderOutput, build_model
from .predictor import RoiGrader, input_card, sex_index
from .recipes import GradeRecipe

log = logging.getLogger(__name__)

INTENDED_USE = ("Stage 3 of precise-baa: maturity stage of each of the 13 RUS ROIs of a hand "
                "radiograph, from the segmenter's hand crop and the detector's ROI boxes. Research "
                "use; not a medical device.")


# --------------------------------------------------------------------------------------------
# Data
def _prepare(record: ImageRecord) -> tuple[np.ndarray, dict]:
    from ..data import prepared_example

    image, boxes, _ = prepared_example(record)
    return image, boxes


class GradeDataset(Dataset):
    """13 ROI crops + stage labels per radiograph, augmented when ``train``.

    Items: ``(crops float32 [13, S, S], labels int64 [13] (-1 = unknown or hidden), sex int64,
    present bool [13])``. ``cache`` keeps each hand crop in memory (float16) after the first
    read; randomness depends on (seed, epoch, index) only, so runs repeat with any number of
    workers.
    """

    def __init__(self, records: Sequence[ImageRecord], recipe: GradeRecipe, *, train: bool,
                 seed: int = 0, cache: bool = True):
        self.records = list(records)
        self.recipe = recipe
        self.train = train
        self.seed = seed
        self.epoch = 0
        t = recipe.training
        self.jitter = Jitter(scale=t.jitter.scale, shift=t.jitter.shift,
                             rotation=t.jitter.rotation, aspect=t.jitter.aspect)
        self._cache: list[tuple[np.ndarray, dict] | None] | None = \
            [None] * len(self.records) if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def example(self, i: int) -> tuple[np.ndarray, dict]:
        if self._cache is None:
            return _prepare(self.records[i])
        if self._cache[i] is None:
            image, boxes = _prepare(self.records[i])
            self._cache[i] = (image.astype(np.float16), boxes)
        image, boxes = self._cache[i]  # type: ignore[misc]
        return image.astype(np.float32), boxes

    def as_eval(self) -> GradeDataset:
        """The same images (and cache) without augmentation."""
        other = copy.copy(self)
        other.train = False
        return other

    def preload(self) -> None:
        """Fill the cache now (before DataLoader workers fork and share it)."""
        if self._cache is not None:
            for i in range(len(self)):
                self.example(i)

    def __getitem__(self, i: int):
        r, t = self.recipe, self.recipe.training
        record = self.records[i]
        image, boxes = self.example(i)
        truth = record.stages_for(r.standard)
        labels = np.array([truth.get(k, -1) for k in ROI_KEYS], dtype=np.int64)
        present = present_mask(boxes)
        sex = sex_index(record.sex) if record.sex is not None else 0
        if not self.train:
            crops = crop_rois(image, boxes, r.crop_size, context=r.context)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            hide = rng.random(len(ROI_KEYS)) < t.roi_dropout
            if (present & ~hide).any():
                present = present & ~hide
            shown = {k: (boxes.get(k) if present[c] else None) for c, k in enumerate(ROI_KEYS)}
            crops = crop_rois(image, shown, r.crop_size, context=r.context, jitter=self.jitter,
                              rng=rng)
            crops = gray_augment(crops, rng, gamma=t.gamma, contrast=t.contrast,
                                 brightness=t.brightness, noise=t.noise)
        labels[~present] = -1
        return torch.from_numpy(crops), torch.from_numpy(labels), sex, torch.from_numpy(present)


def gray_augment(crops: np.ndarray, rng: np.random.Generator, *, gamma: float, contrast: float,
                 brightness: float, noise: float) -> np.ndarray:
    """One radiograph's exposure change (gamma, contrast, brightness) and per-pixel noise.

    Background (exact 0: outside the hand or padding) stays 0, as at inference.
    """
    g = float(np.exp(rng.uniform(-np.log(gamma), np.log(gamma)))) if gamma > 1 else 1.0
    c = float(rng.uniform(1 - contrast, 1 + contrast))
    b = float(rng.uniform(-brightness, brightness))
    out = np.clip(crops, 0, 1) ** g * c + b
    if noise:
        out = out + rng.normal(0.0, noise, size=crops.shape).astype(np.float32)
    return np.where(crops > 0, np.clip(out, 0, 1), 0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Loss
def class_weights(records: Sequence[ImageRecord], standard: str, *, power: float = 0.5,
                  smoothing: float = 1.0) -> list[torch.Tensor]:
    """Per ROI: ``(count + smoothing) ** -power`` over its stages, mean 1 over training samples."""
    counts = stage_counts(standard)
    out = []
    for k in ROI_KEYS:
        hist = np.zeros(counts[k], dtype=np.float64)
        for r in records:
            s = r.stages_for(standard).get(k)
            if s is not None and k in r.boxes:
                hist[s] += 1
        w = (hist + smoothing) ** -power
        if hist.sum() > 0:
            w = w * hist.sum() / float((w * hist).sum())
        out.append(torch.tensor(w, dtype=torch.float32))
    return out


def grade_loss(out: GraderOutput, labels: torch.Tensor, weights: Sequence[torch.Tensor] | None = None,
               *, ordinal_weight: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over ROIs of (weighted) cross entropy + ``ordinal_weight`` x expected-stage L1.

    ``labels`` ``[B, 13]``, -1 = ignore. The ordinal term ``|E[stage] - stage| / (stages - 1)``
    makes a one-stage miss cheaper than a five-stage miss.
    """
    terms = []
    for c, logits in enumerate(out.logits):
        y = labels[:, c]
        valid = y >= 0
        if not bool(valid.any()):
            continue
        z, t = logits[valid].float(), y[valid]
        w = weights[c].to(z.device) if weights is not None else None
        loss = F.cross_entropy(z, t, weight=w, label_smoothing=label_smoothing)
        if ordinal_weight:
            k = z.shape[1]
            expected = (z.softmax(-1) * torch.arange(k, device=z.device, dtype=z.dtype)).sum(-1)
            loss = loss + ordinal_weight * ((expected - t).abs() / max(1, k - 1)).mean()
        terms.append(loss)
    if not terms:
        return sum(lg.sum() for lg in out.logits) * 0.0  # keeps the graph; nothing to learn
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------------------------
def predict_loader(grader: RoiGrader, loader: DataLoader
                   ) -> tuple[list[dict[str, int]], list[dict[str, int]], list[int]]:
    """Predicted and true stages (ROIs with a box and a label) of the items of an unshuffled
    ``loader`` that have any box, and those items' indices."""
    pred, true, index = [], [], []
    start = 0
    for crops, labels, sex, present in loader:
        keep = present.numpy().any(1)
        index += [start + int(j) for j in np.flatnonzero(keep)]
        start += len(keep)
        pres, lab = present.numpy()[keep], labels.numpy()[keep]
        probs, _ = grader.predict_crops(crops.numpy()[keep], sex.numpy()[keep], pres)
        stages = np.stack([p.argmax(1) for p in probs], axis=1) if len(pres) else lab
        for j in range(len(pres)):
            graded = [c for c in range(len(ROI_KEYS)) if pres[j, c] and lab[j, c] >= 0]
            pred.append({ROI_KEYS[c]: int(stages[j, c]) for c in graded})
            true.append({ROI_KEYS[c]: int(lab[j, c]) for c in graded})
    return pred, true, index


def _usable(records: Sequence[ImageRecord], recipe: GradeRecipe, source: str) -> list[ImageRecord]:
    out = [r for r in records if any(k in r.boxes and k in r.stages_for(recipe.standard)
                                     for k in ROI_KEYS)]
    if not out:
        field = "stage" if recipe.standard == "rus-chn" else "stage_tw3"
        raise InputError(f"{source}: no image has an ROI with both a bbox and a {field!r}; "
                         f"nothing to train a {recipe.standard} grader on")
    if recipe.sex_embedding:
        no_sex = [r.path.name for r in out if r.sex is None]
        if no_sex:
            raise InputError(f"{source}: {len(no_sex)} image(s) have no 'sex' (e.g. {no_sex[0]}); "
                             "the grader's sex embedding needs it (or set sex_embedding: false)")
    return out


def train_grader(
    recipe: GradeRecipe | dict | str | Path,
    coco: str | Path,
    images_dir: str | Path | None,
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
    """Train a grader; the best weights folder (by val mean accuracy) goes to ``out_dir``.

    ``recipe``: a recipe file, mapping or model; ``epochs`` / ``batch_size`` / ``lr`` /
    ``val_fraction`` override its ``training`` block. ``init_weights``: a weights folder to
    start from (fine-tuning). ``phantom``: mark the card phantom-trained (default: detected
    from the manifest's images, ``"phantom": true``).
    """
    if isinstance(recipe, (str, Path)):
        recipe = read_recipe("grade", recipe)
    elif isinstance(recipe, dict):
        recipe = parse_recipe("grade", recipe)
    recipe = with_training_overrides(recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                     val_fraction=val_fraction)
    t = recipe.training
    device = pick_device(device)
    seed_everything(seed)
    manifest = load_coco(coco, images_dir)
    records = _usable(manifest.records, recipe, str(coco))
    loaders = make_loaders(
        records, lambda items, train: GradeDataset(items, recipe, train=train, seed=seed, cache=cache),
        val_fraction=t.val_fraction, seed=seed, batch_size=t.batch_size,
        val_batch_size=max(t.batch_size, 16), workers=workers, device=device, cache=cache)
    train_recs = loaders.train_items
    val_recs = loaders.val_items or loaders.train_items
    train_ds, train_loader, val_loader = loaders.train_ds, loaders.train, loaders.val

    model = build_model(recipe)
    if init_weights is not None:
        from ..weights import load_into, load_weights

        load_into(model, load_weights(init_weights))
    grader = RoiGrader(model, recipe, device=device)
    weights = class_weights(train_recs, recipe.standard, power=t.class_weight_power,
                            smoothing=t.class_weight_smoothing)

    def train_batches(epoch: int):
        train_ds.epoch = epoch
        return iter(train_loader)

    def loss_fn(model, batch):
        crops, labels, sex, present = (x.to(device, non_blocking=True) for x in batch)
        out = model(crops, sex, present)
        return grade_loss(out, labels, weights, ordinal_weight=t.ordinal_weight,
                          label_smoothing=t.label_smoothing)

    def validate(model) -> dict[str, float]:
        from .evaluate import grading_metrics

        pred, true, index = predict_loader(grader, val_loader)
        m = grading_metrics(pred, true, [val_recs[i].sex for i in index], recipe.standard)
        out = {"mean_accuracy": m["accuracy"]["mean_exact"] or 0.0,
               "mean_within_one": m["accuracy"]["mean_within_one"] or 0.0}
        if m["bone_age"]["n"]:
            out["bone_age_mae"] = m["bone_age"]["mae_vs_true_stages"]
        return out

    if phantom is None:
        phantom = any(bool(r.extra.get("phantom")) for r in manifest.records)
    card = {
        "intended_use": INTENDED_USE,
        "phantom_trained": bool(phantom),
        **({"notice": PHANTOM_NOTICE} if phantom else {}),
        "training_data": {"manifest": str(coco), "images": len(manifest.records),
                          "train": len(train_recs), "val": len(loaders.val_items),
                          "seed": seed,
                          "stage_histogram": stage_histogram(train_recs, recipe.standard)},
        "training": {**t.model_dump(), "device": device},
        "metric": "mean_accuracy: validation exact stage accuracy averaged over the 13 ROIs",
        **input_card(recipe),
    }
    return fit(model, train_batches, loss_fn, validate, metric="mean_accuracy", out_dir=out_dir,
               recipe=recipe, card=card, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
               device=device, steps_per_epoch=len(train_loader), progress=progress)


def stage_histogram(records: Sequence[ImageRecord], standard: str) -> dict[str, list[int]]:
    """Stage counts per ROI (what the class weights are computed from)."""
    counts = stage_counts(standard)
    return {k: np.bincount([r.stages_for(standard)[k] for r in records
                            if k in r.stages_for(standard)], minlength=counts[k]).tolist()
            for k in ROI_KEYS}
