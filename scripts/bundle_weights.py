#!/usr/bin/env python
"""Copy trained weights folders into weights/ as fp16 (or fp32) safetensors and write weights/MANIFEST.json.

    python scripts/bundle_weights.py runs/demo/segment-unet-lite runs/demo/grade-... \
        --data "precise-baa synth --n 800 --seed 1 --size 512"

Each bundled folder keeps its recipe.json; its card gains the training-data description, the
phantom notice and the tensor file's sha256. MANIFEST.json lists every bundled folder.
``--dtype float32`` keeps full precision: the bundled detector is stored so, because fp16
tensors changed which of its boxes pass the anatomy checks on real radiographs (real-dev, with the detector before its
fine-tuning: 5 of 8 scored in fp32, 3 in fp16); the segmenter and grader stay fp16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from precise_baa import __version__
from precise_baa.paths import weights_dir
from precise_baa.weights import PHANTOM_NOTICE, TENSORS, load_weights, read_card, save_weights

INTENDED_USE = ("Demonstration and tests of the precise-baa pipeline on phantom radiographs. "
                "Not for clinical use; train on your own annotated radiographs for research use.")


def bundle(src: Path, dest_root: Path, data: str, seed: int | None = None,
           half: bool = True) -> dict:
    w = load_weights(src)
    card = dict(w.card)
    for k in ("sha256", "dtype", "num_parameters", "history", "onnx"):
        card.pop(k, None)
    card.update(name=src.name, phantom_trained=True, notice=PHANTOM_NOTICE,
                intended_use=INTENDED_USE, training_data=data, package_version=__version__)
    out = save_weights(dest_root / src.name, w.state_dict, w.recipe, card=card, half=half)
    final = read_card(out)
    return {
        "name": src.name, "stage": final.get("stage"), "implementation": final.get("implementation"),
        "recipe": w.recipe.get("name") or w.recipe.get("config"),
        "sha256": final["sha256"], "dtype": final["dtype"],
        "size_bytes": (out / TENSORS).stat().st_size, "num_parameters": final["num_parameters"],
        "training_data": data, "training_seed": seed, "metrics": final.get("metrics", {}),
        "phantom_trained": True,
        "notice": PHANTOM_NOTICE,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--data", required=True, help="how the training phantoms were made")
    ap.add_argument("--seed", type=int, default=None, help="the seed of the training phantoms and runs")
    ap.add_argument("--dest", type=Path, default=weights_dir())
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                    help="precision of the bundled tensors (default float16: half the size)")
    args = ap.parse_args()
    manifest_path = args.dest / "MANIFEST.json"
    entries = {}
    if manifest_path.is_file():
        entries = {e["name"]: e for e in json.loads(manifest_path.read_text())["weights"]}
    for src in args.folders:
        entries[src.name] = bundle(src, args.dest, args.data, args.seed,
                                   half=args.dtype == "float16")
        print(f"bundled {src.name}: {entries[src.name]['size_bytes'] / 1e6:.1f} MB")
    manifest = {"notice": PHANTOM_NOTICE, "intended_use": INTENDED_USE,
                "weights": [entries[k] for k in sorted(entries)]}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(e["size_bytes"] for e in manifest["weights"]) / 1e6
    print(f"{manifest_path}: {len(entries)} folder(s), {total:.1f} MB")


if __name__ == "__main__":
    main()
