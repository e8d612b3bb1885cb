"""The detect-stage recipe: an mmdet config plus how its raw boxes become 13 checked ROIs.

A recipe is usually just the config file (``stages/detect/detectors-cascade-rcnn-lite.py``;
:func:`precise_baa.registry.read_recipe` wraps it), or a YAML file naming it with settings::

    stage: detect
    implementation: mmdet
    config: stages/detect/detectors-cascade-rcnn-r50.py
    pretrained: true          # ImageNet backbone weights (downloads once; off by default)
    input_size: 640           # hand crop resized into 640 x 640 (default: the config's)
    proposals: 100            # RPN proposals per image at test time (default: the config's)
    score_threshold: 0.3
    anatomy: {size_factor: 3.5}

A weights folder stores the recipe with ``mmdet_config``, the config resolved to plain data,
so loading trained weights never executes a Python file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..schemas import Recipe
from .anatomy import AnatomyParams


class DetectRecipe(Recipe):
    """Recipe of the ``mmdet`` detect implementation."""

    stage: Literal["detect"] = "detect"
    implementation: Literal["mmdet"] = "mmdet"
    #: path of the mmdet config (``.py``), relative to the working directory or the repo root
    config: str
    #: the resolved config as data (written into weights folders; takes precedence over ``config``)
    mmdet_config: dict[str, Any] | None = None
    #: initialise the backbone from ImageNet weights as the config names them (a download)
    pretrained: bool = False
    #: the longer side (px) the hand crop is resized to, replacing the config's ``image_scale``
    #: in every Resize/Pad step of its pipelines (None: as the config says)
    input_size: int | None = Field(None, ge=64, le=4096)
    #: RPN proposals kept per image at test time, replacing the config's ``test_cfg.rpn``
    #: ``max_per_img`` (None: as the config says); 13 objects per hand need few
    proposals: int | None = Field(None, ge=13, le=10000)
    #: predict with the model's inference form (weight standardisation and BatchNorm folded
    #: into the convolutions once, NHWC on CPU; same outputs within float rounding):
    #: precise_baa.detect.fast
    fast_inference: bool = True
    #: a box counts only with at least this score
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    #: boxes per ROI class tried, best first, when the top one is anatomically implausible
    #: (1: the top box only)
    candidates: int = Field(5, ge=1, le=50)
    #: a ROI with no box scoring ``score_threshold`` may take a box scoring at least this when
    #: the rest of the hand is found and the box fits it (precise_baa.detect.anatomy
    #: ``rescue_missing``; flagged ``roi_low_score`` for review). The detector's own test-time
    #: score floor (``test_cfg.rcnn.score_thr``) is lowered to it. None: no rescue
    rescue_threshold: float | None = Field(0.01, ge=0.0, le=1.0)
    #: rescue only when at most this many ROIs have no box
    rescue_max: int = Field(2, ge=1, le=13)
    #: images per forward pass at inference
    max_batch: int = Field(4, ge=1)
    anatomy: AnatomyParams = AnatomyParams()

    @property
    def display_name(self) -> str:
        return self.name or Path(self.config).stem
