"""Training a grader on a COCO manifest (``precise-baa train grade``).

The data (hand crops, jittered ROI crops, gray-level augmentation) come from
:mod:`precise_baa.grade.dataset`. The loss is class-weighted cross entropy per ROI head (weights
from the training stage histogram, smoothed) plus an optional ordinal term, the distance of
the expected stage from the true one. :func:`precise_baa.training.fit` runs the loop and keeps
the checkpoint with the best validation mean exact accuracy over ROIs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data import ImageRecord, load_coco
from ..paths import display_path
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
from .dataset import GradeDataset, usable_records
from .evaluate import grading_metrics
from .models import GraderOutput, build_model
from .predictor import RoiGrader, input_card
from .recipes import GradeRecipe

log = logging.getLogger(__name__)

INTENDED_USE = ("Stage 3 of precise-baa: maturity stage of each of the 13 RUS ROIs of a hand "
                "radiograph, from the segmenter's hand crop and the detector's ROI boxes. Research "
                "use; not a medical device.")


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
    records = usable_records(manifest.records, recipe, str(coco))
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
        "training_data": {"manifest": display_path(coco), "images": len(manifest.records),
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
