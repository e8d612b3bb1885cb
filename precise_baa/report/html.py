"""``report.html``: a static page rendering the assessments (data stays in the JSONL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from .. import __version__
from ..paths import atomic_write
from ..rois import ROI_KEYS
from ..schemas import Assessment
from .files import safe_name

REPORT = "report.html"


def _attends(attention: list[list[float]] | None, i: int) -> str | None:
    if attention is None:
        return None
    row = np.asarray(attention[i], dtype=float).copy()
    row[i] = -1.0  # the most attended other ROI
    j = int(np.argmax(row))
    return f"{ROI_KEYS[j]} ({attention[i][j]:.2f})"


def render_report(out_dir: Path, assessments: list[Assessment], title: str = "") -> Path:
    """Write ``out_dir/report.html`` linking the per-input pictures that exist on disk."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("precise_baa.report", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
    )

    def rel(*parts: str) -> str | None:
        return "/".join(parts) if (out_dir.joinpath(*parts)).is_file() else None

    patients = []
    for a in assessments:
        name = safe_name(a.id)
        rois = [
            {"r": r, "thumb": rel("crops", name, f"{r.key}.png"), "attends": _attends(a.attention, i)}
            for i, r in enumerate(a.rois)
        ]
        patients.append({
            "a": a, "anchor": name, "rois": rois,
            "overlay": rel("overlays", f"{name}.png"),
            "curve": rel("plots", f"{name}_curve.png"),
            "attention": rel("plots", f"{name}_attention.png"),
        })
    counts = {s: sum(a.status == s for a in assessments) for s in ("ok", "rejected", "error")}
    counts["total"] = len(assessments)
    models = next((a.models for a in assessments if a.models), [])
    html = env.get_template("report.html.j2").render(
        title=title, patients=patients, counts=counts, models=models, version=__version__,
        standard=next((a.standard for a in assessments if a.standard), "rus-chn"),
        phantom=any(f.code == "phantom_weights" for a in assessments for f in a.flags),
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )
    path = out_dir / REPORT
    return atomic_write(path, html)
