"""Grading data: labelled radiographs -> 13 ROI crops with stage labels (training and evaluation).

Each radiograph is first turned into what the grader sees at inference, the segmenter's hand
crop (:func:`precise_baa.data.prepared_example`: ground-truth mask, boxes moved into the crop).
Its 13 ROIs are cut with the inference crop function; for training with box jitter (shift,
scale, aspect, rotation) so ground-truth crops look like detector crops, resolution jitter
(sometimes from a downscaled hand) and one radiograph appearance change for all 13 crops
(:mod:`precise_baa.augment`: exposure, display curve, blur / sharpening, noise per crop).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..augment import photometric_augment
from ..crops import Jitter, crop_rois, present_mask
from ..data import ImageRecord, prepared_example
from ..errors import InputError
from ..rois import ROI_KEYS
from ..schemas import Box
from .predictor import sex_index
from .recipes import GradeRecipe


def prepare_record(record: ImageRecord) -> tuple[np.ndarray, dict]:
    """``(hand crop, boxes in crop coordinates)`` of a labelled radiograph, as at inference."""
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
            return prepare_record(self.records[i])
        if self._cache[i] is None:
            image, boxes = prepare_record(self.records[i])
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
            factor = t.hand_downscale.sample(rng)
            if factor is not None and factor < 1:
                image, shown = downscale_hand(image, shown, factor)
            crops = crop_rois(image, shown, r.crop_size, context=r.context, jitter=self.jitter,
                              rng=rng)
            crops = photometric_augment(crops, rng, t.photometric)
        labels[~present] = -1
        return torch.from_numpy(crops), torch.from_numpy(labels), sex, torch.from_numpy(present)


def downscale_hand(image: np.ndarray, boxes: Mapping[str, Box | None], factor: float
                   ) -> tuple[np.ndarray, dict[str, Box | None]]:
    """``image`` resized by ``factor`` (area averaging) and ``boxes`` moved with it: the same
    hand at a lower resolution (resolution jitter for training)."""
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    fx, fy = size[0] / w, size[1] / h
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    moved = {k: None if b is None else Box(x0=b.x0 * fx, y0=b.y0 * fy, x1=b.x1 * fx, y1=b.y1 * fy)
             for k, b in boxes.items()}
    return small, moved


def usable_records(records: Sequence[ImageRecord], recipe: GradeRecipe, source: str) -> list[ImageRecord]:
    """The records a grader can learn from or be evaluated on (an ROI with a box and a stage);
    an ``InputError`` when none is, or when the sex embedding lacks a sex."""
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
