"""Where the project's data folders live.

precise-baa is used from a checkout (``pip install -e .``): the recipes (``stages/``), the
standards' tables (``percentile_curves/``), the bundled weights (``weights/``) and the example
radiographs (``examples/``) sit beside the package. Environment variables point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _dir(env: str, default: str) -> Path:
    return Path(os.environ.get(env, REPO_ROOT / default))


def curves_dir() -> Path:
    return _dir("PRECISE_BAA_CURVES", "percentile_curves")


def stages_dir() -> Path:
    return _dir("PRECISE_BAA_STAGES", "stages")


def weights_dir() -> Path:
    return _dir("PRECISE_BAA_WEIGHTS", "weights")


def examples_dir() -> Path:
    return _dir("PRECISE_BAA_EXAMPLES", "examples")


def resolve(path: str | os.PathLike, base: Path | None = None) -> Path:
    """Resolve ``path``: as given if it exists, else relative to ``base``, else to the repo root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for root in (base, REPO_ROOT):
        if root is not None and (root / p).exists():
            return root / p
    return p


def display_path(path: str | os.PathLike) -> str:
    """``path`` as reports print it: relative to the repository (``runs/eval/annotations.json``,
    ``../data/x.json``), so a committed report never names the machine it ran on."""
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(os.path.relpath(p, REPO_ROOT)).as_posix()
