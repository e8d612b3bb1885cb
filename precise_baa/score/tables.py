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
    #: curve[sex] = (ages in years, total maturity scores), both strictly increasing: the P50
    #: curve (RUS-CHN) or the score -> bone age table (TW3 Tables A1/A3, the same thing)
    curve: dict[str, tuple[np.ndarray, np.ndarray]]

    def max_score(self, sex: str) -> int:
        return sum(p[-1] for p in self.points[sex].values())


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise PreciseBaaError(f"{path}: standard table missing (set PRECISE_BAA_CURVES?)")
    with path.open(newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _check_curve(standard: str, sex: str, ages: list[float], scores: list[float]) -> None:
    """Ages and scores must both strictly increase, so that score -> age is one-to-one.

    A score shared by two ages (a flat step) or an age given twice would make the inversion
    ambiguous; such a table is refused, naming the first offending row, rather than read one way.
    """
    name = f"{standard}_p50.csv"
    if len(ages) < 2:
        raise PreciseBaaError(f"{name}: curve for sex {sex} is not increasing (fewer than 2 rows)")
    def row(i: int) -> str:
        age = f"{ages[i]:.1f}" if round(ages[i], 1) == ages[i] else f"{ages[i]:g}"
        return f"{sex},{age},{scores[i]:g}"

    for i in range(1, len(ages)):
        if ages[i] <= ages[i - 1] or scores[i] <= scores[i - 1]:
            raise PreciseBaaError(
                f"{name}: curve for sex {sex} is not increasing at row {row(i)} "
                f"(after {row(i - 1)}); ages and scores must both strictly increase"
            )


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
        _check_curve(standard, sex, *curve[sex])
    return StandardTables(
        standard=standard,
        points={s: {k: tuple(v) for k, v in d.items()} for s, d in points.items()},
        curve={s: (np.asarray(a, float), np.asarray(b, float)) for s, (a, b) in curve.items()},
    )
