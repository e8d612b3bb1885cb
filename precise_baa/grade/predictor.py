"""The stage-3 predictor: radiograph crops + ROI boxes + sex -> stage probabilities per ROI.

>>> grader = load_stage("grade", weights="weights/grade-densenet-attention-lite")  # doctest: +SKIP
>>> g = grader.grade([image], [detections.boxes], ["F"])[0]                         # doctest: +SKIP
>>> g.stages["radius"], g.confidence["radius"], g.attention.shape                   # doctest: +SKIP
(9, 0.71, (13, 13))

Missing ROIs: a ROI whose box is ``None`` (or absent) is not cropped or graded. The network
gets a learned "missing" token in its place, masked out of the attention keys, so the other
ROIs are graded from what is there; the ROI is left out of ``Grades.probabilities`` (no
guessed stage, no uniform placeholder) and a ``roi_not_graded`` flag names it. Scoring needs
all 13 stages, so the pipeline rejects such a radiograph unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..crops import crop_rois, present_mask
from ..errors import InputError
from ..interfaces import Grades
from ..rois import ROI_BY_KEY, ROI_KEYS, stage_counts
from ..schemas import Box, Flag, ModelInfo, parse_sex
from ..training import pick_device
from ..weights import restore, save_weights
from .models import GraderNet, build_model
from .recipes import GradeRecipe

SEX_INDEX = {"F": 0, "M": 1}


def sex_index(sex: object) -> int:
    """0 for female, 1 for male (the sex embedding's rows)."""
    return SEX_INDEX[parse_sex(sex)]


class RoiGrader:
    """Grades the 13 ROIs of hand crops; see the module docstring for missing ROIs.

    ``grade`` crops every ROI of every image with :func:`precise_baa.crops.crop_rois` and runs
    them through the network in as few forward passes as ``recipe.max_batch`` allows.
    """

    def __init__(self, model: GraderNet, recipe: GradeRecipe, *, device: str | None = None,
                 info: ModelInfo | None = None):
        self.recipe = recipe
        self.standard: str = recipe.standard
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        if self.device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.info = info or ModelInfo(stage="grade", implementation=recipe.implementation,
                                      name=recipe.name or recipe.implementation)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: GradeRecipe, weights: str | Path | None = None,
                    device: str | None = None) -> RoiGrader:
        """Build the recipe's network; load ``weights`` (a weights folder) into it if given.

        With ``weights`` the network is built without ImageNet weights (never a download:
        the trained tensors replace them anyway).
        """
        model = build_model(recipe.model_copy(update={"pretrained": False}) if weights else recipe)
        info = None
        if weights is not None:
            info = restore(model, weights, stage="grade", implementation=recipe.implementation, name=recipe.name)
        return cls(model, recipe, device=device, info=info)

    def save_pretrained(self, out_dir: str | Path, card: dict[str, Any] | None = None,
                        half: bool = False) -> Path:
        """Write a weights folder (safetensors + recipe + card) that ``load_stage`` rebuilds."""
        return save_weights(out_dir, self.model.state_dict(), self.recipe,
                            card={**input_card(self.recipe), **(card or {})}, half=half)

    # ------------------------------------------------------------------ inference
    def crops(self, images: Sequence[np.ndarray], boxes: Sequence[Mapping[str, Box | None]]
              ) -> tuple[np.ndarray, np.ndarray]:
        """``([B, 13, S, S] float32 crops, [B, 13] bool present)`` exactly as ``grade`` sees them."""
        r = self.recipe
        crops = np.stack([crop_rois(im, bx, r.crop_size, context=r.context)
                          for im, bx in zip(images, boxes, strict=True)]) if images else \
            np.zeros((0, len(ROI_KEYS), r.crop_size, r.crop_size), np.float32)
        present = np.stack([present_mask(bx) for bx in boxes]) if boxes else \
            np.zeros((0, len(ROI_KEYS)), bool)
        return crops, present

    def predict_crops(self, crops: np.ndarray, sexes: Sequence[int], present: np.ndarray
                      ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Probabilities ``13 x [B, stages]`` and attention ``[B, 13, 13]`` (None without it).

        Rows whose ``present`` is all False must not be passed (there is nothing to grade).
        """
        model = self.model
        was_training = model.training
        model.eval()
        probs: list[list[np.ndarray]] = [[] for _ in ROI_KEYS]
        atts: list[np.ndarray] = []
        step = self.recipe.max_batch
        try:
            with torch.inference_mode():
                for s in range(0, len(crops), step):
                    x = torch.from_numpy(np.ascontiguousarray(crops[s:s + step])).to(self.device)
                    sex = torch.as_tensor(np.asarray(sexes[s:s + step]), dtype=torch.long,
                                          device=self.device)
                    pres = torch.from_numpy(np.asarray(present[s:s + step])).to(self.device)
                    out = model(x, sex, pres)
                    for i, logit in enumerate(out.logits):
                        probs[i].append(logit.float().softmax(-1).cpu().numpy())
                    if out.attention is not None:
                        atts.append(out.attention.float().cpu().numpy())
        finally:
            model.train(was_training)
        counts = stage_counts(self.standard)
        stacked = [np.concatenate(p) if p else np.zeros((0, counts[k]), np.float32)
                   for p, k in zip(probs, ROI_KEYS)]
        return stacked, (np.concatenate(atts) if atts else None)

    def grade(self, images: Sequence[np.ndarray], boxes: Sequence[Mapping[str, Box | None]],
              sexes: Sequence[str]) -> list[Grades]:
        """One :class:`Grades` per image; boxes are in each image's own pixel coordinates."""
        if not len(images) == len(boxes) == len(sexes):
            raise InputError(f"grade: {len(images)} images, {len(boxes)} box sets and "
                             f"{len(sexes)} sexes; give one of each per radiograph")
        sex_idx = [sex_index(s) for s in sexes]
        crops, present = self.crops(images, boxes)
        todo = [i for i in range(len(images)) if present[i].any()]
        probs, att = self.predict_crops(crops[todo], [sex_idx[i] for i in todo], present[todo]) \
            if todo else ([], None)
        row = {i: j for j, i in enumerate(todo)}
        out = []
        for i in range(len(images)):
            flags = [Flag(code="roi_not_graded", stage="grade", roi=k,
                          message=f"{ROI_BY_KEY[k].name}: no box, so no stage")
                     for k, p in zip(ROI_KEYS, present[i]) if not p]
            if i not in row:
                out.append(Grades(standard=self.standard, probabilities={}, attention=None,
                                  flags=flags))
                continue
            j = row[i]
            out.append(Grades(
                standard=self.standard,
                probabilities={k: probs[c][j] for c, k in enumerate(ROI_KEYS) if present[i, c]},
                attention=att[j] if att is not None else None,
                flags=flags,
            ))
        return out


def input_card(recipe: GradeRecipe) -> dict[str, Any]:
    """What a reader of the weights needs to know about the network's input and output."""
    return {
        "input": {"crop_size": recipe.crop_size, "context": recipe.context, "channels": 1,
                  "range": "[0, 1] hand crop (precise_baa.handcrop.hand_crop), bright = bone",
                  "normalisation": {"mean": recipe.mean, "std": recipe.std},
                  "crop": "precise_baa.crops.crop_roi: box x context, aspect kept, zero padded"},
        "output": {"standard": recipe.standard, "stages": stage_counts(recipe.standard),
                   "attention": "13x13, rows = querying ROI" if recipe.roi_attention else None},
    }
