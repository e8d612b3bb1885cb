"""The stage-2 predictor: hand crops in, exactly one checked box (or a flag) per ROI out.

>>> det = load_stage("detect", weights="weights/detect-detectors-lite")   # doctest: +SKIP
>>> d = det.detect([crop])[0]                                            # doctest: +SKIP
>>> d.boxes["radius"], d.scores["radius"], [f.code for f in d.flags]     # doctest: +SKIP
(Box(x0=..., ...), 0.98, [])

Input: float32 ``[H, W]`` grayscale in ``[0, 1]`` (bright = bone), as
:func:`precise_baa.handcrop.hand_crop` produces. Training reads the same crops as 8-bit
PNGs, so the predictor scales by 255 and repeats the channel when the model expects 3; the
config's test pipeline (resize) and data preprocessor (mean/std, padding) do the rest, in
memory. Boxes come back in the input image's pixel coordinates. After the detector,
:func:`precise_baa.detect.anatomy.detections_from_raw` keeps one box per ROI: the top one, or
a lower-ranked candidate where the top one is anatomically implausible, and drops what is still
implausible with a flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import InputError
from ..interfaces import Detections
from ..schemas import ModelInfo
from ..training import pick_device
from ..weights import restore, save_weights
from .anatomy import detections_from_raw
from .config import (
    build_model,
    count_parameters,
    inference_pipeline,
    input_channels,
    load_config,
    resolved_recipe,
)
from .recipe import DetectRecipe


@dataclass(frozen=True)
class RawDetections:
    """All boxes the detector kept for one image (before one-per-ROI selection)."""

    bboxes: np.ndarray  # [N, 4] xyxy, input image pixels
    scores: np.ndarray  # [N]
    labels: np.ndarray  # [N] index into ROI_KEYS


def to_model_input(image: np.ndarray, channels: int = 3) -> np.ndarray:
    """Float ``[H, W]`` in [0, 1] -> float32 ``[H, W, C]`` in [0, 255] (the 8-bit PNG range)."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"the detector takes 2-D grayscale images, got shape {img.shape}")
    if img.size == 0:
        raise InputError("the detector got an empty image")
    x = np.clip(img.astype(np.float32, copy=False), 0.0, 1.0) * np.float32(255.0)
    if channels == 3:
        return cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)  # the same copies as np.repeat, faster
    return np.repeat(x[:, :, None], channels, axis=2)


class MmdetDetector:
    """An mmdet detector behind the stage contract (:class:`precise_baa.interfaces.Detector`)."""

    def __init__(self, model: torch.nn.Module, cfg: Any, recipe: DetectRecipe, *,
                 device: str | None = None, info: ModelInfo | None = None):
        self.recipe = resolved_recipe(recipe, cfg)
        self.cfg = cfg
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.pipeline = inference_pipeline(cfg)
        self.channels = input_channels(cfg)
        self._fast: torch.nn.Module | None = None
        self._fast_key: tuple[int, int] | None = None
        self.info = info or ModelInfo(stage="detect", implementation=recipe.implementation,
                                      name=recipe.display_name)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: DetectRecipe, weights: str | Path | None = None,
                    device: str | None = None) -> MmdetDetector:
        """Build the recipe's detector; load ``weights`` (a weights folder) into it if given.

        Without weights the model is initialised as the config says (random unless the recipe
        asks for ``pretrained``).
        """
        cfg = load_config(recipe)
        model = build_model(cfg, init_weights=weights is None)
        info = None
        if weights is not None:
            info = restore(model, weights, stage="detect", implementation=recipe.implementation, name=recipe.name)
        return cls(model, cfg, recipe, device=device, info=info)

    def save_pretrained(self, out_dir: str | Path, card: dict[str, Any] | None = None,
                        half: bool = False) -> Path:
        """Write a weights folder (safetensors + recipe with the config as data + card)."""
        return save_weights(out_dir, self.model.state_dict(), self.recipe,
                            card={**input_card(self.cfg), **(card or {})}, half=half)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    # ------------------------------------------------------------------ inference
    def inference_model(self) -> torch.nn.Module:
        """The model that predicts: ``self.model`` itself, or with the recipe's
        ``fast_inference`` its inference form (:mod:`precise_baa.detect.fast`), rebuilt when
        ``self.model`` or any of its tensors has changed since (training, loading weights)."""
        if not self.recipe.fast_inference:
            return self.model
        from .fast import inference_copy, tensor_versions

        key = (id(self.model), tensor_versions(self.model))
        if self._fast is None or key != self._fast_key:
            self._fast = inference_copy(self.model, channels_last=self.device == "cpu")
            self._fast_key = key
        return self._fast

    def predict_raw(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Every box the model outputs (after its own NMS and score threshold), per image."""
        from mmengine.dataset import pseudo_collate

        out: list[RawDetections] = []
        step = self.recipe.max_batch
        if self.model.training:
            self.model.eval()
        model = self.inference_model()
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            batch = pseudo_collate([
                self.pipeline({"img": to_model_input(img, self.channels), "img_id": start + i})
                for i, img in enumerate(chunk)
            ])
            with torch.inference_mode():
                results = model.test_step(batch)
            for img, r in zip(chunk, results, strict=True):
                p = r.pred_instances
                # clipped to the image: a fixed-size Pad makes mmdet clip to the padded canvas
                h, w = np.asarray(img).shape[:2]
                bboxes = p.bboxes.detach().float().cpu().numpy().reshape(-1, 4)
                bboxes = np.clip(bboxes, 0.0, np.array([w, h, w, h], np.float32))
                out.append(RawDetections(
                    bboxes=bboxes,
                    scores=p.scores.detach().float().cpu().numpy().reshape(-1),
                    labels=p.labels.detach().cpu().numpy().reshape(-1),
                ))
        return out

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per image: 13 boxes or ``None`` with a flag saying why."""
        r = self.recipe
        return [detections_from_raw(raw.bboxes, raw.scores, raw.labels,
                                    score_threshold=r.score_threshold, params=r.anatomy,
                                    max_candidates=r.candidates,
                                    rescue_threshold=r.rescue_threshold, rescue_max=r.rescue_max)
                for raw in self.predict_raw(images)]


def input_card(cfg: Any) -> dict[str, Any]:
    """What a reader of the weights needs to know about the input (stored in the card)."""
    resize = next((s for s in cfg.get("test_pipeline", []) if "Resize" in s.get("type", "")), {})
    pre = cfg.model.get("data_preprocessor") or {}
    return {"input": {
        "image": "float32 grayscale hand crop in [0, 1] (precise_baa.segment hand_crop), "
                 "x255, repeated to the model's channels",
        "channels": input_channels(cfg),
        "resize": {"scale": list(resize.get("scale", [])), "keep_ratio": resize.get("keep_ratio")},
        "mean": list(pre.get("mean", [])), "std": list(pre.get("std", [])),
        "pad_size_divisor": pre.get("pad_size_divisor"),
    }, "intended_use": "13 RUS ROI boxes on hand crops for bone age assessment (stage 2)"}
