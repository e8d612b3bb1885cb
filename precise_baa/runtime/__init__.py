"""Deployment runtimes: a stage's network runs in PyTorch (default) or in ONNX Runtime.

A stage recipe chooses with ``runtime: torch | onnxruntime`` (the ``unet`` segmenter and both
graders have the switch; a pipeline stage line may set it: ``{weights: ..., runtime:
onnxruntime}``). Only the network's forward pass differs: pre- and post-processing (resizing,
normalisation, sigmoid / softmax, cleanup) are the stage's own code either way, so the pipeline
does not know which runtime a stage uses.

- :func:`precise_baa.runtime.export.export_onnx` (``precise-baa export WEIGHTS --format onnx``)
  writes ``model.onnx`` beside ``model.safetensors`` and records its sha256 in ``card.json``.
- :class:`precise_baa.runtime.session.OnnxModel` runs that file with onnxruntime after checking
  it against the card (its sha256, and that it was exported from the folder's tensors).

onnx / onnxruntime / onnxscript are an optional extra: ``pip install 'precise-baa[onnx]'``.
Importing this package is light (no torch, no onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..errors import PreciseBaaError, RecipeError

if TYPE_CHECKING:
    from pathlib import Path

#: the runtimes a recipe's ``runtime`` field may name
Runtime = Literal["torch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")
#: the exported file's name inside a weights folder (and the card's key for it)
ONNX_FILE = "model.onnx"
CARD_KEY = "onnx"
#: how to get the optional packages
INSTALL_HINT = ("pip install 'precise-baa[onnx]' (the onnx, onnxruntime and onnxscript "
                "packages; in this project: .venv/bin/python -m pip install -e '.[onnx]')")


class ExportError(PreciseBaaError):
    """A stage cannot be exported, or its export did not reproduce the PyTorch outputs."""


def with_runtime(stage: str, recipe: str | Path | None, weights: str | Path | None,
                 runtime: str) -> Any:
    """The stage's recipe (the file ``recipe``, else the one stored beside ``weights``) with
    its ``runtime`` field set: how a pipeline stage line picks a stage's runtime.

    A recipe whose implementation has no runtime switch is a :class:`RecipeError`.
    """
    from ..registry import parse_recipe, read_recipe
    from ..weights import read_stored_recipe

    if runtime not in RUNTIMES:
        raise RecipeError(f"{stage}: runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if recipe is not None:
        parsed = read_recipe(stage, recipe)
    elif weights is not None:
        parsed = parse_recipe(stage, read_stored_recipe(weights), f"{weights}/recipe.json")
    else:
        raise RecipeError(f"{stage}: give a recipe, a weights folder, or both")
    fields = getattr(type(parsed), "model_fields", {})
    if "runtime" not in fields:
        name = parsed.get("implementation") if isinstance(parsed, dict) else parsed.implementation
        if runtime == "torch":
            return parsed
        raise RecipeError(f"{stage}: implementation {name!r} has no runtime switch (nothing it "
                          f"runs exports to ONNX); remove `runtime: {runtime}` from its stage line")
    return parsed.model_copy(update={"runtime": runtime})


def __getattr__(name: str) -> Any:
    lazy = {"export_onnx": "export", "ExportResult": "export", "OnnxModel": "session",
            "ExportGraph": "session", "onnx_info": "session"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{lazy[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CARD_KEY", "INSTALL_HINT", "ONNX_FILE", "RUNTIMES", "ExportError", "Runtime",
           "with_runtime", "export_onnx", "ExportResult", "OnnxModel", "ExportGraph", "onnx_info"]
