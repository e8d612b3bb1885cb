"""Where the project's data folders live.

precise-baa is used from a checkout (``pip install -e .``): the recipes (``stages/``), the
standards' tables (``percentile_curves/``), the bundled weights (``weights/``) and the example
radiographs (``examples/``) sit beside the package. Environment variables point elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False,
                **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` when the block ends
    without an exception: readers (and a crash) see the old file or the whole new one, never half
    of one. On an exception the temporary file is removed. ``fsync`` flushes it to disk before the
    rename (files another system relies on: DICOM received or sent)."""
    path = Path(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; the file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", fsync=fsync) as f:
        f.write(data)
    return Path(path)
