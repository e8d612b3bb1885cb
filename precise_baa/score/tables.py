"""The standards' tables, read from ``percentile_curves/`` (CSV with ``#`` provenance lines)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import PreciseBaaError
from ..paths import curves_dir
from ..rois import ROI_KEYS, check_standard, num_stages


@dataclass(frozen=True)
class StandardTables:
    """Points per ROI stage and the P50 curve (age -> total score), per sex."""

    standard: str
    #: points[sex][roi] = points of stage 0..n-1
    points: dict[str, dict[str, tuple[int, ...]]]
    #: curve[sex] = (ages in years, total maturity scores), both increasing
    curve: dict[str, tuple[np.ndarray, np.ndarray]]

    def max_score(self, sex: str) -> int:
        return sum(p[-1] for p in self.points[sex].values())


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise PreciseBaaError(f"{path}: standard table missing (set PRECISE_BAA_CURVES?)")
    with path.open(newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


@cache
def load_tables(standard: str, root: str | None = None) -> StandardTables:
    """Read and check the tables of ``standard`` ('rus-chn' or 'tw3')."""
    check_standard(standard)
    base = Path(root) if root else curves_dir()
    points: dict[str, dict[str, list[int]]] = {"F": {}, "M": {}}
    for row in _rows(base / f"{standard}_points.csv"):
        per_roi = points[row["sex"]].setdefault(row["roi"], [])
        if int(row["stage"]) != len(per_roi):
            raise PreciseBaaError(f"{standard}_points.csv: stages of {row['roi']} out of order")
        per_roi.append(int(row["points"]))
    curve: dict[str, tuple[list[float], list[float]]] = {"F": ([], []), "M": ([], [])}
    for row in _rows(base / f"{standard}_p50.csv"):
        curve[row["sex"]][0].append(float(row["age_years"]))
        curve[row["sex"]][1].append(float(row["maturity_score"]))
    for sex in ("F", "M"):
        if list(points[sex]) != list(ROI_KEYS):
            raise PreciseBaaError(f"{standard}_points.csv: ROIs for sex {sex} are not the 13 RUS ROIs")
        for key, p in points[sex].items():
            if len(p) != num_stages(key, standard):
                raise PreciseBaaError(f"{standard}_points.csv: {key} has {len(p)} stages")
        ages, scores = (np.asarray(v, dtype=float) for v in curve[sex])
        if len(ages) < 2 or np.any(np.diff(ages) <= 0) or np.any(np.diff(scores) <= 0):
            raise PreciseBaaError(f"{standard}_p50.csv: curve for sex {sex} is not increasing")
    return StandardTables(
        standard=standard,
        points={s: {k: tuple(v) for k, v in d.items()} for s, d in points.items()},
        curve={s: (np.asarray(a, float), np.asarray(b, float)) for s, (a, b) in curve.items()},
    )
