"""Recipes of the stage-3 graders (pydantic only: importing this never imports torch).

Two registered implementations share one model shape, ROI crops -> shared CNN -> 13 tokens
(+ ROI identity + sex embedding) -> optional self-attention across ROIs -> one head per ROI:

- ``densenet-attention``: DenseNet (timm) encoder and 13x13 ROI self-attention (precise-BAA).
- ``resnet-shuffle``: ResNet with shuffle attention in every block and dual (avg + max)
  pooling, each ROI graded on its own by default (the "improved ResNet" RUS-CHN grader).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..augment import LEGACY_FIELDS, Chance, Photometric, Sharpen, migrate_legacy
from ..schemas import Recipe


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JitterSettings(_Settings):
    """Box jitter at training time (see :class:`precise_baa.crops.Jitter`)."""

    scale: float = Field(0.1, ge=0, le=1)
    shift: float = Field(0.08, ge=0, le=0.5)
    rotation: float = Field(8.0, ge=0, le=45, description="degrees")
    aspect: float = Field(0.05, ge=0, le=0.5)


#: the graders' appearance randomisation (see GradeTraining.photometric)
GRADE_PHOTOMETRIC = Photometric(blur=Chance(p=0.15, range=(0.3, 0.8)),
                                resolution=Chance(p=0.15, range=(0.5, 0.9)),
                                sharpen=Sharpen(p=0.6, range=(0.3, 1.2), radius=(1.0, 3.0)))


class GradeTraining(_Settings):
    """How ``precise-baa train grade`` trains this grader (command-line flags override some)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1, description="radiographs per step (13 crops each)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    #: class weights per ROI: (count + smoothing) ** -power, normalised to mean 1 per sample
    class_weight_power: float = Field(0.5, ge=0, le=1)
    class_weight_smoothing: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    #: weight of the ordinal term: |expected stage - true stage| / (stages - 1)
    ordinal_weight: float = Field(0.5, ge=0)
    #: chance that each ROI is hidden during training (learns to grade with missing ROIs)
    roi_dropout: float = Field(0.05, ge=0, lt=1)
    jitter: JitterSettings = JitterSettings()
    #: resolution jitter: with probability p the hand crop is downscaled by a factor uniform
    #: in range before its ROIs are cut (a smaller, blurrier source, same crop size)
    hand_downscale: Chance = Chance(p=0.25, range=(0.6, 1.0))
    #: radiograph appearance randomisation (precise_baa.augment), one change per radiograph
    #: for its 13 crops (noise per crop); the crops' black background stays black. Blur and
    #: resolution drops are milder than the library defaults: a crop's pixels are coarse next
    #: to the stage details (growth plates, caps), and ROI crops of real radiographs are
    #: downsampled from large images, so sharp rather than soft
    photometric: Photometric = GRADE_PHOTOMETRIC
    #: training from bone ages (``--supervision bone-age`` / ``mixed``, see
    #: precise_baa.grade.train.bone_age_loss): Huber (delta ``age_huber_delta`` years) between
    #: the bone age of the expected stages (stage 4 in torch) and the label, times
    #: ``age_weight``; the hand prior (``hand_prior_weight``) holds each ROI near the maturity
    #: level the label implies: ``soft`` a cross entropy with the stages of a bone spread
    #: ``hand_prior_sd`` (points fraction) around it, ``l2`` the squared distance of its
    #: expected fraction; ``concentration_weight`` penalises the variance of each ROI's stage
    #: distribution (in stages), so heads stay peaked instead of mixing far stages
    age_weight: float = Field(1.0, ge=0)
    age_huber_delta: float = Field(1.0, gt=0)
    hand_prior_weight: float = Field(1.0, ge=0)
    hand_prior: Literal["soft", "l2"] = "soft"
    hand_prior_sd: float = Field(0.05, gt=0, le=1)
    concentration_weight: float = Field(0.05, ge=0)
    #: ``mixed`` supervision: the hand prior also on images with stage labels. Off: their
    #: labels say where each bone is, and the prior, which stands in for those labels where
    #: there are none, would pull the bones back to the hand's level (on phantoms, 45 epochs,
    #: three seeds: mixed 0.75 y with it, 0.64 y without and age_select_window 3, full
    #: supervision 0.60 y; benchmarks/RESULTS.md)
    hand_prior_on_staged: bool = False
    #: ``bone-age`` / ``mixed`` supervision: the best epoch is chosen by the validation bone-age
    #: error averaged over this many epochs up to it. A validation split has few ages (60 of
    #: 400 images), so one epoch's error is noisy; a single lucky dip early in training once
    #: kept a model 0.2 y worse than the last epoch's on phantoms
    age_select_window: int = Field(3, ge=1)
    #: ``mixed`` supervision: how the stage loss and the bone-age loss of one batch are added.
    #: ``image``: each image counts once (each term weighted by its images' share of the
    #: batch); ``term``: each term is the mean over its own images (a batch's one or two
    #: stage-labelled images then weigh as much as all its bone-age images together)
    mixed_weighting: Literal["image", "term"] = "image"
    #: ``mixed`` supervision: the stage loss's weight against the bone-age loss (with
    #: ``image`` weighting, a stage-labelled image then counts this many bone-age images; 6
    #: took mixed from 0.88 to 0.69 y on phantoms at 30 epochs, 3 to 0.80 y: RESULTS.md)
    mixed_stage_weight: float = Field(6.0, ge=0)
    #: ``mixed`` supervision: class weights for the stage loss, from the stage-labelled images
    #: only (off by default: from a few images they overweight those images' rare stages;
    #: benchmarks/RESULTS.md, partial labels)
    mixed_class_weights: bool = False

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """Older recipes: flat gamma / contrast / brightness / noise fields (and no resolution
        jitter: they were trained without it)."""
        if isinstance(data, dict) and any(k in data for k in LEGACY_FIELDS):
            data = {"hand_downscale": {"p": 0.0, "range": (1.0, 1.0)}, **data}
        return migrate_legacy(data, keep_background=True)

    @model_validator(mode="after")
    def _check_downscale(self):
        lo, hi = self.hand_downscale.range
        if not 0.05 <= lo <= hi <= 1:
            raise ValueError(f"hand_downscale.range {list(self.hand_downscale.range)}: "
                             "need 0.05 <= low <= high <= 1 (a downscale factor)")
        return self


