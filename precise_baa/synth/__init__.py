"""Procedural hand-radiograph phantoms: images, palm masks, ROI boxes and maturity labels.

>>> from precise_baa.synth import render_phantom, generate_dataset
>>> p = render_phantom(0)                      # one 512 px phantom with its ground truth
>>> q = render_phantom(0, style="preprocessed")  # hand on black in a 512 x 394 portrait frame
>>> generate_dataset("out/phantoms", n=100, seed=0)  # doctest: +SKIP

Exports are imported lazily, so ``import precise_baa.synth.cli`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Phantom": "render",
    "render_phantom": "render",
    "STYLES": "render",
    "frame_shape": "render",
    "generate_dataset": "dataset",
    "ensure_dataset": "dataset",
    "contact_sheet": "dataset",
    "image_rng": "dataset",
    "Labels": "labels",
    "sample_labels": "labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
