from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).parent / "recipes"

# Keep the suite polite on small machines; tests never download anything.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# idle OpenMP threads sleep instead of spinning: several torch processes on few cores (tests
# that start the command line, data workers) otherwise slow each other down many times over
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


@pytest.fixture(scope="session")
def detect_tiny() -> Path:
    """The test-size DetectoRS recipe (inherits the project's base detector config)."""
    return RECIPES / "detect-tiny.py"
