"""The ``unet`` segmenter: segmentation-models-pytorch ``Unet`` + the shared cleanup.

Any image size goes in: each image is resized so its longest side is ``recipe.input_size``,
windowed to its own intensity percentiles, placed top-left on a zero square (a multiple of the
encoder's stride), and the probability map is cut and resized back to the original size.

>>> seg = load_stage("segment", weights="weights/segment-unet-lite")  # doctest: +SKIP
>>> r = seg.segment([image])[0]                                       # doctest: +SKIP
>>> r.mask.shape == image.shape, r.crop_box, r.rejected                # doctest: +SKIP

``runtime: onnxruntime`` in the recipe runs the weights folder's exported ``model.onnx``
(:mod:`precise_baa.runtime`) in place of the PyTorch forward; everything around it is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import RecipeError, WeightsError
from ..schemas import ModelInfo
from ..training import pick_device
from ..weights import restore, save_weights
from .base import BaseSegmenter, letterbox, unletterbox
from .recipes import UnetRecipe

if TYPE_CHECKING:
    from ..runtime.session import ExportGraph, OnnxModel

#: the exported graph's input and output names
ONNX_INPUTS = ("image",)
ONNX_OUTPUTS = ("logits",)


def build_unet(recipe: UnetRecipe, *, pretrained: bool = True) -> torch.nn.Module:
    """The recipe's ``smp.Unet`` (1 input channel, 1 logit per pixel).

    ImageNet encoder weights are downloaded only with ``encoder_weights: imagenet`` and
    ``pretrained`` (pass False when trained weights are loaded next: nothing to download).
    """
    import segmentation_models_pytorch as smp

    encoder_weights = recipe.encoder_weights if pretrained else None
    try:
        return smp.Unet(
            encoder_name=recipe.encoder,
            encoder_depth=recipe.encoder_depth,
            encoder_weights=encoder_weights,
            decoder_channels=tuple(recipe.decoder_channels),
            in_channels=1,
            classes=1,
        )
    except (KeyError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "unknown model" not in str(e).lower():
            raise
        raise RecipeError(f"encoder {recipe.encoder!r}: not a segmentation-models-pytorch encoder "
                          f"({e}); e.g. resnet34, resnet18, mobilenet_v2, tu-mobilenetv3_small_100"
                          ) from None
    except OSError as e:
        if encoder_weights is None:
            raise
        raise WeightsError(f"encoder {recipe.encoder!r}: could not get its {encoder_weights} "
                           f"weights ({type(e).__name__}: {str(e)[:200]}); connect to the internet "
                           "once, or set encoder_weights: null to start from random weights"
                           ) from None


def network_input(images: Sequence[np.ndarray], recipe: UnetRecipe
                  ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``([B, 1, S, S] float32 normalised, image part (h, w) per image)`` as the network sees them."""
    canvases, parts = [], []
    for image in images:
        canvas, hw = letterbox(image, recipe.input_size, recipe.intensity_window)
        canvases.append(canvas)
        parts.append(hw)
    x = (np.stack(canvases)[:, None] - np.float32(recipe.mean)) / np.float32(recipe.std)
    return x.astype(np.float32), parts


def normalise_canvas(canvas: np.ndarray, recipe: UnetRecipe) -> np.ndarray:
    """``(canvas - mean) / std``: the last step of :func:`network_input` (used in training)."""
    return ((canvas - np.float32(recipe.mean)) / np.float32(recipe.std)).astype(np.float32)


