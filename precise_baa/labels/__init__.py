"""Labels from the pipeline, and labels back from people.

- :mod:`.predicted`: masks and ROI boxes from trained stages for radiographs that lack them
  (bone-age-only data, unlabelled radiographs); uses the stages through the registry only,
  so stage training may call it.
- :mod:`.export` / :mod:`.importer`: ``precise-baa export-labels`` writes the pipeline's
  predictions (13 boxes with stages, the palm polygon) as pre-annotations for CVAT (COCO 1.0
  with attributes) or Label Studio (JSON tasks with ``predictions``);
  ``precise-baa import-labels`` reads the corrected export back into the project's COCO
  manifest (:mod:`precise_baa.data`).

Importing this package is light; each module loads what it needs when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predicted": "predicted", "predict_masks_and_boxes": "predicted",
    "with_predicted_labels": "predicted",
    "export_labels": "export", "mask_to_polygons": "export",
    "import_labels": "importer", "polygons_to_mask": "importer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
