"""Recipes of the stage-1 segmenters (pydantic only: importing this never imports torch or cv2).

Two registered implementations share the cleanup that turns a probability map into one hand
and the hand crop every later stage sees (:mod:`precise_baa.handcrop`):

- ``unet``: a segmentation-models-pytorch ``Unet`` (1-channel input, encoder named in the
  recipe) trained on image / mask pairs.
- ``threshold``: Otsu's threshold on a blurred image; no weights, a baseline and fallback.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..augment import Photometric, migrate_legacy
from ..schemas import Recipe


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CleanupSettings(_Settings):
    """The recipe face of :class:`precise_baa.handcrop.CleanupParams` (same fields and
    defaults, with bounds checked when the recipe is read)."""

    #: probability at or above which a pixel is hand
    threshold: float = Field(0.5, gt=0, lt=1)
    #: opening kernel (px, original image): removes specks and thin bridges; 0 = off
    opening_px: int = Field(3, ge=0, le=101)
    #: closing kernel (px): smooths the outline, closes small gaps; 0 = off
    closing_px: int = Field(5, ge=0, le=101)
    #: crop margin as a fraction of the hand box's longer side
    margin: float = Field(0.04, ge=0, le=0.5)
    #: value outside the mask in the hand crop (after normalisation)
    background: float = Field(0.0, ge=0, le=1)
    #: percentile window of the pixels inside the mask -> [0, 1]
    window: tuple[float, float] = (0.5, 99.5)
    #: plausible hand area, as a fraction of the image
    min_area: float = Field(0.05, ge=0, le=1)
    max_area: float = Field(0.95, ge=0, le=1)
    #: plausible shape: hand area / area of its bounding box
    min_fill: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.window
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"window {self.window}: need 0 <= low < high <= 100 (percentiles)")
        if self.min_area >= self.max_area:
            raise ValueError(f"min_area {self.min_area} must be below max_area {self.max_area}")
        return self

    def params(self):
        """The :class:`~precise_baa.handcrop.CleanupParams` these settings describe."""
        from ..handcrop import CleanupParams

        return CleanupParams(**self.model_dump())


class SegmentRecipe(Recipe):
    """Settings shared by every segmenter."""

    stage: Literal["segment"] = "segment"
    cleanup: CleanupSettings = CleanupSettings()


class ThresholdRecipe(SegmentRecipe):
    """Otsu's threshold on a blurred, downscaled image + the shared cleanup (no weights)."""

    implementation: Literal["threshold"] = "threshold"
    #: the image is thresholded at this longest side (px; smaller = faster, coarser)
    working_size: int = Field(512, ge=64, le=8192)
    #: Gaussian blur before thresholding, as a fraction of the working size
    blur: float = Field(0.01, ge=0, le=0.1)
    #: Otsu's threshold is multiplied by this: below 1 keeps the faint soft tissue at the
    #: hand's outline (Otsu alone splits soft tissue from bone as often as from background)
    threshold_scale: float = Field(0.6, gt=0, le=3)
    #: white border strips: searched this deep from each edge (fraction of the side; 0 = off)
    strip_depth: float = Field(0.08, ge=0, le=0.5)
    #: ... as rows / columns with at least this share above the threshold
    strip_fraction: float = Field(0.75, gt=0, le=1)


class AugmentSettings(_Settings):
    """Training-time augmentation of the network-size image and mask: geometric (OpenCV, image
    and mask together; borders filled with zero) and photometric (the image only, see
    :mod:`precise_baa.augment`)."""

    rotation: float = Field(15.0, ge=0, le=180, description="degrees, uniform in +-rotation")
    #: zoom about the image's centre, uniform in [low, high]: below 1 the radiograph shrinks
    #: inside the frame (zero borders), above 1 it is cropped; a number s means [1 - s, 1 + s]
    scale: tuple[float, float] = (0.6, 1.3)
    shift: float = Field(0.1, ge=0, le=0.5, description="translation, fraction of the side")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of an upside-down flip")
    #: radiograph appearance randomisation; the whole radiograph is seen, so its dark
    #: background is changed too (keep_background: false)
    photometric: Photometric = Photometric(keep_background=False)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """Older recipes: ``scale`` as a spread, flat gamma / contrast / brightness / noise."""
        data = migrate_legacy(data, keep_background=False)
        if isinstance(data, dict) and isinstance(data.get("scale"), (int, float)):
            s = float(data["scale"])
            if not 0 <= s < 1:
                raise ValueError(f"scale {s}: a spread must be in [0, 1), or give [low, high]")
            data = {**data, "scale": (1 - s, 1 + s)}
        return data

    @model_validator(mode="after")
    def _check_scale(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 4:
            raise ValueError(f"scale {list(self.scale)}: need 0 < low <= high <= 4")
        return self


class SegmentTraining(_Settings):
    """How ``precise-baa train segment`` trains this segmenter (command-line flags override some)."""

    epochs: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    augment: AugmentSettings = AugmentSettings()

    @model_validator(mode="after")
    def _check(self):
        if self.dice_weight == 0 and self.bce_weight == 0:
            raise ValueError("dice_weight and bce_weight are both 0: nothing to learn from")
        return self


class UnetRecipe(SegmentRecipe):
    """segmentation-models-pytorch ``Unet`` with a 1-channel input and one output (hand)."""

    implementation: Literal["unet"] = "unet"
    #: any smp encoder: resnet34, resnet18, mobilenet_v2, tu-mobilenetv3_small_100, ...
    encoder: str = "resnet34"
    encoder_depth: int = Field(5, ge=3, le=5)
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    #: ``imagenet`` downloads the encoder's ImageNet weights once (needs internet); null: offline
    encoder_weights: Literal["imagenet"] | None = None
    #: the network sees the image with its longest side resized to this (zero padded square)
    input_size: int = Field(512, ge=32, le=4096)
    #: per-image percentile window applied before the network (robust to exposure and bit
    #: depth); null: use the [0, 1] pixels as read
    intensity_window: tuple[float, float] | None = (0.5, 99.5)
    #: input normalisation after the window: (x - mean) / std
    mean: float = 0.449
    std: float = Field(0.226, gt=0)
    #: most images per forward pass at inference
    max_batch: int = Field(8, ge=1)
    #: what runs the network at inference: PyTorch, or ONNX Runtime on the weights folder's
    #: exported model.onnx (``precise-baa export WEIGHTS --format onnx``; needs the [onnx] extra)
    runtime: Literal["torch", "onnxruntime"] = "torch"
    training: SegmentTraining = SegmentTraining()

    @model_validator(mode="after")
    def _check(self):
        stride = 2**self.encoder_depth
        if self.input_size % stride:
            raise ValueError(f"input_size {self.input_size} must be a multiple of {stride} "
                             f"(2 ** encoder_depth); e.g. {self.input_size // stride * stride or stride}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(f"decoder_channels has {len(self.decoder_channels)} entries; "
                             f"encoder_depth {self.encoder_depth} needs {self.encoder_depth}")
        if any(c < 1 for c in self.decoder_channels):
            raise ValueError("decoder_channels must be positive")
        if self.intensity_window is not None:
            lo, hi = self.intensity_window
            if not 0 <= lo < hi <= 100:
                raise ValueError(f"intensity_window {self.intensity_window}: need "
                                 "0 <= low < high <= 100 (percentiles)")
        return self

    @property
    def stride(self) -> int:
        return 2**self.encoder_depth
