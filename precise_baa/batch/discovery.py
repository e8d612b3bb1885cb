"""Finding the inputs of a run: a folder (recursive), a file list, or one file; ids per input."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..imaging import is_candidate

LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path
    error: str | None = None  # set when the input cannot be scored before reading it


def _id_for(path: Path, root: Path | None) -> str:
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else Path(path.name)
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def discover(input: str | Path, exclude: Path | None = None) -> list[InputItem]:
    """Inputs from a folder (recursive), a file list (one path per line) or a single file.

    The id of an input is its path relative to the folder, without suffix (``ward3/p001``).
    Inputs sharing an id (``p001.png`` and ``p001.dcm``) all become error rows: a metadata row
    could not say which one it describes.
    """
    input = Path(input)
    if not input.exists():
        raise InputError(f"{input}: no such file or folder")
    root: Path | None
    if input.is_dir():
        root = input
        excl = exclude.resolve() if exclude is not None else None
        paths = []
        for dirpath, dirnames, filenames in os.walk(input):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                                 and (excl is None or (d / n).resolve() != excl))
            paths += [d / f for f in sorted(filenames) if is_candidate(d / f)]
    elif input.suffix.lower() in LIST_SUFFIXES:
        root = input.parent
        paths = []
        for line in input.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else input.parent / p)
    else:
        root, paths = None, [input]
    items = [InputItem(_id_for(p, root), p) for p in paths]
    seen = Counter(it.id for it in items)
    out = []
    for it in items:
        if seen[it.id] > 1:
            others = ", ".join(str(o.path.name) for o in items if o.id == it.id)
            it = InputItem(it.id, it.path, f"duplicate id {it.id!r} ({others}): rename one")
        out.append(it)
    return out
