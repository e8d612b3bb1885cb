from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).parent / "recipes"

# Keep the suite polite on small machines; tests never download anything.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``precise-baa ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "precise_baa.cli", *args],
        capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout,
    )


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cli():
    """``cli("stage-score", ...)`` runs the command line in a fresh interpreter."""
    return run_cli


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium)")
    return exe


# The test-size detector is derived from the lite config (one source of truth): its sizes, and
# the settings that let an untrained toy model still return boxes, are substituted here.
_TINY_DETECT = [
    (r"^image_scale = .*$", "image_scale = (160, 160)"),
    (r"^base_channels = .*$", "base_channels = 8"),
    (r"^fpn_channels = .*$", "fpn_channels = 32"),
    (r"^fc_channels = .*$", "fc_channels = 64"),
    (r"^anchor_scale = .*$", "anchor_scale = 2"),
    (r"^rpn_proposals = .*$", "rpn_proposals = (200, 100)"),
    (r"^rcnn_samples = .*$", "rcnn_samples = 64"),
    (r"^batch_size = .*$", "batch_size = 2"),
    (r"^sac_deform = .*$", "sac_deform = True"),  # exercise mmcv's deformable SAC too
    (r"^max_epochs = .*$", "max_epochs = 2"),
    (r"score_thr=0\.05", "score_thr=0.0"),  # every class keeps boxes
    (r"max_per_img=100\)", "max_per_img=100 * num_classes)"),
    (r"num_workers=2", "num_workers=0"),
    (r"persistent_workers=True", "persistent_workers=False"),
    (r"end=200\)", "end=10)"),
    (r"interval=50\)", "interval=1)"),
]


def tiny_detect_config(out: Path) -> Path:
    """Write the test-size DetectoRS config (derived from the lite one) to ``out``."""
    text = (ROOT / "stages/detect/detectors-cascade-rcnn-lite.py").read_text()
    for pattern, repl in _TINY_DETECT:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n >= 1, f"lite detect config changed: {pattern!r} no longer matches"
    out.write_text("# Test-only: derived from stages/detect/detectors-cascade-rcnn-lite.py\n" + text)
    return out


@pytest.fixture(scope="session")
def detect_tiny(tmp_path_factory) -> Path:
    return tiny_detect_config(tmp_path_factory.mktemp("recipes") / "detect-tiny.py")
