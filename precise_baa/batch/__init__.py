"""Scoring many radiographs: finding inputs, their metadata, the scoring loop, shards.

- :mod:`.discovery`: inputs of a folder / file list / file and their ids;
- :mod:`.metadata`: the sidecar CSV (sex, chronological age per id);
- :mod:`.loop`: :func:`score_folder`, batches, resume, and the one writer of every output;
- :mod:`.engines`: the batch function (:func:`score_items`: decode, assess) and the engines
  that map it, ``local`` (:class:`LocalEngine`) and ``ray`` (:mod:`.ray_engine`);
- :mod:`.shards`: ``--shard K/N`` and :func:`merge_shards`;
- :mod:`.ages`: ``evaluate ages``: a folder scored and its bone ages compared with reference
  readings (no ROI labels), with plots and a contact sheet of the overlays;
- :mod:`.cli`: the ``score`` / ``demo`` / ``merge`` / ``evaluate pipeline`` / ``evaluate ages``
  commands (argparse only at import, so ``precise-baa --help`` stays fast).

Output folder of a run::

    results.csv           one row per input (id, source, status ok/rejected/error, message, ...)
    assessments.jsonl     the full Assessment per input, appended and synced per batch
    skipped.csv           paths under the input that are not inputs, with the reason
    run.json              counts, start/end, "complete": true once every input has a row
    overlays/ID.png       the radiograph with hand crop, ROI boxes, names and stages
    crops/ID/ROI.png      ROI thumbnails;  plots/ID_curve.png, plots/ID_attention.png
    report.html           a static page over all of the above
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Discovery": "discovery", "InputItem": "discovery", "Skipped": "discovery",
    "discover": "discovery", "scan": "discovery",
    "Meta": "metadata", "read_meta": "metadata",
    "BatchSummary": "loop", "prepare_output": "loop", "repair_jsonl": "loop",
    "score_folder": "loop", "write_artifacts": "loop",
    "LocalEngine": "engines", "PipelineSpec": "engines", "make_engine": "engines",
    "score_items": "engines", "RayEngine": "ray_engine",
    "IncompleteShardsError": "shards", "check_shards": "shards", "in_shard": "shards",
    "merge_shards": "shards", "parse_shard": "shards", "shard_dir": "shards",
}


def __getattr__(name: str) -> Any:
    """Lazy exports: ``from precise_baa.batch import score_folder`` imports only what it needs."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
