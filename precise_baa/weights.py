"""Weights folders: ``model.safetensors`` + ``recipe.json`` + ``card.json``.

Nothing here unpickles: tensors come from safetensors, metadata from JSON. The card records
what a reader of a model needs (intended use, training data, metrics, input format) and the
sha256 of the tensor file, checked on every load. A folder without a card (or a card without
the sha256) is refused unless unverified weights are allowed explicitly
(``allow_unverified=True``, ``--allow-unverified-weights``, :func:`allow_unverified_weights`);
results of such weights carry a ``weights_unverified`` flag.

>>> save_weights("weights/my-grader", model.state_dict(), recipe, card={"metrics": {...}})  # doctest: +SKIP
>>> w = load_weights("weights/my-grader")                                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError

TENSORS = "model.safetensors"
RECIPE = "recipe.json"
CARD = "card.json"

PHANTOM_NOTICE = "phantom-trained: learned from synthetic radiographs only; not for clinical use"
UNVERIFIED_NOTICE = (f"weights loaded without their {CARD} (no sha256 to check the tensors "
                     "against): they may have been replaced or damaged")

_ALLOW_UNVERIFIED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "allow_unverified_weights", default=False)


@contextlib.contextmanager
def allow_unverified_weights(allow: bool = True) -> Iterator[None]:
    """Inside the block, weights folders without a card load (``allow=False``: no change)."""
    token = _ALLOW_UNVERIFIED.set(bool(allow) or _ALLOW_UNVERIFIED.get())
    try:
        yield
    finally:
        _ALLOW_UNVERIFIED.reset(token)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(recipe: Any) -> dict[str, Any]:
    if hasattr(recipe, "model_dump"):
        return recipe.model_dump(mode="json")
    return json.loads(json.dumps(recipe, default=str))


def save_weights(
    out_dir: str | Path,
    state_dict: dict[str, Any],
    recipe: Any,
    card: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write (or overwrite) a weights folder; other files in it (history, logs) are kept.

    ``half`` stores floating tensors as fp16 (bundled demo weights); they are cast back to the
    model's dtype when loaded.
    """
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=out_dir))
    try:
        save_file(tensors, str(tmp / TENSORS))
        recipe_json = _jsonable(recipe)
        (tmp / RECIPE).write_text(json.dumps(recipe_json, indent=2) + "\n")
        card = dict(card or {})
        card.update(
            name=card.get("name") or out_dir.name,
            stage=recipe_json.get("stage"),
            implementation=recipe_json.get("implementation"),
            sha256=sha256_file(tmp / TENSORS),
            dtype="float16" if half else "float32",
            num_parameters=int(sum(t.numel() for t in tensors.values() if t.is_floating_point())),
        )
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")
        # Each file is replaced atomically; the card (with the tensors' sha256) goes last, so
        # an interrupted save is detected on load rather than silently mixed.
        for name in (TENSORS, RECIPE, CARD):
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@dataclass
class LoadedWeights:
    path: Path
    state_dict: dict[str, Any]
    recipe: dict[str, Any]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.card.get("sha256", "")

    @property
    def phantom_trained(self) -> bool:
        return bool(self.card.get("phantom_trained", False))


def _folder(path: str | Path) -> Path:
    from .paths import resolve

    p = resolve(path)
    if not p.is_dir():
        raise WeightsError(f"{path}: weights folder not found")
    return p


def read_stored_recipe(path: str | Path) -> dict[str, Any]:
    p = _folder(path) / RECIPE
    if not p.is_file():
        raise WeightsError(f"{path}: no {RECIPE} beside the weights; was it saved by precise-baa?")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{p}: not valid JSON ({e})") from None


def read_card(path: str | Path) -> dict[str, Any]:
    """The folder's card ({} when there is none)."""
    p = _folder(path) / CARD
    if not p.is_file():
        return {}
    try:
        card = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise WeightsError(f"{p}: not a card (a JSON object is expected)")
    return card


def load_weights(path: str | Path, verify: bool = True, allow_unverified: bool = False) -> LoadedWeights:
    """Load a weights folder; the tensor file's sha256 is checked against the card.

    A folder without a card holding the sha256 is refused unless ``allow_unverified`` (or an
    :func:`allow_unverified_weights` block); ``verify=False`` skips every check.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = _folder(path)
    tensors = folder / TENSORS
    if not tensors.is_file():
        raise WeightsError(f"{path}: no {TENSORS} (only safetensors weights are loaded)")
    card = read_card(folder)
    if verify and not card.get("sha256") and not (allow_unverified or _ALLOW_UNVERIFIED.get()):
        what = f"no {CARD}" if not (folder / CARD).is_file() else f"its {CARD} has no sha256"
        raise WeightsError(
            f"{path}: {what}, so {TENSORS} cannot be checked (a replaced or damaged file would load "
            f"unnoticed); restore the folder's {CARD}, or pass --allow-unverified-weights "
            "(Python: allow_unverified=True) to load it anyway, flagged in every result")
    if verify and card.get("sha256") and sha256_file(tensors) != card["sha256"]:
        raise WeightsError(f"{tensors}: sha256 does not match {CARD}; the file is corrupted or replaced")
    try:
        state = load_file(str(tensors))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{tensors}: unreadable safetensors file ({e})") from None
    return LoadedWeights(folder, state, read_stored_recipe(folder), card)


def restore(model, weights: str | Path, *, stage: str, implementation: str, name: str = ""):
    """Load the weights folder ``weights`` into ``model``; returns the ModelInfo recording it
    (name, path, sha256, phantom-trained), as every stage's ``from_recipe`` reports it."""
    from .schemas import ModelInfo

    loaded = load_weights(weights)
    load_into(model, loaded)
    return ModelInfo(stage=stage, implementation=implementation, name=name or Path(loaded.path).name,
                     weights=str(weights), sha256=loaded.sha256, phantom_trained=loaded.phantom_trained)


def load_into(model, weights: LoadedWeights) -> None:
    """Copy tensors into ``model`` (cast to its dtypes); a clear error on any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights.state_dict))
    unexpected = sorted(set(weights.state_dict) - set(own))
    bad_shape = [
        k for k in own if k in weights.state_dict and own[k].shape != weights.state_dict[k].shape
    ]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            f"{n}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
            for n, v in (("missing", missing), ("unexpected", unexpected), ("shape", bad_shape))
            if v
        )
        raise WeightsError(f"{weights.path}: weights do not fit the recipe's model ({detail})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.state_dict.items()})
