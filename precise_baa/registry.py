"""Plain-dict registries of stage implementations, and loading a stage from recipe/weights.

An implementation registers a factory ``(recipe, weights, device) -> stage object`` with its
recipe model::

    @register("segment", "threshold", recipe=ThresholdRecipe)
    def _make(recipe, weights=None, device=None): ...

Recipes name registered implementations only (no import paths, nothing evaluated). A weights
folder carries the recipe it was trained with, so ``load_stage("grade", weights=path)`` is
enough to rebuild a trained stage.

The one exception is the detect stage's mmdet config, a ``.py`` file that mmengine executes
when it is read. Such a file runs only when it lies inside the project's ``stages/`` folder or
is explicitly trusted (``trust=True``, ``--trust-recipe``, or a :func:`trusted_recipes` block);
:func:`check_recipe_trusted` is called by the one function that executes config files.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecipeError

STAGES = ("segment", "detect", "grade", "score")
_MODULES = {s: f"precise_baa.{s}" for s in STAGES}


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., Any]
    recipe: type | None


_REGISTRY: dict[str, dict[str, Entry]] = {s: {} for s in STAGES}
_TRUST_RECIPES: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_recipes", default=False)


@contextlib.contextmanager
def trusted_recipes(trust: bool = True) -> Iterator[None]:
    """Inside the block, ``.py`` recipes outside ``stages/`` may run (``trust=False``: no
    change; an enclosing trusted block stays trusted)."""
    token = _TRUST_RECIPES.set(bool(trust) or _TRUST_RECIPES.get())
    try:
        yield
    finally:
        _TRUST_RECIPES.reset(token)


def check_recipe_trusted(path: str | Path) -> None:
    """Refuse to run the Python recipe ``path`` unless it lies inside the project's ``stages/``
    folder (after resolving links) or recipes are trusted (:func:`trusted_recipes`)."""
    from .paths import stages_dir

    if _TRUST_RECIPES.get():
        return
    if Path(path).resolve().is_relative_to(stages_dir().resolve()):
        return
    raise RecipeError(
        f"{path}: a .py recipe is Python code and runs when loaded; only recipes inside stages/ "
        "run without asking: pass --trust-recipe if you trust this file (Python: trust=True)")


def register(stage: str, name: str, recipe: type | None = None):
    """Decorator registering ``factory`` as implementation ``name`` of ``stage``."""
    if stage not in _REGISTRY:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")

    def deco(factory):
        if name in _REGISTRY[stage] and _REGISTRY[stage][name].factory is not factory:
            raise ValueError(f"{stage} implementation {name!r} registered twice")
        _REGISTRY[stage][name] = Entry(factory, recipe)
        return factory

    return deco


def implementations(stage: str) -> dict[str, Entry]:
    """The registered implementations of ``stage`` (imports the stage's package first)."""
    if stage not in _REGISTRY:
        raise RecipeError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGES)}")
    importlib.import_module(_MODULES[stage])
    return dict(_REGISTRY[stage])


def entry(stage: str, name: str) -> Entry:
    impls = implementations(stage)
    if name not in impls:
        raise RecipeError(
            f"no {stage} implementation named {name!r}; registered: {', '.join(sorted(impls))}"
        )
    return impls[name]


def parse_recipe(stage: str, data: dict[str, Any], source: str = "recipe"):
    """Validate a recipe mapping into the registered implementation's recipe model."""
    from .schemas import validate_recipe

    if data.get("stage", stage) != stage:
        raise RecipeError(f"{source}: stage: this is a {data.get('stage')!r} recipe, not {stage!r}")
    name = data.get("implementation")
    if not name:
        raise RecipeError(f"{source}: implementation: field required")
    e = entry(stage, name)
    if e.recipe is None:
        return data
    return validate_recipe(e.recipe, {**data, "stage": stage}, source)


def read_recipe(stage: str, path: str | Path):
    """Read a recipe file of ``stage`` (YAML; an mmdet ``.py`` config for ``detect``)."""
    from .paths import resolve
    from .schemas import read_yaml

    path = resolve(path)
    if path.suffix == ".py":
        if stage != "detect":
            raise RecipeError(f"{path}: Python configs are mmdet configs, for the detect stage only")
        data = {"stage": "detect", "implementation": "mmdet", "config": str(path)}
    else:
        data = read_yaml(path)
    return parse_recipe(stage, data, str(path))


def load_stage(stage: str, recipe=None, weights: str | Path | None = None, device: str | None = None,
               *, trust: bool = False, allow_unverified: bool = False):
    """Build a stage from a recipe (path, mapping or model) and/or a weights folder.

    With only ``weights``, the recipe stored beside the weights is used. With only ``recipe``,
    the model is built with fresh (random or ImageNet, as the recipe says) weights.
    ``trust``: run a ``.py`` recipe from outside ``stages/`` (it is code). ``allow_unverified``:
    load a weights folder without the ``card.json`` that holds its sha256.
    """
    from .weights import allow_unverified_weights, read_stored_recipe

    if recipe is None and weights is None:
        raise RecipeError(f"{stage}: give a recipe, a weights folder, or both")
    with trusted_recipes(trust), allow_unverified_weights(allow_unverified):
        if recipe is None:
            recipe = parse_recipe(stage, read_stored_recipe(weights), f"{weights}/recipe.json")
        elif isinstance(recipe, (str, Path)):
            recipe = read_recipe(stage, recipe)
        elif isinstance(recipe, dict):
            recipe = parse_recipe(stage, recipe)
        name = recipe["implementation"] if isinstance(recipe, dict) else recipe.implementation
        return entry(stage, name).factory(recipe, weights=weights, device=device)
