"""Reports: results.csv / assessments.jsonl (data first), overlays, plots and a static HTML page."""

from __future__ import annotations

from .files import safe_name, safe_path
from .records import ASSESSMENTS, RESULTS, read_assessments, to_row, write_results_csv

__all__ = ["ASSESSMENTS", "RESULTS", "read_assessments", "safe_name", "safe_path", "to_row",
           "write_results_csv"]
