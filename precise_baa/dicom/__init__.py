"""What goes back to the hospital, and the DICOM node.

Reading DICOM stays in :mod:`precise_baa.imaging`; this package writes results as DICOM and
serves as a DICOM node:

- :mod:`.sr`: an Assessment as a TID 1500 Comprehensive SR (bone age, per-ROI groups with the
  box on the source image, algorithm and weights), codes in :mod:`.codes`;
- :mod:`.sc`: the overlay as a Secondary Capture in the source study;
- :mod:`.writer`: :class:`DicomWriter`, the scoring loop's hook writing ``OUT/dicom/ID_sr.dcm``
  and ``ID_sc.dcm`` (``precise-baa score --dicom-out``);
- :mod:`.node`: :class:`DicomNode`, the Storage SCP behind ``precise-baa serve`` that queues what
  it receives, scores it with the same loop and forwards SR + SC;
- :mod:`.cli`: the ``serve`` command (argparse only at import).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_sr": "sr", "build_sc": "sc", "DicomWriter": "writer",
    "DicomNode": "node", "Destination": "node",
}


def __getattr__(name: str) -> Any:
    """Lazy exports: importing the package does not import highdicom or pynetdicom."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
