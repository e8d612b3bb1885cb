"""File names inside an output folder: derived from input ids, never escaping the folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(id: str, max_len: int = 120) -> str:
    """A file-name-safe, collision-free version of an input id.

    ``"ward 3/../x"`` -> ``"ward_3__.._x-1a2b3c4d"``: separators become ``__``, anything outside
    ``[A-Za-z0-9._-]`` becomes ``_``, leading dots are dropped, and whenever the name had to change
    a short hash of the original id is appended so two different ids never share a file.
    """
    name = _UNSAFE.sub("_", id.replace("/", "__").replace("\\", "__")).lstrip(".") or "_"
    if name != id or len(name) > max_len:
        digest = hashlib.sha1(id.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: max_len - 9]}-{digest}"
    return name


def safe_path(out_dir: Path, *parts: str) -> Path:
    """``out_dir/parts...``, refusing anything that would resolve outside ``out_dir``."""
    root = Path(out_dir).resolve()
    p = root.joinpath(*parts).resolve()
    if root != p and root not in p.parents:
        raise ValueError(f"refusing to write outside {root}: {'/'.join(parts)}")
    return p
