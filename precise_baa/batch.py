"""Scoring folders of radiographs: discovery, metadata, decoding workers, resume, shards.

Output folder::

    results.csv           one row per input (id, status ok/rejected/error, message, bone age, ...)
    assessments.jsonl     the full Assessment per input, appended and flushed per batch
    overlays/ID.png       the radiograph with hand crop, ROI boxes, names and stages
    crops/ID/ROI.png      ROI thumbnails;  plots/ID_curve.png, plots/ID_attention.png
    report.html           a static page over all of the above

One bad file never stops a batch: it becomes an ``error`` row with a one-line reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageReadError, InputError
from .imaging import Radiograph, is_candidate, read_radiograph
from .report import ASSESSMENTS, RESULTS, read_assessments, safe_name, safe_path, write_results_csv
from .schemas import Assessment, parse_sex

LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path
    error: str | None = None  # set when the input cannot be scored before reading it


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


# ------------------------------------------------------------------------------ discovery
def _id_for(path: Path, root: Path | None) -> str:
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else Path(path.name)
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def discover(input: str | Path, exclude: Path | None = None) -> list[InputItem]:
    """Inputs from a folder (recursive), a file list (one path per line) or a single file.

    The id of an input is its path relative to the folder, without suffix (``ward3/p001``).
    Inputs sharing an id (``p001.png`` and ``p001.dcm``) all become error rows: a metadata row
    could not say which one it describes.
    """
    input = Path(input)
    if not input.exists():
        raise InputError(f"{input}: no such file or folder")
    root: Path | None
    if input.is_dir():
        root = input
        excl = exclude.resolve() if exclude is not None else None
        paths = []
        for dirpath, dirnames, filenames in os.walk(input):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                                 and (excl is None or (d / n).resolve() != excl))
            paths += [d / f for f in sorted(filenames) if is_candidate(d / f)]
    elif input.suffix.lower() in LIST_SUFFIXES:
        root = input.parent
        paths = []
        for line in input.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else input.parent / p)
    else:
        root, paths = None, [input]
    items = [InputItem(_id_for(p, root), p) for p in paths]
    seen = Counter(it.id for it in items)
    out = []
    for it in items:
        if seen[it.id] > 1:
            others = ", ".join(str(o.path.name) for o in items if o.id == it.id)
            it = InputItem(it.id, it.path, f"duplicate id {it.id!r} ({others}): rename one")
        out.append(it)
    return out


# ------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class Meta:
    sex: str | None
    chronological_age: float | None


def read_meta(path: str | Path) -> dict[str, Meta]:
    """Sidecar CSV with columns ``id, sex[, chronological_age]``; every problem names its line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metadata CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "id" not in cols or "sex" not in cols:
            raise InputError(f"{path}: needs columns id,sex[,chronological_age]; found {','.join(cols) or 'none'}")
        out: dict[str, Meta] = {}
        for n, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            rid = row.get("id", "")
            if not rid:
                raise InputError(f"{path}:{n}: empty id")
            if rid in out:
                raise InputError(f"{path}:{n}: duplicate id {rid!r}")
            sex = row.get("sex") or None
            if sex is not None:
                try:
                    sex = parse_sex(sex)
                except InputError as e:
                    raise InputError(f"{path}:{n}: {e}") from None
            age_text = row.get("chronological_age", "")
            age = None
            if age_text:
                try:
                    age = float(age_text)
                except ValueError:
                    raise InputError(f"{path}:{n}: chronological_age {age_text!r} is not a number (years)") from None
                if not 0 <= age <= 30:
                    raise InputError(f"{path}:{n}: chronological_age {age} outside 0..30 years")
            out[rid] = Meta(sex, age)
    return out


# ------------------------------------------------------------------------------ shards
def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"bad --shard {text!r}: expected K/N, e.g. 2/8") from None
    if not 1 <= k <= n:
        raise InputError(f"bad --shard {text!r}: need 1 <= K <= N")
    return k, n


def in_shard(id: str, k: int, n: int) -> bool:
    """Stable assignment of an id to one of n shards (independent of the other inputs)."""
    return int(hashlib.sha1(id.encode("utf-8")).hexdigest(), 16) % n == k - 1


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
    from .imaging import save_png
    from .report.figures import attention_plot, curve_plot, overlay, roi_thumbnails

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
) -> BatchSummary:
    """Score every radiograph under ``input`` into ``out_dir`` (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from .report.html import render_report

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


def merge_shards(out_dir: str | Path, title: str = "") -> Path:
    """Combine ``OUT/shard-K-of-N/`` folders into ``OUT/results.csv`` + ``OUT/report.html``."""
    from .report.html import render_report

    out_dir = Path(out_dir)
    shards = sorted(p for p in out_dir.glob("shard-*") if (p / ASSESSMENTS).is_file())
    if not shards:
        raise InputError(f"{out_dir}: no shard-*/{ASSESSMENTS} to merge")
    merged: dict[str, Assessment] = {}
    with (out_dir / ASSESSMENTS).open("w", encoding="utf-8") as log:
        for s in shards:
            for a in read_assessments(s / ASSESSMENTS).values():
                if a.id in merged:
                    raise InputError(f"{a.id!r} appears in two shards; were different shard counts mixed?")
                merged[a.id] = a
                log.write(a.model_dump_json() + "\n")
    for sub in ("overlays", "crops", "plots"):
        for s in shards:
            src = s / sub
            if src.is_dir():
                for f in src.rglob("*"):
                    if f.is_file():
                        dst = out_dir / sub / f.relative_to(src)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, dst)
    ordered = [merged[k] for k in sorted(merged)]
    write_results_csv(out_dir / RESULTS, ordered)
    return render_report(out_dir, ordered, title=title)


def shard_dir(out_dir: str | Path, shard: str) -> Path:
    k, n = parse_shard(shard)
    return Path(out_dir) / f"shard-{k}-of-{n}"


__all__ = ["BatchSummary", "InputItem", "Meta", "discover", "in_shard", "merge_shards",
           "parse_shard", "read_meta", "score_folder", "shard_dir", "write_artifacts"]