class UnetSegmenter(BaseSegmenter):
    """Palm segmentation with a U-Net; batches of ``recipe.max_batch`` images per forward pass.

    The forward pass runs ``model`` (PyTorch) or, when given, ``onnx`` (the exported network
    in ONNX Runtime; ``model`` is then None): see :meth:`logits`.
    """

    def __init__(self, model: torch.nn.Module | None, recipe: UnetRecipe, *,
                 device: str | None = None, info: ModelInfo | None = None,
                 onnx: OnnxModel | None = None):
        if model is None and onnx is None:
            raise ValueError("UnetSegmenter needs a torch model or an ONNX model")
        self.recipe = recipe
        self.cleanup = recipe.cleanup.params()
        self.device = pick_device(device)
        self.onnx = onnx
        self.model = None if model is None else model.to(self.device).eval()
        if self.model is not None:  # NHWC: a quarter faster on 2 CPU cores (benchmarks/RESULTS.md)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.info = info or ModelInfo(stage="segment", implementation="unet",
                                      name=recipe.name or "unet")

    @classmethod
    def from_recipe(cls, recipe: UnetRecipe, weights: str | Path | None = None,
                    device: str | None = None) -> UnetSegmenter:
        """Build the recipe's network; load ``weights`` (a weights folder) into it if given.

        With ``runtime: onnxruntime`` the folder's exported ``model.onnx`` is loaded instead
        (checked against its card); no PyTorch network is built.
        """
        if recipe.runtime == "onnxruntime":
            from ..runtime.session import open_exported

            onnx, info, device = open_exported(
                "segment", weights, implementation="unet", name=recipe.name, device=device,
                expect_inputs=ONNX_INPUTS)
            return cls(None, recipe, device=device, info=info, onnx=onnx)
        model = build_unet(recipe, pretrained=weights is None)
        info = None
        if weights is not None:
            info = restore(model, weights, stage="segment", implementation="unet", name=recipe.name)
        return cls(model, recipe, device=device, info=info)

    def _torch_model(self, what: str) -> torch.nn.Module:
        if self.model is None:
            raise WeightsError(f"{what} needs the PyTorch network; this segmenter runs an ONNX "
                               "export: load the weights folder with runtime: torch")
        return self.model

    def save_pretrained(self, out_dir: str | Path, card: dict[str, Any] | None = None,
                        half: bool = False) -> Path:
        """Write a weights folder (safetensors + recipe + card) that ``load_stage`` rebuilds."""
        return save_weights(out_dir, self._torch_model("saving").state_dict(), self.recipe,
                            card={**input_card(self.recipe), **(card or {})}, half=half)

    def export_graph(self) -> ExportGraph:
        """The network for ``precise-baa export``: ``image [B, 1, S, S]`` -> ``logits [B, 1, S, S]``."""
        from ..runtime.session import ExportGraph

        model = self._torch_model("exporting").to("cpu").float().eval()
        s = self.recipe.input_size
        example = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, s, s))
                                   .astype(np.float32))
        return ExportGraph(model, (example,), ONNX_INPUTS, ONNX_OUTPUTS)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """The forward pass: ``[B, 1, S, S]`` network inputs -> ``[B, 1, S, S]`` logits (on
        ``self.device`` for PyTorch, on the CPU for ONNX Runtime)."""
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.run(image=x)[0])
        t = torch.from_numpy(x).to(self.device, non_blocking=True)
        t = t.contiguous(memory_format=torch.channels_last)
        return self.model(t)

    def predict_canvas(self, x: np.ndarray) -> np.ndarray:
        """Network inputs ``[B, 1, S, S]`` -> hand probabilities ``[B, S, S]`` (eval mode)."""
        model = self.model
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        out = []
        try:
            with torch.inference_mode():
                for s in range(0, len(x), self.recipe.max_batch):
                    logits = self.logits(np.ascontiguousarray(x[s:s + self.recipe.max_batch]))
                    out.append(logits[:, 0].float().sigmoid().cpu().numpy())
        finally:
            if model is not None:
                model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, *x.shape[2:]), np.float32)

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        step = self.recipe.max_batch
        for s in range(0, len(images), step):  # prepare per forward pass: bounded memory
            chunk = images[s:s + step]
            x, parts = network_input(chunk, self.recipe)
            probs = self.predict_canvas(x)
            out += [unletterbox(p, hw, im.shape) for p, hw, im in zip(probs, parts, chunk, strict=True)]
        return out


def input_card(recipe: UnetRecipe) -> dict[str, Any]:
    """What a reader of the weights needs to know about the network's input and output."""
    return {
        "input": {
            "channels": 1, "range": "[0, 1] grey radiograph, bright = bone",
            "size": f"longest side resized to {recipe.input_size} px, top-left on a zero "
                    f"{recipe.input_size}x{recipe.input_size} square",
            "intensity_window": recipe.intensity_window,
            "normalisation": {"mean": recipe.mean, "std": recipe.std},
        },
        "output": {"classes": ["hand"], "activation": "sigmoid", "threshold": recipe.cleanup.threshold,
                   "postprocessing": "precise_baa.handcrop.clean_mask, then hand_crop"},
    }
