"""mmdet configs for the detect stage: read, adapt to the 13 ROIs, store as data, build.

The mmdet config stays confined here and in :mod:`precise_baa.detect.train`; the rest of the
package sees a :class:`~precise_baa.detect.recipe.DetectRecipe` and a predictor.

- :func:`load_config` reads the recipe's config (executing the ``.py`` file, as mmengine does,
  only when the recipe does not carry it as data) and :func:`prepare_config` adapts it: class
  names = ``ROI_KEYS``, ``num_classes`` = 13 in every box head, and no pretrained download unless
  the recipe asks.
- :func:`encode_config` / :func:`decode_config` turn a config into JSON-safe data and back
  (tuples are kept as ``{"__tuple__": [...]}`` because mmcv's transforms tell tuples from
  lists); weights folders store it so loading trained weights never runs Python.
- :func:`build_model` builds the detector (mmdet's registry, ``default_scope='mmdet'``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import RecipeError
from ..paths import resolve
from ..registry import check_recipe_trusted
from ..rois import ROI_KEYS
from .recipe import DetectRecipe

if TYPE_CHECKING:
    import torch
    from mmengine.config import Config

_TUPLE = "__tuple__"


# --------------------------------------------------------------------------------------------
def encode_config(value: Any) -> Any:
    """Config (or any nesting of dicts/lists/tuples/scalars) -> JSON-safe data."""
    if isinstance(value, Mapping):
        return {str(k): encode_config(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [encode_config(v) for v in value]}
    if isinstance(value, list):
        return [encode_config(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise RecipeError(
        f"mmdet config value {value!r} ({type(value).__name__}) cannot be stored as data; "
        "use plain dicts, lists, tuples, numbers and strings in detect configs")


def decode_config(value: Any) -> Any:
    """Inverse of :func:`encode_config`."""
    if isinstance(value, Mapping):
        if set(value) == {_TUPLE}:
            return tuple(decode_config(v) for v in value[_TUPLE])
        return {k: decode_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_config(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
def _walk(node: Any, fn: Callable[[dict, str], None], path: str = "") -> None:
    """Call ``fn(d, path)`` on every dict inside ``node`` (depth first)."""
    if isinstance(node, dict):
        fn(node, path)
        for k, v in node.items():
            _walk(v, fn, f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _walk(v, fn, f"{path}[{i}]")


def _read_file(recipe: DetectRecipe) -> dict[str, Any]:
    from mmengine.config import Config

    path = resolve(recipe.config)
    if not path.is_file():
        raise RecipeError(f"{recipe.config}: mmdet config file not found")
    if path.suffix != ".py":
        raise RecipeError(f"{path}: an mmdet config is a .py file")
    check_recipe_trusted(path)  # the config is Python: it runs below
    try:
        data = Config.fromfile(str(path)).to_dict()
    except Exception as e:  # syntax errors, bad _base_ paths, ...
        raise RecipeError(f"{path}: cannot read the mmdet config ({type(e).__name__}: {e})") from None
    # pure-Python configs keep the builder functions they inherit (read_base): not config data
    return {k: v for k, v in data.items() if not isinstance(v, (types.FunctionType, types.ModuleType))}


def load_config(recipe: DetectRecipe) -> Config:
    """The recipe's mmdet config, prepared by :func:`prepare_config`."""
    from mmengine.config import Config

    if recipe.mmdet_config is not None:
        data = decode_config(recipe.mmdet_config)
    else:
        data = _read_file(recipe)
    data = prepare_config(data, pretrained=recipe.pretrained)
    if recipe.input_size is not None:
        data = with_input_size(data, recipe.input_size)
    if recipe.proposals is not None:
        data = with_test_proposals(data, recipe.proposals)
    if recipe.rescue_threshold is not None:
        data = with_test_score_floor(data, min(recipe.rescue_threshold, recipe.score_threshold))
    return Config(data)


