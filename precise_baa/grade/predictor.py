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

``runtime: onnxruntime`` in the recipe runs the weights folder's exported ``model.onnx``
(:mod:`precise_baa.runtime`) in place of the PyTorch forward; cropping, softmax and the
result are the same code. The exported graph (:class:`GraderGraph`) encodes all 13 crops and
puts the "missing" token where ``present`` is False (a fixed-shape graph), which gives the
same outputs as :class:`~precise_baa.grade.models.GraderNet`, which skips those crops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..crops import crop_rois, present_mask
from ..errors import InputError, WeightsError
from ..interfaces import Grades
from ..rois import ROI_BY_KEY, ROI_KEYS, stage_counts
from ..schemas import Box, Flag, ModelInfo, parse_sex
from ..training import pick_device
from ..weights import restore, save_weights
from .models import GraderNet, build_model
from .recipes import GradeRecipe

if TYPE_CHECKING:
    from ..runtime.session import ExportGraph, OnnxModel

SEX_INDEX = {"F": 0, "M": 1}
#: the exported graph's inputs; outputs are ``logits_<roi>`` per ROI (+ ``attention``)
ONNX_INPUTS = ("crops", "sex", "present")


def sex_index(sex: object) -> int:
    """0 for female, 1 for male (the sex embedding's rows)."""
    return SEX_INDEX[parse_sex(sex)]


