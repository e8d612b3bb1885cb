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
