"""Splitting a run across machines (``--shard K/N``) and merging the shards' outputs."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..report import ASSESSMENTS, RESULTS, read_assessments, write_results_csv
from ..schemas import Assessment

_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


class IncompleteShardsError(InputError):
    """Shards are missing or unfinished; the message lists them."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"bad --shard {text!r}: expected K/N, e.g. 2/8") from None
    if not 1 <= k <= n:
        raise InputError(f"bad --shard {text!r}: need 1 <= K <= N")
    return k, n


def in_shard(id: str, k: int, n: int) -> bool:
    """Stable assignment of an id to one of n shards (independent of the other inputs)."""
    return int(hashlib.sha1(id.encode("utf-8")).hexdigest(), 16) % n == k - 1


def shard_dir(out_dir: str | Path, shard: str) -> Path:
    k, n = parse_shard(shard)
    return Path(out_dir) / f"shard-{k}-of-{n}"


@dataclass
class ShardCheck:
    """What ``OUT/shard-K-of-N/`` folders a merge would find."""

    n: int
    present: dict[int, Path] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # no folder, or no results in it
    incomplete: dict[int, str] = field(default_factory=dict)  # K -> why

    @property
    def complete(self) -> bool:
        return not self.missing and not self.incomplete

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing shard(s) {', '.join(f'{k}/{self.n}' for k in self.missing)}")
        parts += [f"shard {k}/{self.n} {why}" for k, why in sorted(self.incomplete.items())]
        return "; ".join(parts)


def check_shards(out_dir: str | Path) -> ShardCheck:
    """Find the shard folders under ``out_dir`` and say which of 1..N are missing or unfinished
    (a shard is finished when its ``run.json`` says ``"complete": true``)."""
    from .loop import RUN

    out_dir = Path(out_dir)
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(out_dir.glob("shard-*-of-*")):
        m = _SHARD_DIR.match(p.name)
        if m and p.is_dir():
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise InputError(f"{out_dir}: no shard-K-of-N folders to merge (written by score --shard K/N)")
    if len(found) > 1:
        raise InputError(f"{out_dir}: shards of different counts ({', '.join(f'of-{n}' for n in sorted(found))}); "
                         "merge the shards of one run only")
    n, dirs = next(iter(found.items()))
    check = ShardCheck(n=n)
    for k in range(1, n + 1):
        d = dirs.get(k)
        if d is None or not (d / ASSESSMENTS).is_file():
            check.missing.append(k)
            continue
        check.present[k] = d
        try:
            run = json.loads((d / RUN).read_text(encoding="utf-8"))
        except FileNotFoundError:
            check.incomplete[k] = f"has no {RUN} (still running, or stopped): rerun it with --resume"
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            check.incomplete[k] = f"has an unreadable {RUN}: rerun it with --resume"
            continue
        if not run.get("complete"):
            missing = run.get("missing") or []
            why = (f"ended with {len(missing)} input(s) without a result" if missing
                   else "did not finish")
            check.incomplete[k] = f"{why}: rerun it with --resume"
    extra = sorted(k for k in dirs if not 1 <= k <= n)
    if extra:
        raise InputError(f"{out_dir}: shard folder(s) {', '.join(dirs[k].name for k in extra)} do not "
                         f"fit N={n}")
    return check


def merge_shards(out_dir: str | Path, title: str = "", allow_partial: bool = False) -> Path:
    """Combine ``OUT/shard-K-of-N/`` folders into ``OUT/results.csv`` + ``OUT/report.html``
    (and ``assessments.jsonl``, ``skipped.csv``, the pictures).

    Every shard 1..N must be present and finished, else :class:`IncompleteShardsError` names
    what is missing, unless ``allow_partial`` (then the present shards are merged)."""
    from ..report.html import render_report
    from .discovery import Skipped
    from .loop import RUN, SKIPPED, _write_json, write_skipped

    out_dir = Path(out_dir)
    check = check_shards(out_dir)
    if not check.complete and not allow_partial:
        raise IncompleteShardsError(f"{out_dir}: {check.problems()}; merge again when they are done, "
                                    "or pass --allow-partial for a partial table")
    shards = [check.present[k] for k in sorted(check.present)]
    merged: dict[str, Assessment] = {}
    with (out_dir / ASSESSMENTS).open("w", encoding="utf-8") as log:
        for s in shards:
            for a in read_assessments(s / ASSESSMENTS).values():
                if a.id in merged:
                    raise InputError(f"{a.id!r} appears in two shards; were different shard counts mixed?")
                merged[a.id] = a
                log.write(a.model_dump_json() + "\n")
    skipped: dict[str, str] = {}
    for s in shards:
        if (s / SKIPPED).is_file():
            with (s / SKIPPED).open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    skipped.setdefault(row["path"], row["reason"])
    write_skipped(out_dir / SKIPPED, [Skipped(Path(p), r) for p, r in skipped.items()])
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
    _write_json(out_dir / RUN, {"complete": check.complete, "merged_shards": sorted(check.present),
                                "of": check.n, "problems": check.problems() or None,
                                "rows": len(ordered)})
    return render_report(out_dir, ordered, title=title)