def with_test_score_floor(cfg: Mapping[str, Any], floor: float) -> dict[str, Any]:
    """``cfg`` whose detector keeps boxes scoring at least ``floor`` at test time
    (``test_cfg.rcnn.score_thr`` lowered to it, never raised); unchanged for a config without
    one."""
    cfg = _plain(cfg)
    rcnn = (cfg["model"].get("test_cfg") or {}).get("rcnn")
    if isinstance(rcnn, dict) and float(rcnn.get("score_thr", 0.0)) > floor:
        rcnn["score_thr"] = float(floor)
    return cfg


def with_test_proposals(cfg: Mapping[str, Any], n: int) -> dict[str, Any]:
    """``cfg`` keeping ``n`` RPN proposals per image at test time (``test_cfg.rpn.max_per_img``
    of the model, and ``rpn_proposals`` where the config names it)."""
    cfg = _plain(cfg)
    rpn = ((cfg["model"].get("test_cfg") or {}).get("rpn"))
    if not isinstance(rpn, dict):
        raise RecipeError("proposals: the mmdet config's model has no test_cfg.rpn (not a two-stage detector?)")
    rpn["max_per_img"] = int(n)
    if isinstance(cfg.get("rpn_proposals"), (tuple, list)) and len(cfg["rpn_proposals"]) == 2:
        cfg["rpn_proposals"] = (cfg["rpn_proposals"][0], int(n))
    return cfg


def with_input_size(cfg: Mapping[str, Any], size: int) -> dict[str, Any]:
    """``cfg`` with the hand crop resized into ``size`` x ``size``: every ``Resize`` scale and
    fixed ``Pad`` size of its pipelines (and ``image_scale``) replaced."""
    cfg = _plain(cfg)
    scale = (int(size), int(size))

    def resize(d: dict, path: str) -> None:
        if d.get("type") in ("Resize", "mmdet.Resize") and "scale" in d:
            d["scale"] = scale
        if d.get("type") in ("Pad", "mmdet.Pad") and d.get("size") is not None:
            d["size"] = scale

    _walk(cfg, resize)
    if "image_scale" in cfg:
        cfg["image_scale"] = scale
    return cfg


def prepare_config(cfg: Mapping[str, Any], *, pretrained: bool = False) -> dict[str, Any]:
    """A copy of ``cfg`` set up for the 13 ROIs (plain dicts in, plain dicts out).

    - ``metainfo.classes`` (top level and in every dataset) = ``ROI_KEYS``; a config naming
      other classes is an error;
    - every ``num_classes`` under ``model`` except the RPN's = 13;
    - ``pretrained=False``: ``init_cfg`` of type ``Pretrained`` and ``pretrained`` strings are
      removed (nothing is downloaded), and backbones that would freeze stages or BatchNorm
      statistics train them instead (random weights are not worth freezing).
    """
    cfg = _plain(cfg)
    if "model" not in cfg:
        raise RecipeError("the mmdet config has no 'model'")
    named = (cfg.get("metainfo") or {}).get("classes")
    if named is not None and tuple(named) != ROI_KEYS:
        raise RecipeError(
            f"mmdet config classes {tuple(named)} differ from the 13 ROI keys {ROI_KEYS} "
            "(same names, same order); fix 'metainfo' in the config")
    cfg["metainfo"] = {"classes": ROI_KEYS}
    cfg["num_classes"] = len(ROI_KEYS)

    def classes(d: dict, path: str) -> None:
        if d.get("type") in ("CocoDataset", "mmdet.CocoDataset") or "ann_file" in d and "pipeline" in d:
            d["metainfo"] = {"classes": ROI_KEYS}

    def heads(d: dict, path: str) -> None:
        if "num_classes" in d and "rpn_head" not in path:
            d["num_classes"] = len(ROI_KEYS)

    def offline(d: dict, path: str) -> None:
        init = d.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            d["init_cfg"] = None
            _train_from_scratch(d)
        if isinstance(d.get("pretrained"), str):
            d["pretrained"] = None
            _train_from_scratch(d)

    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if key in cfg:
            _walk(cfg[key], classes)
    _walk(cfg["model"], heads)
    if not pretrained:
        _walk(cfg["model"], offline)
    cfg["load_from"] = None
    cfg["resume"] = False
    return cfg


