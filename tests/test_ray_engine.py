"""The ``ray`` engine writes what the ``local`` engine writes, row for row.

One local Ray (2 CPUs) for the whole module; the bundled lite pipeline on a few phantoms and
three broken files (a truncated PNG, an empty file, text named .png) plus an input without a
sex. Compared: results.csv, skipped.csv, assessments.jsonl (all but timings), the overlays,
what the result hook receives, run.json's counts; then the command line joining the running
Ray with ``--address`` to resume a run cut short.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from precise_baa.batch import PipelineSpec, score_folder
from precise_baa.paths import weights_dir
from precise_baa.synth import generate_dataset

BUNDLED = ("segment-unet-lite", "detect-detectors-lite", "grade-densenet-attention-lite")
needs_weights = pytest.mark.skipif(
    not all((weights_dir() / n / "model.safetensors").is_file() for n in BUNDLED),
    reason="bundled weights not present (scripts/train_demo_weights.sh makes them)")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with 2 CPUs for the module; its address (for the command line to join)."""
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'precise-baa[ray]')")
    import logging
    import os

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                   log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ray-tree")
    generate_dataset(base / "phantoms", n=4, seed=11, size=320, progress=False)
    root = base / "in"
    (root / "ward").mkdir(parents=True)
    images = sorted((base / "phantoms" / "images").glob("*.png"))
    for i, src in enumerate(images):
        shutil.copy(src, root / "ward" / f"p{i}.png")
    good = images[0].read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    (root / "notes.txt").write_text("not an input\n")
    meta = base / "meta.csv"  # ward/p3 has no row: an error row ("no sex")
    meta.write_text("id,sex,chronological_age\nward/p0,F,8\nward/p1,M,11\nward/p2,F,\n")
    return root, meta


SPEC = PipelineSpec("stages/pipelines/default.yaml", device="cpu")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _same(a, b, path: str = "") -> None:
    """Equal records, floats within 1e-4: the actors and the local process may run torch on
    different thread counts, which changes float sums in the last bits."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _records(out: Path) -> list[dict]:
    lines = (out / "assessments.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "timings_ms"} for x in lines]


def _run(tree, out: Path, engine: str, **kw):
    root, meta = tree
    seen: dict[str, tuple | None] = {}

    def hook(a, pixels):
        seen[a.id] = None if pixels is None else (pixels.shape, float(np.asarray(pixels).sum()))

    summary = score_folder(SPEC, root, out, meta=meta, batch_size=2, progress=False,
                           engine=engine, on_result=hook, **kw)
    return summary, seen


@pytest.fixture(scope="module")
def local_run(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    summary, seen = _run(tree, out, "local")
    return out, summary, seen


@needs_weights
def test_ray_matches_local_row_for_row(tree, ray_address, local_run, tmp_path):
    local, local_summary, local_seen = local_run
    out = tmp_path / "ray"
    summary, seen = _run(tree, out, "ray")
    assert _rows(out / "results.csv") == _rows(local / "results.csv")
    _same(_records(out), _records(local))  # same order too
    assert _rows(out / "skipped.csv") == _rows(local / "skipped.csv")
    statuses = {r["id"]: r["status"] for r in _rows(out / "results.csv")}
    assert {statuses[i] for i in ("truncated", "zero", "text", "ward/p3")} == {"error"}
    assert "ok" in statuses.values()
    assert seen == local_seen  # the hook got the same radiographs (None for error rows)
    assert summary.counts == local_summary.counts and summary.complete
    run = json.loads((out / "run.json").read_text())
    assert run["engine"] == "ray" and run["complete"]
    assert run["counts"] == json.loads((local / "run.json").read_text())["counts"]
    overlays = sorted(p.name for p in (local / "overlays").glob("*.png"))
    assert overlays and overlays == sorted(p.name for p in (out / "overlays").glob("*.png"))
    for name in overlays:  # the same picture (a box edge may land one pixel over)
        a, b = (cv2.imread(str(d / "overlays" / name)) for d in (out, local))
        assert a.shape == b.shape and np.mean(np.any(a != b, axis=-1)) < 1e-3, name
    assert (out / "report.html").is_file()


@needs_weights
def test_cli_resumes_a_cut_short_run_on_a_running_ray(tree, ray_address, local_run, cli, tmp_path):
    """``score --engine ray --address ADDR --resume`` after a crash while writing."""
    root, meta = tree
    local = local_run[0]
    out = tmp_path / "ray"
    out.mkdir()
    records = (local / "assessments.jsonl").read_text().splitlines()
    kept = records[:3]
    cut = records[3][: len(records[3]) // 2]  # a crash while writing the fourth
    (out / "assessments.jsonl").write_text("\n".join(kept) + "\n" + cut)
    p = cli("score", str(root), "--out", str(out), "--meta", str(meta), "--engine", "ray",
            "--address", ray_address, "--device", "cpu", "--batch-size", "2", "--quiet",
            "--no-pictures", "--resume")
    assert p.returncode == 1, p.stderr  # the broken files are error rows
    lines = p.stderr.strip().splitlines()
    # our notes, and at most Ray core's line saying that its log level was lowered
    assert all(x.startswith(("warning: ", "note: ")) or re.match(r"\[[^]]* I \d+ \d+\] ", x)
               for x in lines[:-1]), lines
    assert "Traceback" not in p.stderr
    done = sum(json.loads(x)["status"] != "error" for x in kept)  # error rows are tried again
    assert f"; {done} done before (resume)" in lines[-1]
    assert _rows(out / "results.csv") == _rows(local / "results.csv")
    again = _records(out)  # the kept lines, then one per input scored again
    assert len(again) == len(kept) + len(records) - done
    assert {r["id"] for r in again} == {json.loads(x)["id"] for x in records}
    assert (out / "assessments.jsonl.fragment").read_text() == cut + "\n"


def test_without_ray_the_engine_says_how_to_install(tree, tmp_path):
    """No Ray importable: one line naming the extra, exit code 2."""
    import subprocess

    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    root, _ = tree
    p = subprocess.run([sys.executable, "-m", "precise_baa.cli", "score", str(root), "--out",
                        str(tmp_path / "out"), "--engine", "ray"], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(fake)}, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip() == ("precise-baa: error: the ray engine needs Ray Data: pip install "
                                "'precise-baa[ray]' (or 'ray[data]==2.60.0'), or use --engine local")
    assert not (tmp_path / "out").exists()


def test_address_needs_the_ray_engine(tree, cli, tmp_path):
    root, _ = tree
    p = cli("score", str(root), "--out", str(tmp_path / "out"), "--address", "auto")
    assert p.returncode == 2
    assert "--address auto: joins a Ray cluster; add --engine ray" in p.stderr


def test_an_address_where_no_ray_answers_fails_at_once(tree, cli, tmp_path):
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'precise-baa[ray]')")
    root, _ = tree
    out = tmp_path / "out"
    p = cli("score", str(root), "--out", str(out), "--engine", "ray", "--address", "127.0.0.1:1")
    assert p.returncode == 2
    assert p.stderr.strip().startswith("precise-baa: error: --address 127.0.0.1:1: no Ray cluster "
                                       "answers there")
    assert not out.exists()  # refused before anything was written or loaded
