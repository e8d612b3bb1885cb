"""The sidecar metadata CSV of a run: sex and chronological age per input id."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..schemas import parse_sex


@dataclass(frozen=True)
class Meta:
    sex: str | None
    chronological_age: float | None


def read_meta(path: str | Path) -> dict[str, Meta]:
    """Sidecar CSV with columns ``id, sex[, chronological_age]`` (UTF-8, comma separated, quotes
    as in RFC 4180); every problem is one line naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metadata CSV not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _parse(path, csv.reader(f, strict=True))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None


def _parse(path: Path, reader) -> dict[str, Meta]:
    def rows():
        while True:
            start = reader.line_num + 1  # the line a record starts on (a quoted field may span lines)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                hint = " (a quote opened here is never closed?)" if "end of data" in str(e) else ""
                raise InputError(f"{path}:{start}: not valid CSV: {e}{hint}") from None
            yield start, row

    records = rows()
    header = next(records, None)
    cols = [c.strip() for c in header[1]] if header else []
    if "id" not in cols or "sex" not in cols:
        raise InputError(f"{path}: needs columns id,sex[,chronological_age]; found {','.join(cols) or 'none'}")
    out: dict[str, Meta] = {}
    for n, values in records:
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) > len(cols):
            raise InputError(f"{path}:{n}: {len(values)} fields but the header has {len(cols)} "
                             f"({','.join(cols)}); quote values that contain commas")
        row = {k: v.strip() for k, v in zip(cols, values)}
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