def _train_from_scratch(backbone: dict) -> None:
    if "frozen_stages" in backbone:
        backbone["frozen_stages"] = -1
    if "norm_eval" in backbone:
        backbone["norm_eval"] = False


def _plain(cfg: Any) -> Any:
    """Deep copy with mmengine ``ConfigDict`` turned into ``dict``."""
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_plain(v) for v in cfg]
    if isinstance(cfg, tuple):
        return tuple(_plain(v) for v in cfg)
    return copy.deepcopy(cfg)


def resolved_recipe(recipe: DetectRecipe, cfg: Config | Mapping[str, Any]) -> DetectRecipe:
    """``recipe`` carrying ``cfg`` as data (what a weights folder stores)."""
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return recipe.model_copy(update={"mmdet_config": encode_config(data)})


# --------------------------------------------------------------------------------------------
def register_mmdet() -> None:
    """Register mmdet's modules and precise-baa's transforms (``RadiographAugment``, in mmdet's
    ``TRANSFORMS``) and make ``mmdet`` the default scope (idempotent). Called before any
    detector config is built, trained or run, so stored configs naming them always resolve."""
    from mmdet.registry import TRANSFORMS
    from mmdet.utils import register_all_modules

    from .transforms import RadiographAugment

    register_all_modules(init_default_scope=True)
    TRANSFORMS.register_module(name="RadiographAugment", module=RadiographAugment, force=True)


@contextlib.contextmanager
def quiet_mmengine(level: int = logging.WARNING) -> Iterator[None]:
    """Silence mmengine's INFO chatter (per-parameter init reports) inside the block."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def build_model(cfg: Config, *, init_weights: bool = True) -> torch.nn.Module:
    """Build ``cfg.model``; ``init_weights`` runs mmdet's initialisation (random or, when the
    config still names them, pretrained backbone weights)."""
    from mmdet.registry import MODELS

    register_mmdet()
    try:
        model = MODELS.build(cfg.model)
    except Exception as e:
        raise RecipeError(f"cannot build the detector from the mmdet config: {type(e).__name__}: {e}") from None
    if init_weights:
        with quiet_mmengine():
            model.init_weights()
    return model


def input_channels(cfg: Config) -> int:
    """Channels the model expects: the length of the data preprocessor's ``mean`` (default 3)."""
    mean = (cfg.model.get("data_preprocessor") or {}).get("mean")
    return len(mean) if mean is not None else 3


def inference_pipeline(cfg: Config):
    """The config's test pipeline for in-memory images (``LoadImageFromNDArray``, no labels)."""
    from mmcv.transforms import Compose

    register_mmdet()
    steps = cfg.get("test_pipeline") or cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline")
    if not steps:
        raise RecipeError("the mmdet config has no test_pipeline")
    steps = [dict(s) for s in steps if "Annotations" not in s["type"]]
    if "LoadImage" not in steps[0]["type"]:
        raise RecipeError("the mmdet test_pipeline must start with an image-loading step")
    steps[0] = {"type": "mmdet.LoadImageFromNDArray"}
    return Compose(fixed_canvas(steps))


def fixed_canvas(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``steps`` ending every image on one canvas, so its result never depends on the other
    images of its batch (a batch is padded to its largest image, and DetectoRS pools globally):
    a keep-ratio ``Resize`` without a fixed-size ``Pad`` gets one after it, zeros to the square
    of its longest side. Configs from ``stages/detect/_base_`` pad already; this covers weights
    whose stored config predates that."""
    kinds = [str(s.get("type", "")).removeprefix("mmdet.") for s in steps]
    if any(k == "Pad" and s.get("size") is not None for k, s in zip(kinds, steps)):
        return steps
    for i, (k, s) in enumerate(zip(kinds, steps)):
        scale = s.get("scale")
        if k == "Resize" and s.get("keep_ratio") and scale:
            side = int(max(scale)) if isinstance(scale, (tuple, list)) else int(scale)
            pad = {"type": "mmdet.Pad", "size": (side, side), "pad_val": {"img": 0}}
            return [*steps[:i + 1], pad, *steps[i + 1:]]
    return steps


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
