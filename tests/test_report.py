"""The HTML report, rendered in a real headless browser (Debian chromium via Playwright)."""

from __future__ import annotations

import numpy as np
import pytest

from precise_baa.batch import write_artifacts
from precise_baa.report import safe_name
from precise_baa.report.html import render_report
from precise_baa.rois import ROIS
from precise_baa.schemas import Assessment, Box, Flag, RoiResult
from precise_baa.weights import PHANTOM_NOTICE


def assessment(id: str, status: str = "ok") -> Assessment:
    rois = [
        RoiResult(key=r.key, name=r.name, box=Box(x0=20 + 12 * i, y0=40, x1=40 + 12 * i, y1=70),
                  detection_score=0.9, stage=3, stage_label="3", confidence=0.8, points=10 + i)
        for i, r in enumerate(ROIS)
    ]
    att = np.full((13, 13), 1 / 13).tolist()
    flags = [Flag(code="phantom_weights", message=PHANTOM_NOTICE, stage="pipeline")]
    if status == "error":
        return Assessment(id=id, source=f"{id}.png", status="error", reason="not an image (unreadable)")
    return Assessment(
        id=id, source=f"{id}.png", status=status, sex="F", chronological_age_years=8.0,
        standard="rus-chn", bone_age_years=9.07 if status == "ok" else None,
        maturity_score=355 if status == "ok" else None,
        bone_age_minus_chronological_years=1.07 if status == "ok" else None,
        reason=None if status == "ok" else "ROI(s) not found or implausible: dp5",
        crop_box=Box(x0=5, y0=5, x1=250, y1=250), rois=rois, attention=att, flags=flags,
        image_size=(256, 256), timings_ms={"segment": 12.0},
    )


def test_report_renders_in_a_browser(tmp_path, chromium):
    playwright = pytest.importorskip("playwright.sync_api")
    pixels = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    items = [assessment("ward 3/p<001>"), assessment("p002", "rejected"), assessment("p003", "error")]
    for a in items:
        write_artifacts(tmp_path, a, None if a.status == "error" else pixels)
    name = safe_name("ward 3/p<001>")
    assert (tmp_path / "overlays" / f"{name}.png").is_file()
    assert len(list((tmp_path / "crops" / name).glob("*.png"))) == 13
    assert (tmp_path / "plots" / f"{name}_curve.png").is_file()
    assert not (tmp_path / "plots" / "p002_curve.png").exists()  # rejected: no age to plot
    page_path = render_report(tmp_path, items, title="test")
    html = page_path.read_text()
    assert "p&lt;001&gt;" in html and "<001>" not in html  # ids are escaped

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert len(images) == 1 + 13 + 1 + 1 + (1 + 13 + 1)  # overlay, crops, curve, attention x2
            broken = [src for src, w in images if w == 0]
            assert broken == []
            assert page.locator("#phantom-notice").is_visible()
            rows = page.locator("#summary tr")
            assert rows.count() == 1 + 3
            assert "9.07" in page.locator(f"#p-{name}").inner_text()
            assert "not an image" in page.locator("#p-p003").inner_text()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
