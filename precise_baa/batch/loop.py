"""The scoring loop over many radiographs: decoding workers, batches, resume, outputs.

Output folder::

    results.csv           one row per input (id, status ok/rejected/error, message, bone age, ...)
    assessments.jsonl     the full Assessment per input, appended and flushed per batch
    overlays/ID.png       the radiograph with hand crop, ROI boxes, names and stages
    crops/ID/ROI.png      ROI thumbnails;  plots/ID_curve.png, plots/ID_attention.png
    report.html           a static page over all of the above

One bad file never stops a batch: it becomes an ``error`` row with a one-line reason.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageReadError, InputError
from ..imaging import Radiograph, read_radiograph
from ..report import ASSESSMENTS, RESULTS, read_assessments, safe_name, safe_path, write_results_csv
from ..schemas import Assessment
from .discovery import InputItem, discover
from .metadata import Meta, read_meta
from .shards import in_shard, parse_shard


@dataclass
class BatchSummary:
    out_dir: Path
    total: int = 0
    skipped: int = 0  # already done (--resume) or in another shard
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    report: Path | None = None

    @property
    def failed(self) -> bool:
        return self.counts.get("error", 0) > 0

    def line(self) -> str:
        done = sum(self.counts.values())
        rate = done / self.seconds if self.seconds > 0 else 0.0
        return (f"{done} processed in {self.seconds:.1f} s ({rate:.2f}/s): {self.counts.get('ok', 0)} scored, "
                f"{self.counts.get('rejected', 0)} rejected, {self.counts.get('error', 0)} error(s)"
                + (f"; {self.skipped} skipped" if self.skipped else ""))


# ------------------------------------------------------------------------------ decoding
class _DecodeDataset:
    """Reads radiographs in DataLoader workers; failures travel back as messages."""

    def __init__(self, items: list[InputItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        if it.error:
            return i, None, it.error
        try:
            return i, read_radiograph(it.path), None
        except ImageReadError as e:
            return i, None, e.reason
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
            return i, None, f"unreadable ({type(e).__name__}: {e})"


def _collate(batch):
    return batch


# ------------------------------------------------------------------------------ main loop
def write_artifacts(out_dir: Path, a: Assessment, pixels) -> None:
    """Overlay, ROI thumbnails and plots of one assessment (nothing for error rows)."""
    from ..imaging import save_png
    from ..report.figures import attention_plot, curve_plot, overlay, roi_thumbnails

    if a.status == "error" or pixels is None:
        return
    name = safe_name(a.id)
    save_png(safe_path(out_dir, "overlays", f"{name}.png"), overlay(pixels, a))
    roi_thumbnails(safe_path(out_dir, "crops", name), pixels, a)
    if a.status == "ok" and a.sex:
        curve_plot(safe_path(out_dir, "plots", f"{name}_curve.png"), a)
    if a.attention is not None:
        attention_plot(safe_path(out_dir, "plots", f"{name}_attention.png"), a.attention)


def score_folder(
    pipeline,
    input: str | Path,
    out_dir: str | Path,
    *,
    meta: str | Path | dict[str, Meta] | None = None,
    batch_size: int = 4,
    workers: int = 0,
    resume: bool = False,
    shard: str | tuple[int, int] | None = None,
    pictures: bool = True,
    progress: bool = True,
    title: str = "",
    on_result: Callable[[Assessment, object], object] | None = None,
) -> BatchSummary:
    """Score every radiograph under ``input`` into ``out_dir`` (see the module docstring).

    ``on_result(assessment, pixels)`` is called once per input as its result is written
    (``pixels``: the radiograph as assessed, None for error rows), e.g. to write DICOM results;
    a failing hook is reported and never costs a result.
    """
    import torch
    from tqdm.auto import tqdm

    from ..report.html import render_report

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    jsonl = out_dir / ASSESSMENTS
    if jsonl.exists() and not resume:
        raise InputError(f"{out_dir} already holds results ({ASSESSMENTS}); pass --resume to continue "
                         "that run, or choose another output folder")
    metadata = meta if isinstance(meta, dict) else (read_meta(meta) if meta else {})
    items = discover(input, exclude=out_dir)
    if not items:
        raise InputError(f"{input}: no radiographs found (PNG, JPEG, TIFF, BMP or DICOM)")
    summary = BatchSummary(out_dir=out_dir, total=len(items))
    if shard:
        k, n = parse_shard(shard) if isinstance(shard, str) else shard
        mine = [it for it in items if in_shard(it.id, k, n)]
        summary.skipped += len(items) - len(mine)
        items = mine
    done = read_assessments(jsonl) if resume else {}
    pending = [it for it in items if done.get(it.id) is None or done[it.id].status == "error"]
    summary.skipped += len(items) - len(pending)
    known = {it.id for it in items}
    unknown_meta = [k for k in metadata if k not in known]
    if unknown_meta and progress and not shard:
        print(f"note: {len(unknown_meta)} metadata row(s) match no input (e.g. {unknown_meta[0]!r})",
              file=sys.stderr)

    out_dir.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(pending), batch_size=max(1, batch_size), shuffle=False,
        num_workers=workers, collate_fn=_collate, persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
    bar = tqdm(total=len(pending), disable=not progress, unit="img", desc="scoring", dynamic_ncols=True)
    with jsonl.open("a", encoding="utf-8") as log:
        for batch in loader:
            results: list[tuple[Assessment, object]] = []
            ok = []
            for i, rad, err in batch:
                it = pending[i]
                if err is not None:
                    results.append((_error(it, err), None))
                else:
                    ok.append((it, rad))
            results += _assess(pipeline, ok, metadata)
            for a, pixels in results:
                log.write(a.model_dump_json() + "\n")
                summary.counts[a.status] += 1
                if pictures:
                    try:
                        write_artifacts(out_dir, a, pixels)
                    except Exception as e:  # noqa: BLE001 - a picture never costs a result
                        print(f"warning: pictures for {a.id} failed: {e}", file=sys.stderr)
                if on_result is not None:
                    try:
                        on_result(a, pixels)
                    except Exception as e:  # noqa: BLE001 - neither does a result hook
                        print(f"warning: {a.id}: result hook failed ({type(e).__name__}: {e})",
                              file=sys.stderr)
            log.flush()
            os.fsync(log.fileno())
            bar.update(len(batch))
            bar.set_postfix(ok=summary.counts["ok"], rejected=summary.counts["rejected"],
                            errors=summary.counts["error"])
    bar.close()
    every = read_assessments(jsonl)
    ordered = [every[it.id] for it in items if it.id in every]
    write_results_csv(out_dir / RESULTS, ordered)
    if pictures:
        summary.report = render_report(out_dir, ordered, title=title)
    summary.seconds = time.perf_counter() - t0
    return summary


def _error(it: InputItem, message: str) -> Assessment:
    return Assessment(id=it.id, source=str(it.path), status="error", reason=message)


def _assess(pipeline, ok: list[tuple[InputItem, Radiograph]], metadata: dict[str, Meta]):
    """Assess a decoded batch; if the batch fails as a whole, retry one by one to isolate it."""
    if not ok:
        return []
    sexes = [metadata[it.id].sex if it.id in metadata else None for it, _ in ok]
    ages = [metadata[it.id].chronological_age if it.id in metadata else None for it, _ in ok]
    ids = [it.id for it, _ in ok]
    rads = [rad for _, rad in ok]
    try:
        out = pipeline.assess_batch(rads, sexes, ages, ids)
        return [(a, rad.pixels) for a, rad in zip(out, rads, strict=True)]
    except Exception:  # noqa: BLE001
        if len(ok) == 1:
            it, rad = ok[0]
            try:
                a = pipeline.assess_batch([rad], sexes, ages, ids)[0]
                return [(a, rad.pixels)]
            except Exception as e:  # noqa: BLE001
                return [(_error(it, f"internal error: {type(e).__name__}: {e}"), None)]
        return [r for pair in ok for r in _assess(pipeline, [pair], metadata)]
