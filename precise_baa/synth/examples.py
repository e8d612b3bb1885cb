"""The example phantoms shipped in ``examples/`` (README figures, ``precise-baa demo``).

Regenerate with ``python -m precise_baa.synth.examples [OUT_DIR]``. Writes, flat in OUT_DIR
(the demo scores every image found there, so nothing else goes in it):

* ``phantom_000.png`` ... one 512 px phantom per (sex, age, style) in :data:`EXAMPLES`: raw
  films and preprocessed (hand on black, portrait) images alternate;
* ``meta.csv``: ``id,sex,chronological_age`` (what a user would know about each child);
* ``annotations.json``: the COCO ground truth (boxes, stages, bone age); ``file_name`` is
  relative to OUT_DIR itself: ``load_coco("examples/annotations.json", images_dir="examples")``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..imaging import save_png
from .dataset import coco_entries, write_manifest
from .render import GENERATOR_VERSION, render_phantom

#: (seed, sex, chronological age in years): girls and boys across childhood
EXAMPLES: tuple[tuple[int, str, float], ...] = (
    (101, "F", 4.5),
    (102, "M", 7.0),
    (103, "F", 9.5),
    (104, "M", 11.0),
    (105, "F", 12.5),
    (106, "M", 15.0),
)


def write_examples(out_dir: str | Path, size: int = 512) -> Path:
    """Render :data:`EXAMPLES` into ``out_dir``; returns the manifest path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, anns, rows = [], [], []
    for i, (seed, sex, age) in enumerate(EXAMPLES):
        style = "raw" if i % 2 == 0 else "preprocessed"
        p = render_phantom(seed, size, sex=sex, chronological_age=age, style=style)
        name = f"phantom_{i:03d}.png"
        save_png(out_dir / name, p.image)
        image, a = coco_entries(p, i + 1, name, first_annotation_id=13 * i + 1)
        images.append(image)
        anns += a
        rows.append({"id": Path(name).stem, "sex": p.sex, "chronological_age": p.chronological_age})
    with (out_dir / "meta.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "sex", "chronological_age"])
        w.writeheader()
        w.writerows(rows)
    info = {"description": "precise-baa example phantoms (synthetic; see precise_baa/synth/examples.py)",
            "images_dir": ".", "size": size, "generator": GENERATOR_VERSION}
    return write_manifest(out_dir / "annotations.json", images, anns, info)


if __name__ == "__main__":
    import argparse

    from ..paths import examples_dir

    ap = argparse.ArgumentParser(description="Write the example phantoms the demo scores.")
    ap.add_argument("out", nargs="?", type=Path, default=examples_dir(),
                    help="folder to write (default: the project's examples/)")
    print(write_examples(ap.parse_args().out))
