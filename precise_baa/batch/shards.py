"""Splitting a run across machines (``--shard K/N``) and merging the shards' outputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..errors import InputError
from ..report import ASSESSMENTS, RESULTS, read_assessments, write_results_csv
from ..schemas import Assessment


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


def merge_shards(out_dir: str | Path, title: str = "") -> Path:
    """Combine ``OUT/shard-K-of-N/`` folders into ``OUT/results.csv`` + ``OUT/report.html``."""
    from ..report.html import render_report

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
