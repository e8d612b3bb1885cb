"""Distributed data parallel training under torchrun: 2 processes, gloo, CPU, 1 epoch.

``torchrun --nproc-per-node 2 -m precise_baa.cli train segment|grade ...`` with the tiny test
recipes (the same files a single process trains with) on a few phantoms: both runs finish,
process 0 writes one weights folder that loads (load_stage), and the card records the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precise_baa.registry import load_stage
from precise_baa.synth import generate_dataset

RECIPES = Path(__file__).parent / "recipes"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-phantoms")
    generate_dataset(out, n=8, seed=5, size=192, progress=False)
    return out


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m precise_baa.cli ARGS`` (a free port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "precise_baa.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def _check(out: Path, stage: str, metric: str) -> None:
    card = json.loads((out / "card.json").read_text())
    assert card["distributed"] == {"world_size": 2, "backend": "gloo"}
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]
    assert np.isfinite(history[0]["train_loss"]) and metric in history[0]
    assert (out / "last" / "model.safetensors").is_file()
    loaded = load_stage(stage, weights=out, device="cpu")
    assert loaded.info.sha256 == card["sha256"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".write-test-*"))


def test_torchrun_trains_a_segmenter(phantoms, tmp_path):
    out = tmp_path / "seg"
    p = torchrun("train", "segment", "--recipe", str(RECIPES / "segment-unet-tiny.yaml"),
                 "--data", str(phantoms), "--out", str(out), "--epochs", "1", "--batch-size", "2",
                 "--device", "cpu", "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    _check(out, "segment", "dice")


def test_torchrun_trains_a_grader(phantoms, tmp_path):
    out = tmp_path / "grade"
    p = torchrun("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"),
                 "--coco", str(phantoms / "annotations.json"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "2", "--device", "cpu", "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    _check(out, "grade", "mean_accuracy")


@pytest.mark.slow
def test_torchrun_trains_a_detector_through_mmengine(phantoms, tmp_path, detect_tiny):
    out = tmp_path / "detect"
    p = torchrun("train", "detect", "--recipe", str(detect_tiny), "--trust-recipe",
                 "--coco", str(phantoms / "annotations.json"), "--out", str(out), "--epochs", "1",
                 "--batch-size", "2", "--val-fraction", "0.25", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    assert card["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert load_stage("detect", weights=out, device="cpu", trust=True).info.sha256 == card["sha256"]