class GradeRecipe(Recipe):
    """Settings shared by every grader."""

    stage: Literal["grade"] = "grade"
    #: stage convention of the heads; sizes come from precise_baa.rois.stage_counts
    standard: Literal["rus-chn", "tw3"] = "rus-chn"
    crop_size: int = Field(128, ge=16, le=1024)
    #: the ROI box is grown by this factor before cropping (same at training and inference)
    context: float = Field(1.2, ge=1.0, le=3.0)
    #: input normalisation: (crop - mean) / std (a 1-channel ImageNet stem expects ~0.449/0.226)
    mean: float = 0.449
    std: float = Field(0.226, gt=0)
    #: width of the ROI tokens
    embed_dim: int = Field(256, ge=8)
    roi_attention: bool = True
    attention_heads: int = Field(1, ge=1)
    attention_layers: int = Field(1, ge=1, le=8)
    sex_embedding: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    #: ImageNet weights for the encoder (downloaded once by timm); off: works offline
    pretrained: bool = False
    #: most radiographs per forward pass at inference (13 crops each)
    max_batch: int = Field(32, ge=1)
    #: what runs the network at inference: PyTorch, or ONNX Runtime on the weights folder's
    #: exported model.onnx (``precise-baa export WEIGHTS --format onnx``; needs the [onnx] extra)
    runtime: Literal["torch", "onnxruntime"] = "torch"
    training: GradeTraining = GradeTraining()

    @model_validator(mode="after")
    def _check_heads(self):
        if self.roi_attention and self.embed_dim % self.attention_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by attention_heads "
                             f"{self.attention_heads}")
        return self


class DenseNetAttentionRecipe(GradeRecipe):
    """DenseNet encoder + 13x13 ROI self-attention (the precise-BAA grader)."""

    implementation: Literal["densenet-attention"] = "densenet-attention"
    #: a timm DenseNet: densenet121 (the paper), densenet169, densenet201, densenetblur121d, ...
    backbone: str = "densenet121"
    #: a narrower / shallower DenseNet (no ImageNet weights then): e.g. 12 and [2, 4, 6, 4]
    growth_rate: int | None = Field(None, ge=4)
    block_config: tuple[int, ...] | None = None
    #: gradient checkpointing inside dense blocks (less memory, ~20 % slower training)
    memory_efficient: bool = False

    @model_validator(mode="after")
    def _check_backbone(self):
        if not self.backbone.startswith("densenet"):
            raise ValueError(f"backbone {self.backbone!r} is not a DenseNet (densenet121, densenet169, ...)")
        if self.pretrained and (self.growth_rate is not None or self.block_config is not None):
            raise ValueError("pretrained: true needs the stock backbone; ImageNet weights do not "
                             "exist for a custom growth_rate / block_config")
        return self


class ResNetShuffleRecipe(GradeRecipe):
    """ResNet with shuffle attention (SA-Net) in every block and dual (avg + max) pooling."""

    implementation: Literal["resnet-shuffle"] = "resnet-shuffle"
    roi_attention: bool = False
    #: stock depth (resnet18/34/50/101) or custom: block + layers + channels
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "custom"] = "resnet50"
    block: Literal["basic", "bottleneck"] | None = None
    layers: tuple[int, int, int, int] | None = None
    channels: tuple[int, int, int, int] | None = None
    #: shuffle-attention groups; each block's output channels must divide by 2 x groups
    shuffle_groups: int = Field(64, ge=1)
    #: concatenate global average and max pooling (off: average only)
    dual_pooling: bool = True

    @model_validator(mode="after")
    def _check_arch(self):
        custom = self.backbone == "custom"
        given = [n for n in ("block", "layers", "channels") if getattr(self, n) is not None]
        if custom and len(given) != 3:
            raise ValueError("backbone: custom needs block, layers and channels")
        if not custom and given:
            raise ValueError(f"{', '.join(given)} only apply to backbone: custom")
        if custom and self.pretrained:
            raise ValueError("pretrained: true needs a stock backbone (resnet18/34/50/101)")
        bad = [c for c in self.block_channels() if c % (2 * self.shuffle_groups)]
        if bad:
            raise ValueError(f"shuffle_groups {self.shuffle_groups}: block outputs of {bad} channels "
                             f"do not divide by 2 x groups; choose fewer groups")
        return self

    def arch(self) -> tuple[str, tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(block, layers, channels) of the backbone."""
        if self.backbone == "custom":
            return self.block, self.layers, self.channels  # type: ignore[return-value]
        return _STOCK_RESNETS[self.backbone]

    def block_channels(self) -> list[int]:
        block, _, channels = self.arch()
        return [c * (4 if block == "bottleneck" else 1) for c in channels]


_STOCK_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512)),
}