class RoiGrader:
    """Grades the 13 ROIs of hand crops; see the module docstring for missing ROIs.

    ``grade`` crops every ROI of every image with :func:`precise_baa.crops.crop_rois` and runs
    them through the network in as few forward passes as ``recipe.max_batch`` allows.
    """

    def __init__(self, model: GraderNet | None, recipe: GradeRecipe, *, device: str | None = None,
                 info: ModelInfo | None = None, onnx: OnnxModel | None = None):
        if model is None and onnx is None:
            raise ValueError("RoiGrader needs a torch model or an ONNX model")
        self.recipe = recipe
        self.standard: str = recipe.standard
        self.device = pick_device(device)
        self.onnx = onnx
        self.model = None if model is None else model.to(self.device).eval()
        if self.model is not None:  # NHWC: a fifth faster on 2 CPU cores (benchmarks/RESULTS.md)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.info = info or ModelInfo(stage="grade", implementation=recipe.implementation,
                                      name=recipe.name or recipe.implementation)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: GradeRecipe, weights: str | Path | None = None,
                    device: str | None = None) -> RoiGrader:
        """Build the recipe's network; load ``weights`` (a weights folder) into it if given.

        With ``weights`` the network is built without ImageNet weights (never a download:
        the trained tensors replace them anyway). With ``runtime: onnxruntime`` the folder's
        exported ``model.onnx`` is loaded instead (checked against its card).
        """
        if recipe.runtime == "onnxruntime":
            from ..runtime.session import open_exported

            onnx, info, device = open_exported(
                "grade", weights, implementation=recipe.implementation, name=recipe.name,
                device=device, expect_inputs=ONNX_INPUTS)
            expected = onnx_outputs(recipe)
            if onnx.output_names != list(expected):
                raise WeightsError(f"{onnx.path}: outputs {onnx.output_names[:3]}... do not fit "
                                   f"the recipe ({expected[0]}, ...); export again")
            return cls(None, recipe, device=device, info=info, onnx=onnx)
        model = build_model(recipe.model_copy(update={"pretrained": False}) if weights else recipe)
        info = None
        if weights is not None:
            info = restore(model, weights, stage="grade", implementation=recipe.implementation, name=recipe.name)
        return cls(model, recipe, device=device, info=info)

    def _torch_model(self, what: str) -> GraderNet:
        if self.model is None:
            raise WeightsError(f"{what} needs the PyTorch network; this grader runs an ONNX "
                               "export: load the weights folder with runtime: torch")
        return self.model

    def save_pretrained(self, out_dir: str | Path, card: dict[str, Any] | None = None,
                        half: bool = False) -> Path:
        """Write a weights folder (safetensors + recipe + card) that ``load_stage`` rebuilds."""
        return save_weights(out_dir, self._torch_model("saving").state_dict(), self.recipe,
                            card={**input_card(self.recipe), **(card or {})}, half=half)

    def export_graph(self) -> ExportGraph:
        """The network for ``precise-baa export``: ``crops [B, 13, S, S]`` float, ``sex [B]``
        int64, ``present [B, 13]`` bool -> 13 logits ``[B, stages]`` (+ attention ``[B, 13, 13]``)."""
        from ..runtime.session import ExportGraph

        model = self._torch_model("exporting").to("cpu").float().eval()
        s, n = self.recipe.crop_size, len(ROI_KEYS)
        rng = np.random.default_rng(0)
        crops = torch.from_numpy(rng.random((2, n, s, s), dtype=np.float32))
        present = torch.ones(2, n, dtype=torch.bool)
        present[1, 3] = False
        sex = torch.tensor([0, 1], dtype=torch.long)
        return ExportGraph(GraderGraph(model).eval(), (crops, sex, present), ONNX_INPUTS,
                           onnx_outputs(self.recipe))

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

    def forward(self, crops: np.ndarray, sexes: np.ndarray, present: np.ndarray
                ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The forward pass: 13 logits ``[B, stages]`` and attention ``[B, 13, 13]`` (or None),
        from the PyTorch network or the ONNX export (then as CPU tensors)."""
        if self.onnx is not None:
            outs = self.onnx.run(crops=crops, sex=sexes.astype(np.int64),
                                 present=present.astype(bool))
            logits = [torch.from_numpy(o) for o in outs[:len(ROI_KEYS)]]
            att = torch.from_numpy(outs[len(ROI_KEYS)]) if len(outs) > len(ROI_KEYS) else None
            return logits, att
        x = torch.from_numpy(crops).to(self.device)
        sex = torch.as_tensor(sexes, dtype=torch.long, device=self.device)
        pres = torch.from_numpy(present).to(self.device)
        out = self.model(x, sex, pres)
        return list(out.logits), out.attention

    def predict_crops(self, crops: np.ndarray, sexes: Sequence[int], present: np.ndarray
                      ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Probabilities ``13 x [B, stages]`` and attention ``[B, 13, 13]`` (None without it).

        Rows whose ``present`` is all False must not be passed (there is nothing to grade).
        """
        model = self.model
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        probs: list[list[np.ndarray]] = [[] for _ in ROI_KEYS]
        atts: list[np.ndarray] = []
        step = self.recipe.max_batch
        try:
            with torch.inference_mode():
                for s in range(0, len(crops), step):
                    logits, attention = self.forward(
                        np.ascontiguousarray(crops[s:s + step], dtype=np.float32),
                        np.asarray(sexes[s:s + step], dtype=np.int64),
                        np.ascontiguousarray(present[s:s + step], dtype=bool))
                    for i, logit in enumerate(logits):
                        probs[i].append(logit.float().softmax(-1).cpu().numpy())
                    if attention is not None:
                        atts.append(attention.float().cpu().numpy())
        finally:
            if model is not None:
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


def onnx_outputs(recipe: GradeRecipe) -> tuple[str, ...]:
    """The exported graph's output names: ``logits_<roi>`` in ROI order (+ ``attention``)."""
    names = tuple(f"logits_{k}" for k in ROI_KEYS)
    return names + (("attention",) if recipe.roi_attention else ())


class GraderGraph(torch.nn.Module):
    """:class:`GraderNet`'s forward as a fixed-shape graph for export (no data-dependent shapes).

    Every crop is encoded (the encoder is per-crop in eval mode, so the present ones get the
    same features); where ``present`` is False the token is the learned "missing" token and the
    key is masked, as in ``GraderNet``. Returns the 13 logits (+ the attention map).
    """

    def __init__(self, net: GraderNet):
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor, sex: torch.Tensor, present: torch.Tensor):
        net = self.net
        b, n, h, w = crops.shape
        x = (crops.reshape(b * n, 1, h, w) - net.mean) / net.std
        feats = net.embed(net.encoder(x))
        tokens = torch.where(present.reshape(b * n, 1), feats, net.missing_token.to(feats.dtype))
        tokens = tokens.reshape(b, n, -1) + net.roi_embed.to(feats.dtype)
        if net.sex_embed is not None:
            tokens = tokens + net.sex_embed(sex.long()).to(feats.dtype)[:, None, :]
        attention = None
        for block in net.blocks:
            tokens, attention = block(tokens, present)
        tokens = net.head_drop(net.norm(tokens))
        logits = tuple(head(tokens[:, i]) for i, head in enumerate(net.heads))
        return logits + ((attention,) if attention is not None else ())


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
