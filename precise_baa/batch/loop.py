"""The scoring loop over many radiographs: inputs, resume, and the one writer of all outputs.

An engine (:mod:`precise_baa.batch.engines`: ``local``, ``ray``) decodes and assesses the
pending inputs batch by batch; :func:`score_folder` writes what comes back, the same way
whatever the engine.

Output folder::

    results.csv           one row per input (id, source, status ok/rejected/error, message, ...)
    assessments.jsonl     the full Assessment per input, appended and synced per batch
    skipped.csv           every path under the input that is not an input, with the reason
    run.json              counts, started/finished, "complete": true once every input has a row
    overlays/ID.png       the radiograph with hand crop, ROI boxes, names and stages
    crops/ID/ROI.png      ROI thumbnails;  plots/ID_curve.png, plots/ID_attention.png
    report.html           a static page over all of the above

What a run promises:

- one bad file never stops a batch: it becomes an ``error`` row with a one-line reason;
- every input gets exactly one row naming its file (``source``); a run that ends with an
  input missing from ``results.csv`` says so (:attr:`BatchSummary.missing`, ``complete: false``);
- after a crash, ``resume=True`` first repairs ``assessments.jsonl`` (a last line cut short
  is moved to ``assessments.jsonl.fragment``), then scores only what has no result yet.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..paths import atomic_open, atomic_write
from ..report import ASSESSMENTS, RESULTS, read_assessments, safe_name, safe_path, write_results_csv
from ..schemas import Assessment
from .discovery import InputItem, Skipped, scan
from .engines import Engine, PipelineSpec, make_engine, one_line
from .metadata import Meta, read_meta
from .shards import in_shard, parse_shard

RUN = "run.json"
SKIPPED = "skipped.csv"
FRAGMENT = ASSESSMENTS + ".fragment"


@dataclass
class BatchSummary:
    out_dir: Path
    total: int = 0  # inputs found (all shards)
    inputs: int = 0  # inputs of this run (this shard)
    already_done: int = 0  # with a result from before (resume)
    other_shards: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # paths that are not inputs
    counts: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # inputs of this run without a row
    warnings: list[str] = field(default_factory=list)
    repaired_bytes: int = 0  # cut from assessments.jsonl on resume
    seconds: float = 0.0
    report: Path | None = None

    @property
    def failed(self) -> bool:
        return self.counts.get("error", 0) > 0 or bool(self.missing)

    @property
    def complete(self) -> bool:
        return not self.missing

    def line(self) -> str:
        done = sum(self.counts.values())
        rate = done / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{done} processed in {self.seconds:.1f} s ({rate:.2f}/s): "
                 f"{self.counts.get('ok', 0)} scored, {self.counts.get('rejected', 0)} rejected, "
                 f"{self.counts.get('error', 0)} error(s)"]
        if self.already_done:
            parts.append(f"{self.already_done} done before (resume)")
        if self.other_shards:
            parts.append(f"{self.other_shards} in other shards")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (listed in {SKIPPED})")
        if self.missing:
            parts.append(f"{len(self.missing)} input(s) WITHOUT A RESULT")
        return "; ".join(parts)


def names(values: list[str], limit: int = 10) -> str:
    """``'a', 'b', ... and 3 more``: a list for a one-line message."""
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# ------------------------------------------------------------------------------ output folder
def prepare_output(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and check that it can be written, before any work is done."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
        raise InputError(f"output folder {out}: cannot be created"
                         + (f" ({blocker} is a file)" if blocker else "")) from None
    except OSError as e:
        raise InputError(f"output folder {out}: cannot be created ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"output folder {out}: not writable ({e.strerror or e})") from None
    return out


def repair_jsonl(path: Path) -> int:
    """Cut a last line left unfinished by a crash (no final newline) from ``path``; the cut
    bytes are appended to ``path.fragment`` for inspection. Returns how many bytes were cut."""
    if not path.is_file():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:  # the last newline, reading backwards
            start = max(0, pos - (1 << 16))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.seek(keep)
        cut = f.read()
        with path.with_name(path.name + ".fragment").open("ab") as g:
            g.write(cut + b"\n")
            g.flush()
            os.fsync(g.fileno())
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(cut)


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def write_skipped(path: Path, skipped: list[Skipped]) -> None:
    """``skipped.csv``: path, reason (one row per path that is not an input)."""
    import csv

    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        for s in skipped:
            w.writerow([str(s.path), one_line(s.reason)])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def _same_file(source: str | None, path: Path) -> bool:
    if not source:
        return True
    try:
        return Path(source).resolve() == path.resolve()
    except OSError:
        return Path(source) == path


def _meta_warnings(metadata: dict[str, Meta], items: list[InputItem]) -> list[str]:
    ids = {it.id for it in items}
    shared: dict[str, list[str]] = {}
    for it in items:
        if it.suffixed:
            shared.setdefault(it.bare_id, []).append(it.id)
    out = []
    if shared:
        keep = [i for group in shared.values() for i in group]
        out.append(f"{len(keep)} inputs share a name up to the file suffix, so their ids keep it: "
                   f"{names(keep)}")
    ambiguous = [k for k in metadata if k not in ids and k in shared]
    for k in ambiguous[:10]:
        out.append(f"metadata row {k!r} matches several inputs ({', '.join(shared[k])}) and is not "
                   "used: give each of them its own row (id with the suffix)")
    unknown = [k for k in metadata if k not in ids and k not in shared]
    if unknown:
        out.append(f"{len(unknown)} metadata row(s) match no input: {names(unknown)}")
    return out


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
    max_pixels: int | None = None,
    engine: str | Engine = "local",
    address: str | None = None,
) -> BatchSummary:
    """Score every radiograph under ``input`` into ``out_dir`` (see the module docstring).

    ``pipeline``: a :class:`~precise_baa.pipeline.Pipeline` (or anything with its
    ``assess_batch``), or a :class:`~precise_baa.batch.engines.PipelineSpec` to build one.
    ``engine``: ``"local"`` (this process; ``workers`` decoding processes), ``"ray"`` (Ray
    Data: one actor pool per stage, ``workers`` detector actors, 0 = as many as the cluster holds; ``address`` joins a
    running cluster, else a local one is started; ``pipeline`` must be a PipelineSpec) or an
    engine object (:mod:`precise_baa.batch.engines`). Whatever the engine, this function
    writes every output, so they are the same.

    ``on_result(assessment, pixels)`` is called once per input as its result is written
    (``pixels``: the radiograph as assessed, None for error rows), e.g. to write DICOM results;
    a failing hook is reported and never costs a result. ``max_pixels``: refuse images
    declaring more pixels (default: :func:`precise_baa.imaging.max_pixels_limit`).
    Warnings (metadata rows without input, ids that keep their suffix) go to stderr and
    :attr:`BatchSummary.warnings`.
    """
    from tqdm.auto import tqdm

    from .. import __version__
    from ..report.html import render_report

    if int(batch_size) < 1:
        raise InputError(f"batch size {batch_size}: must be at least 1")
    if int(workers) < 0:
        raise InputError(f"workers {workers}: must be 0 (decode in this process) or more")
    engine = make_engine(engine, workers=int(workers), address=address)
    if engine.name != "local" and not isinstance(pipeline, PipelineSpec):
        raise InputError(f"the {engine.name} engine builds the pipeline in its own workers: pass a "
                         "PipelineSpec (the recipe and options), not a built pipeline")
    t0, started = time.perf_counter(), _now()
    out_dir = Path(out_dir)
    jsonl = out_dir / ASSESSMENTS
    if jsonl.exists() and not resume:
        raise InputError(f"{out_dir} already holds results ({ASSESSMENTS}); pass --resume to continue "
                         "that run, or choose another output folder")
    metadata = meta if isinstance(meta, dict) else (read_meta(meta) if meta else {})
    found = scan(input, exclude=out_dir)
    items = found.items
    if not items:
        listed = f"; {len(found.skipped)} other path(s) skipped, e.g. {found.skipped[0].path}: " \
                 f"{found.skipped[0].reason}" if found.skipped else ""
        raise InputError(f"{input}: no radiographs found (PNG, JPEG, TIFF, BMP or DICOM){listed}")
    shard_text = None
    if shard:
        k, n = parse_shard(shard) if isinstance(shard, str) else shard
        shard_text = f"{k}/{n}"
    prepare_output(out_dir)
    summary = BatchSummary(out_dir=out_dir, total=len(items), skipped=list(found.skipped))
    summary.warnings = _meta_warnings(metadata, items)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if shard_text:
        mine = [it for it in items if in_shard(it.id, k, n)]
        summary.other_shards = len(items) - len(mine)
        items = mine
    summary.inputs = len(items)
    run = {"complete": False, "input": str(input), "shard": shard_text, "engine": engine.name,
           "started": started, "package_version": __version__}
    _write_json(out_dir / RUN, run)
    write_skipped(out_dir / SKIPPED, summary.skipped)
    if resume:
        summary.repaired_bytes = repair_jsonl(jsonl)
        if summary.repaired_bytes:
            print(f"note: {jsonl} ended in a line cut short by a crash; its {summary.repaired_bytes} "
                  f"bytes were moved to {FRAGMENT} and that input is scored again", file=sys.stderr)
    done = read_assessments(jsonl) if resume else {}

    def redo(it: InputItem) -> bool:
        a = done.get(it.id)
        return a is None or a.status == "error" or not _same_file(a.source, it.path)

    pending = [it for it in items if redo(it)]
    summary.already_done = len(items) - len(pending)

    bar = tqdm(total=len(pending), disable=not progress, unit="img", desc="scoring", dynamic_ncols=True)
    fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    batches = engine.run(pipeline, pending, metadata, batch_size=int(batch_size),
                         max_pixels=max_pixels, pixels=pictures or on_result is not None
                         ) if pending else iter(())
    try:
        for results in batches:
            for a, pixels in results:
                _append(fd, (a.model_dump_json() + "\n").encode("utf-8"))  # one record, one write
                summary.counts[a.status] += 1
                if pictures:
                    try:
                        write_artifacts(out_dir, a, pixels)
                    except Exception as e:  # noqa: BLE001 - a picture never costs a result
                        print(f"warning: pictures for {a.id} failed: {one_line(str(e))}", file=sys.stderr)
                if on_result is not None:
                    try:
                        on_result(a, pixels)
                    except Exception as e:  # noqa: BLE001 - neither does a result hook
                        print(f"warning: {a.id}: result hook failed ({type(e).__name__}: "
                              f"{one_line(str(e))})", file=sys.stderr)
            os.fsync(fd)
            bar.update(len(results))
            bar.set_postfix(ok=summary.counts["ok"], rejected=summary.counts["rejected"],
                            errors=summary.counts["error"])
    finally:
        getattr(batches, "close", lambda: None)()  # an engine's generator cleans up (Ray)
        os.close(fd)
        bar.close()
    every = read_assessments(jsonl)
    ordered = [every[it.id] for it in items if it.id in every]
    summary.missing = [it.id for it in items if it.id not in every]
    write_results_csv(out_dir / RESULTS, ordered)
    if pictures:
        summary.report = render_report(out_dir, ordered, title=title)
    summary.seconds = time.perf_counter() - t0
    _write_json(out_dir / RUN, {
        **run, "complete": summary.complete, "finished": _now(), "seconds": round(summary.seconds, 1),
        "inputs": summary.inputs, "found": summary.total, "rows": len(ordered),
        "counts": {k: summary.counts.get(k, 0) for k in ("ok", "rejected", "error")},
        "done_before": summary.already_done, "other_shards": summary.other_shards,
        "skipped": len(summary.skipped), "missing": summary.missing, "warnings": summary.warnings,
    })
    return summary


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
