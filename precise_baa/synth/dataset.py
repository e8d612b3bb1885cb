"""Write phantom datasets: images, palm masks and one COCO manifest (see ``precise_baa.data``).

Layout::

    OUT/images/phantom_00000.png   radiograph (8-bit, or 16-bit with bits=16); square (raw
                                   style) or portrait (preprocessed style), longer side ``size``
    OUT/masks/phantom_00000.png    palm mask (0 / 255)
    OUT/annotations.json           COCO: 13 ROI categories, one box per ROI with ``stage``
                                   (RUS-CHN) and ``stage_tw3``; images carry ``sex``,
                                   ``chronological_age``, ``bone_age``, ``maturity_score``,
                                   ``mask_file``, ``style``

Image ``i`` depends only on ``(seed, i)``, so a larger ``n`` extends a dataset without changing
its first images. The manifest is written last (atomically): a folder without
``annotations.json`` is an interrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imaging import save_png
from ..paths import atomic_write
from ..report.figures import contact_sheet
from ..rois import ROI_KEYS
from .render import GENERATOR_VERSION, Phantom, check_style, render_phantom

MANIFEST = "annotations.json"


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a dataset drawn with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def categories() -> list[dict]:
    return [{"id": i + 1, "name": k, "supercategory": "bone"} for i, k in enumerate(ROI_KEYS)]


def coco_entries(phantom: Phantom, image_id: int, file_name: str, mask_file: str | None = None,
                 first_annotation_id: int = 1) -> tuple[dict, list[dict]]:
    """The COCO image entry and its 13 annotations for one phantom."""
    h, w = phantom.image.shape
    image = {
        "id": image_id, "file_name": file_name, "width": w, "height": h,
        "sex": phantom.sex, "chronological_age": phantom.chronological_age,
        "bone_age": phantom.bone_age, "maturity_score": phantom.maturity_score,
        "phantom": True,  # synthetic: weights trained on it are marked phantom-trained
        "style": phantom.style,
    }
    if mask_file is not None:
        image["mask_file"] = mask_file
    anns = []
    for i, key in enumerate(ROI_KEYS):
        b = phantom.boxes[key]
        bbox = [round(b.x0, 2), round(b.y0, 2), round(b.width, 2), round(b.height, 2)]
        anns.append({
            "id": first_annotation_id + i, "image_id": image_id, "category_id": i + 1,
            "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
            "stage": phantom.stages[key], "stage_tw3": phantom.stages_tw3[key],
        })
    return image, anns


def write_manifest(path: str | Path, images: Sequence[dict], annotations: Iterable[dict],
                   info: dict | None = None) -> Path:
    """Write a COCO manifest atomically (temporary file, then rename)."""
    path = Path(path)
    data = {"info": info or {}, "images": list(images), "annotations": list(annotations),
            "categories": categories()}
    return atomic_write(path, json.dumps(data, indent=1))


def _make_one(job: tuple[int, int, int, int, str, str]) -> tuple[dict, list[dict]]:
    seed, index, size, bits, out, style = job
    import cv2

    cv2.setNumThreads(1)
    out_dir = Path(out)
    phantom = render_phantom(image_rng(seed, index), size, style=style)
    name = f"phantom_{index:05d}.png"
    save_png(out_dir / "images" / name, phantom.image, bits=bits)
    cv2.imwrite(str(out_dir / "masks" / name), phantom.mask.astype(np.uint8) * 255)
    return coco_entries(phantom, index + 1, name, f"masks/{name}",
                        first_annotation_id=index * len(ROI_KEYS) + 1)


def generate_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 512,
    bits: int = 8,
    progress: bool = True,
    workers: int = 1,
    style: str = "mixed",
) -> Path:
    """Render ``n`` phantoms into ``out_dir``; returns the path of ``annotations.json``.

    ``size`` is each image's longer side; ``style`` "raw" (square films with markers),
    "preprocessed" (hand on black in a portrait frame) or "mixed" (each image draws one of the
    two, 50/50, from its own seed); ``bits`` 8 or 16 (PNG depth); ``workers`` processes
    render in parallel. Files
    ``phantom_NNNNN.png`` left by an earlier run with a larger ``n`` are removed, so the
    folder holds exactly this dataset.

    >>> path = generate_dataset(tmp_path, n=4, seed=0, size=256, progress=False)  # doctest: +SKIP
    """
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    if size < 128:
        raise InputError(f"size {size} is too small for a hand phantom (use 128 or more)")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    check_style(style)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    if manifest.exists():
        manifest.unlink()  # a stale manifest must not describe half-rewritten images
    for sub in ("images", "masks"):  # phantoms of an earlier, larger run would be orphans
        for old in (out_dir / sub).glob("phantom_[0-9][0-9][0-9][0-9][0-9].png"):
            if int(old.stem.split("_")[1]) >= n:
                old.unlink()
    jobs = [(int(seed), i, int(size), int(bits), str(out_dir), style) for i in range(n)]

    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="phantoms", unit="img", disable=not progress)
    results: list[tuple[dict, list[dict]]] = []
    if workers == 1:
        for job in jobs:
            results.append(_make_one(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(_make_one, jobs, chunksize=max(1, min(16, n // (4 * workers)))):
                results.append(r)
                bar.update()
    bar.close()
    from .. import __version__

    info = {"description": "precise-baa procedural hand-radiograph phantoms",
            "version": __version__, "generator": GENERATOR_VERSION, "style": style,
            "seed": int(seed), "size": int(size), "bits": int(bits),
            "standard": "rus-chn", "stage_tw3": "tw3"}
    return write_manifest(manifest, [r[0] for r in results], [a for r in results for a in r[1]], info)


def ensure_dataset(out_dir: str | Path, n: int, seed: int, size: int = 512, **kwargs) -> Path:
    """:func:`generate_dataset` unless ``out_dir`` already holds exactly that dataset (same
    ``n``, ``seed``, ``size``, ``style`` and generator version in its manifest); returns the
    manifest path either way."""
    manifest = Path(out_dir) / MANIFEST
    style = kwargs.get("style", "mixed")
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        info = data.get("info", {})
        have = (len(data.get("images", [])), info.get("seed"), info.get("size"), info.get("style"),
                info.get("generator"))
        if have == (n, seed, size, style, GENERATOR_VERSION):
            return manifest
    return generate_dataset(out_dir, n, seed, size=size, **kwargs)


def sheet_from_manifest(manifest: str | Path, path: str | Path, *, limit: int = 16,
                        show_boxes: bool = False) -> Path:
    """Contact sheet of the first ``limit`` images of a COCO manifest, as written on disk."""
    from ..data import load_coco
    from ..imaging import read_radiograph

    records = load_coco(manifest).records[:limit]
    images = [read_radiograph(r.path).pixels for r in records]
    captions = [f"{r.sex} {r.chronological_age:.1f}y BA {r.bone_age:.1f}y" for r in records]
    boxes = [r.boxes for r in records] if show_boxes else None
    return contact_sheet(images, path, captions=captions, boxes=boxes)


def cmd_synth(args) -> int:
    """``precise-baa synth``: write a phantom dataset (and optionally a contact sheet)."""
    manifest = generate_dataset(args.out, n=args.n, seed=args.seed, size=args.size, bits=args.bits,
                                progress=not args.quiet, workers=args.workers, style=args.style)
    print(f"wrote {args.n} phantoms to {Path(args.out)} (manifest {manifest})")
    if args.contact_sheet:
        sheet = sheet_from_manifest(manifest, args.contact_sheet, show_boxes=args.sheet_boxes)
        print(f"contact sheet: {sheet}")
    return 0
