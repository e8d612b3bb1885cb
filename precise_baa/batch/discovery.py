"""Finding the inputs of a run: a folder (recursive), a file list, or one file; ids per input.

Every file under a folder either becomes an input or is listed as skipped with its reason
(``skipped.csv`` of a run), never silently dropped:

- hidden files and folders (name starting with ".") are skipped ("hidden file/folder");
- symbolic links to folders are followed, each real folder once: a link back to a folder
  already scanned (a loop, or the same folder twice) is skipped, naming the first path;
- files with an unsupported suffix, files without suffix that are not DICOM, broken links,
  pipes/sockets/devices and unreadable folders are skipped with their reason;
- the run's own output folder (when it lies inside the input) is skipped.

Ids: an input's id is its path relative to the folder without suffix (``ward3/p001``). Inputs
that would share an id (``a.png`` and ``a.jpg``, or ``a.png`` and ``a.PNG``) keep their suffix
instead (``a.png``, ``a.jpg``, ``a.PNG``), so every input has its own id and its own row.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..imaging import DICOM_SUFFIXES, RASTER_SUFFIXES, is_dicom_file

LIST_SUFFIXES = {".txt", ".lst", ".list"}
SUPPORTED = "PNG, JPEG, TIFF, BMP or DICOM (" + " ".join(
    sorted(RASTER_SUFFIXES | DICOM_SUFFIXES)) + ", or DICOM without suffix)"


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path
    error: str | None = None  # set when the input cannot be scored before reading it
    #: the id keeps the file's suffix because another input has the same name without it
    suffixed: bool = False

    @property
    def bare_id(self) -> str:
        """The id without the file's suffix (what a metadata row would usually name)."""
        return str(Path(self.id).with_suffix("").as_posix()) if self.suffixed else self.id


@dataclass(frozen=True)
class Skipped:
    """A path under the input that is not an input, and why."""

    path: Path
    reason: str


@dataclass
class Discovery:
    items: list[InputItem]
    skipped: list[Skipped] = field(default_factory=list)


def _file_reason(path: Path, st: os.stat_result | None) -> str | None:
    """Why ``path`` (a folder entry that is not a folder) is not an input; None if it is one."""
    if st is None:
        return "broken symbolic link (its target does not exist, or the link loops)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES or suffix in DICOM_SUFFIXES:
        return None
    if suffix == "":
        return None if is_dicom_file(path) else f"no suffix and not DICOM (supported: {SUPPORTED})"
    return f"unsupported suffix {path.suffix} (supported: {SUPPORTED})"


def _walk_folder(root: Path, exclude: Path | None) -> tuple[list[Path], list[Skipped]]:
    paths: list[Path] = []
    skipped: list[Skipped] = []
    seen: dict[Path, Path] = {root.resolve(): root}

    def walk(folder: Path) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            skipped.append(Skipped(folder, f"folder not readable ({e.strerror or type(e).__name__})"))
            return
        for name in names:
            p = folder / name
            try:
                st: os.stat_result | None = p.stat()  # follows links
            except OSError:
                st = None
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            if name.startswith("."):
                skipped.append(Skipped(p, "hidden folder" if is_dir else "hidden file"))
                continue
            if not is_dir:
                reason = _file_reason(p, st)
                if reason is None:
                    paths.append(p)
                else:
                    skipped.append(Skipped(p, reason))
                continue
            real = p.resolve()
            if exclude is not None and real == exclude:
                skipped.append(Skipped(p, "the output folder of this run"))
            elif real in seen:
                skipped.append(Skipped(p, f"symbolic link to a folder already scanned as "
                                          f"{seen[real]} (a loop, or the same folder twice)"))
            else:
                seen[real] = p
                walk(p)

    walk(root)
    return paths, skipped


def _read_list(listing: Path) -> tuple[list[Path], list[Skipped]]:
    paths: list[Path] = []
    skipped: list[Skipped] = []
    first: dict[Path, int] = {}
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{listing}: the file list is not UTF-8 text") from None
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        p = p if p.is_absolute() else listing.parent / p
        real = p.resolve()
        if real in first:
            skipped.append(Skipped(p, f"listed twice ({listing.name} lines {first[real]} and {n})"))
            continue
        first[real] = n
        paths.append(p)
    return paths, skipped


def _ids(paths: list[Path], root: Path | None) -> list[tuple[str, bool]]:
    """``(id, suffixed)`` per path: relative path without suffix, unique (see the module doc)."""
    full = []
    for p in paths:
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else Path(p.name)
        full.append(rel.as_posix())
    ids = [Path(f).with_suffix("").as_posix() if Path(f).suffix else f for f in full]
    suffixed = [False] * len(ids)
    changed = True
    while changed:  # keeping a suffix can make a new clash (a.png vs a.png.png): repeat
        changed = False
        counts = Counter(ids)
        for i, id in enumerate(ids):
            if counts[id] > 1 and id != full[i]:
                ids[i], suffixed[i], changed = full[i], True, True
    counts = Counter(ids)
    for i, id in enumerate(ids):
        if counts[id] > 1:  # list entries outside the list's folder with the same name
            ids[i], suffixed[i] = paths[i].resolve().as_posix(), True
    return list(zip(ids, suffixed, strict=True))


def scan(input: str | Path, exclude: Path | None = None) -> Discovery:
    """Inputs from a folder (recursive), a file list (one path per line, ``#`` comments) or a
    single file, and the skipped paths with their reasons (see the module docstring)."""
    input = Path(input)
    if not input.exists():
        raise InputError(f"{input}: no such file or folder")
    root: Path | None
    skipped: list[Skipped] = []
    if input.is_dir():
        root = input
        excl = exclude.resolve() if exclude is not None else None
        paths, skipped = _walk_folder(input, excl)
    elif input.suffix.lower() in LIST_SUFFIXES:
        root = input.parent
        paths, skipped = _read_list(input)
    else:
        root, paths = None, [input]
    items = [InputItem(id, p, suffixed=s) for p, (id, s) in zip(paths, _ids(paths, root), strict=True)]
    return Discovery(items, skipped)


def discover(input: str | Path, exclude: Path | None = None) -> list[InputItem]:
    """The inputs of :func:`scan` (without the skipped paths)."""
    return scan(input, exclude).items
