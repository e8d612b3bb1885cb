"""``assessments.jsonl`` (one Assessment per line, the source of truth) and ``results.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pydantic import ValidationError

from ..paths import atomic_open
from ..schemas import Assessment, BatchRow

ASSESSMENTS = "assessments.jsonl"
RESULTS = "results.csv"
CSV_FIELDS = list(BatchRow.model_fields)


def to_row(a: Assessment) -> BatchRow:
    return BatchRow(
        id=a.id, source=a.source or "", status=a.status, message=" ".join((a.reason or "").split()),
        sex=a.sex, chronological_age_years=a.chronological_age_years,
        bone_age_years=a.bone_age_years, maturity_score=a.maturity_score, standard=a.standard,
        bone_age_minus_chronological_years=a.bone_age_minus_chronological_years,
        deviation_beyond_threshold=a.deviation_beyond_threshold,
    )


def read_assessments(path: Path) -> dict[str, Assessment]:
    """Assessments by id (a later line for the same id wins). A line cut short by a crash
    (the last one) is skipped, so ``--resume`` redoes that input."""
    out: dict[str, Assessment] = {}
    if not path.is_file():
        return out
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                a = Assessment.model_validate_json(line)
            except (ValidationError, json.JSONDecodeError, ValueError):
                continue
            out[a.id] = a
    return out


def write_results_csv(path: Path, assessments: list[Assessment]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for a in assessments:
            row = to_row(a).model_dump()
            w.writerow({k: "" if v is None else v for k, v in row.items()})
