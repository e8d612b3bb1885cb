"""Training a detector on a COCO manifest (``precise-baa train detect``), with mmengine's Runner.

1. Every radiograph becomes what the detector sees at inference: the hand crop of its
   ground-truth mask with the boxes moved into it (:func:`precise_baa.data.prepared_example`).
   The crops are written as 8-bit PNGs with COCO manifests (train / val) into a temporary
   folder, the form mmdet's ``CocoDataset`` reads.
2. The recipe's mmdet config gets the data paths, epochs, batch size and seed; its schedulers
   are stretched to the new epoch count. The config's pipeline supplies the augmentation.
3. ``Runner.train()`` runs; after every validation (mmdet's ``CocoMetric``, bbox mAP) a hook
   writes the best model so far as a weights folder (safetensors + the recipe carrying the
   config as data + a card) to ``out_dir``, the last one to ``out_dir/last``, and the epoch
   history to ``out_dir/history.json``. No pickled checkpoint is written; mmengine's logs and
   the config it ran go to ``out_dir/logs``.

Under torchrun (``WORLD_SIZE > 1``) the Runner runs with mmengine's ``pytorch`` launcher: the
process group is joined first (:func:`precise_baa.training.setup_distributed`: gloo on CPU,
nccl on GPU), each process trains on its share of every batch (mmengine's distributed
sampler; the config's batch size is per process), validation is gathered across processes,
and process 0 writes the weights and history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageRecord, load_coco, read_mask, split_records
from ..errors import InputError
from ..paths import display_path
from ..rois import ROI_KEYS
from ..training import (
    DistInfo,
    FitResult,
    dist_info,
    finish_distributed,
    launched_distributed,
    run_on_main,
    setup_distributed,
)
from ..weights import PHANTOM_NOTICE, save_weights
from .config import load_config, register_mmdet, resolved_recipe
from .recipe import DetectRecipe

log = logging.getLogger(__name__)

INTENDED_USE = ("Stage 2 of precise-baa: one box per RUS ROI (13) on the segmenter's hand crop "
                "of a hand radiograph. Research use; not a medical device.")
METRIC = "coco/bbox_mAP"


# --------------------------------------------------------------------------------------------
# Data
def write_coco_split(records: Sequence[ImageRecord], root: Path, name: str) -> Path:
    """Write prepared hand crops to ``root/images`` and their boxes to ``root/NAME.json``.

    Boxes are clipped to the crop; a box that lies outside it is dropped (and logged).
    """
    from ..data import prepared_example
    from ..imaging import save_png

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for rec in records:
        crop, boxes, _ = prepared_example(rec)
        h, w = crop.shape
        file_name = f"{rec.id:08d}.png"
        save_png(root / "images" / file_name, crop, bits=8)
        images.append({"id": rec.id, "file_name": file_name, "width": w, "height": h})
        for c, key in enumerate(ROI_KEYS, 1):
            box = boxes.get(key)
            if box is None:
                continue
            x0, y0 = min(max(box.x0, 0.0), w), min(max(box.y0, 0.0), h)
            x1, y1 = min(max(box.x1, 0.0), w), min(max(box.y1, 0.0), h)
            if x1 - x0 < 1 or y1 - y0 < 1:
                log.warning("%s: %s box lies outside the hand crop; left out", rec.path, key)
                continue
            anns.append({"id": len(anns) + 1, "image_id": rec.id, "category_id": c,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                         "iscrowd": 0})
    path = root / f"{name}.json"
    path.write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": i, "name": k} for i, k in enumerate(ROI_KEYS, 1)],
    }))
    return path


# --------------------------------------------------------------------------------------------
# Config
def _stretch_schedule(cfg: Any, epochs: int, iters_per_epoch: int) -> None:
    """Fit the config's schedulers to ``epochs`` (epoch-based bounds and milestones scale with
    the epoch count; an iteration warm-up is capped at a quarter of the run)."""
    old = int(cfg.train_cfg.get("max_epochs", epochs))
    cfg.train_cfg["max_epochs"] = epochs
    total_iters = max(1, epochs * iters_per_epoch)
    schedulers = cfg.get("param_scheduler") or []
    if isinstance(schedulers, Mapping):
        schedulers = [schedulers]
    for s in schedulers:
        if s.get("by_epoch", True):
            for key in ("begin", "end", "T_max"):
                if key in s and s[key] is not None:
                    s[key] = min(epochs, max(0 if key == "begin" else 1,
                                             round(s[key] * epochs / max(old, 1))))
            if "milestones" in s:
                s["milestones"] = sorted({max(1, round(m * epochs / max(old, 1)))
                                          for m in s["milestones"]})
        elif "end" in s and s["end"] is not None:
            s["end"] = max(1, min(int(s["end"]), total_iters // 4))


def _set_dataset(loader: Any, root: Path, ann: str) -> None:
    ds = loader["dataset"]
    ds.update(data_root=str(root), ann_file=ann, data_prefix={"img": "images/"},
              metainfo={"classes": ROI_KEYS})


def _configure(cfg: Any, root: Path, work_dir: Path, *, has_val: bool, epochs: int,
               batch_size: int | None, workers: int | None, n_train: int, seed: int,
               distributed: DistInfo | None = None) -> None:
    cfg.work_dir = str(work_dir)
    cfg.randomness = {"seed": seed}
    cfg.launcher = "none"
    if distributed is not None:  # the process group is already joined; mmengine wraps the model
        cfg.launcher = "pytorch"
        cfg.env_cfg = {**dict(cfg.get("env_cfg") or {}),
                       "dist_cfg": {"backend": distributed.backend}}
        if distributed.backend == "gloo":  # CPU: DistributedDataParallel takes no device ids
            cfg.model_wrapper_cfg = {
                "type": "MMDistributedDataParallel", "device_ids": None,
                "broadcast_buffers": False,
                "find_unused_parameters": bool(cfg.get("find_unused_parameters", False))}
    loaders = ["train_dataloader"] + (["val_dataloader"] if has_val else [])
    for name in loaders:
        loader = cfg[name]
        _set_dataset(loader, root, "train.json" if name == "train_dataloader" else "val.json")
        if workers is not None:
            loader["num_workers"] = workers
        if loader.get("num_workers", 0) == 0:
            loader["persistent_workers"] = False
    if batch_size is not None:
        cfg.train_dataloader["batch_size"] = batch_size
    bs = int(cfg.train_dataloader.get("batch_size", 1))
    processes = distributed.world_size if distributed is not None else 1
    iters = max(1, math.ceil(n_train / (bs * processes)))  # per process
    _stretch_schedule(cfg, epochs, iters)
    if has_val:
        cfg.val_evaluator = {**dict(cfg.get("val_evaluator") or {"type": "CocoMetric"}),
                             "ann_file": str(root / "val.json"), "metric": "bbox", "classwise": True}
        cfg.train_cfg["val_interval"] = 1
    else:
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    hooks = dict(cfg.get("default_hooks") or {})
    hooks["checkpoint"] = None  # no pickled checkpoints; ExportWeights writes safetensors
    if hooks.get("logger"):
        hooks["logger"] = {**hooks["logger"], "interval": max(1, min(
            int(hooks["logger"].get("interval", 50)), iters))}
    cfg.default_hooks = hooks


# --------------------------------------------------------------------------------------------
def _export_hook(out_dir: Path, recipe: DetectRecipe, card: dict[str, Any], has_val: bool):
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    class ExportWeights(Hook):
        """Best model (by val bbox mAP) -> ``out_dir``; last -> ``out_dir/last``; history."""

        priority = "LOW"

        def __init__(self) -> None:
            self.best, self.best_epoch = -math.inf, 0
            self.history: list[dict[str, Any]] = []
            self.losses: list[float] = []
            self.t0 = time.time()

        @staticmethod
        def _state(runner) -> dict[str, Any]:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            return model.state_dict()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            loss = (outputs or {}).get("loss")
            if loss is not None:
                self.losses.append(float(loss.detach() if hasattr(loss, "detach") else loss))

        def after_train_epoch(self, runner) -> None:
            epoch = runner.epoch + 1  # mmengine counts the running epoch from 0
            self.history.append({"epoch": epoch,
                                 "train_loss": float(np.mean(self.losses)) if self.losses else None,
                                 "seconds": round(time.time() - self.t0, 1)})
            self.losses = []
            if not has_val:  # nothing to choose by: the latest epoch is the best known
                self._save(runner, out_dir, {"epoch": epoch})
                self.best_epoch = epoch
            self._save(runner, out_dir / "last", {"epoch": epoch})
            self._write_history(runner)

        def after_val_epoch(self, runner, metrics=None) -> None:
            metrics = {k: float(v) for k, v in (metrics or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            row = self.history[-1] if self.history else {"epoch": runner.epoch}  # 1-based here
            row.update({k: v for k, v in metrics.items() if "precision" not in k})
            row["per_roi_ap"] = {k.split("/", 1)[1].removesuffix("_precision"): v
                                 for k, v in metrics.items() if k.endswith("_precision")}
            value = metrics.get(METRIC, -1.0)
            if value > self.best:
                self.best, self.best_epoch = value, row["epoch"]
                self._save(runner, out_dir, row)
            self._write_history(runner)

        def _write_history(self, runner) -> None:
            if runner.rank == 0:  # under torchrun, process 0 writes
                (out_dir / "history.json").write_text(json.dumps(self.history, indent=2) + "\n")

        def _save(self, runner, where: Path, metrics: dict[str, Any]) -> None:
            if runner.rank == 0:
                save_weights(where, self._state(runner), recipe,
                             card={**card, "metrics": metrics, "history": self.history})

    return ExportWeights()


def train_detector(
    recipe: str | Path | Mapping[str, Any] | DetectRecipe,
    coco: str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    val_fraction: float = 0.15,
    device: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    pretrained: bool | None = None,
    phantom: bool | None = None,
    init_weights: str | Path | None = None,
    extra_train: Sequence[ImageRecord] = (),
    card_extra: Mapping[str, Any] | None = None,
    trust: bool = False,
) -> FitResult:
    """Train the recipe's mmdet detector on a COCO manifest; the best weights go to ``out_dir``.

    ``epochs`` / ``batch_size`` / ``workers`` default to the config's. ``pretrained``
    overrides the recipe's (ImageNet backbone, a download). ``phantom`` marks the card
    phantom-trained (default: from the manifest's images, ``"phantom": true``). Returns the
    best validation bbox mAP (COCO, IoU 0.5:0.95) and its epoch; with ``val_fraction=0`` the
    last epoch is kept and the metric is NaN. ``init_weights``: a weights folder of the same
    recipe to start from. ``extra_train``: more records (e.g. pseudo-labelled) that join the
    training split only; validation stays on the manifest's labels. ``card_extra`` is added to
    the weights card. ``trust``: run a ``.py`` config from outside ``stages/`` (it is code).
    """
    from ..registry import parse_recipe, read_recipe, trusted_recipes

    if isinstance(recipe, (str, Path)):
        recipe = read_recipe("detect", recipe)
    elif isinstance(recipe, Mapping):
        recipe = parse_recipe("detect", dict(recipe))
    assert isinstance(recipe, DetectRecipe)
    if pretrained is not None:
        recipe = recipe.model_copy(update={"pretrained": pretrained})
    _check_device(device)
    if launched_distributed():  # torchrun: join the group before mmengine looks for it
        import torch

        setup_distributed("cuda" if torch.cuda.is_available() else "cpu")
    distributed = dist_info()
    manifest = load_coco(coco, images_dir)
    usable = [r for r in manifest.records if r.boxes]
    if len(usable) < len(manifest.records):
        log.warning("%d of %d images have no boxes; left out",
                    len(manifest.records) - len(usable), len(manifest.records))
    if not usable:
        raise InputError(f"{coco}: no image has ROI boxes to train a detector on")
    train_recs, val_recs = split_records(usable, val_fraction, seed)
    if extra_train:
        first = max(r.id for r in manifest.records) + 1  # image ids must stay unique
        train_recs = train_recs + [dataclasses.replace(r, id=first + i)
                                   for i, r in enumerate(extra_train)]
    has_val = bool(val_recs)
    with trusted_recipes(trust):
        cfg = load_config(recipe)
    stored = resolved_recipe(recipe, cfg)  # before data paths: the weights carry the model only
    epochs = int(epochs or cfg.train_cfg.get("max_epochs", 12))
    if phantom is None:
        phantom = any(bool(r.extra.get("phantom")) for r in manifest.records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {
        "intended_use": INTENDED_USE,
        "phantom_trained": bool(phantom),
        **({"notice": PHANTOM_NOTICE} if phantom else {}),
        "training_data": {"manifest": display_path(coco), "images": len(manifest.records),
                          "train": len(train_recs), "val": len(val_recs), "seed": seed},
        "training": {"epochs": epochs, "batch_size": batch_size or cfg.train_dataloader.get("batch_size"),
                     "pretrained": recipe.pretrained, "device": device or "auto"},
        "metric": f"{METRIC}: COCO bbox mAP (IoU 0.5:0.95) on the validation split",
        **({"distributed": {"world_size": distributed.world_size, "backend": distributed.backend}}
           if distributed is not None else {}),
        **({"init_weights": display_path(init_weights)} if init_weights is not None else {}),
        **dict(card_extra or {}),
    }
    from mmengine.runner import Runner

    from .config import quiet_mmengine
    from .model import input_card

    card.update(input_card(cfg))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".detect-data-", dir=out_dir) as tmp:
        root = Path(tmp)
        write_coco_split(train_recs, root, "train")
        if has_val:
            write_coco_split(val_recs, root, "val")
        _configure(cfg, root, out_dir / "logs", has_val=has_val, epochs=epochs,
                   batch_size=batch_size, workers=workers, n_train=len(train_recs), seed=seed,
                   distributed=distributed)
        register_mmdet()
        runner = Runner.from_cfg(cfg)
        from mmengine.model import is_model_wrapper

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        with quiet_mmengine():  # initialise here, without a report line per parameter
            model.init_weights()
        if init_weights is not None:
            from ..weights import load_into, load_weights

            load_into(model, load_weights(init_weights))
        hook = _export_hook(out_dir, stored, card, has_val)
        runner.register_hook(hook)
        runner.train()
        finish_distributed()
    best = hook.best if has_val else math.nan
    return FitResult(out_dir, best, hook.best_epoch, hook.history, time.time() - t0)


def _check_device(device: str | None) -> None:
    """mmengine puts the model on CUDA whenever it is visible; say how to choose otherwise."""
    import torch

    cuda = torch.cuda.is_available()
    if device in (None, "auto"):
        return
    if device == "cpu" and cuda:
        raise InputError("mmengine trains on the GPU whenever one is visible; to train on the CPU "
                         "run with CUDA_VISIBLE_DEVICES= (empty)")
    if device.startswith("cuda"):
        if not cuda:
            raise InputError(f"device {device!r} requested but no CUDA device is available")
        if device not in ("cuda", "cuda:0"):
            raise InputError(f"to train on {device}, run with CUDA_VISIBLE_DEVICES="
                             f"{device.split(':', 1)[1]} and --device cuda")
    elif device != "cpu":
        raise InputError(f"unknown device {device!r}; use cpu or cuda")


# --------------------------------------------------------------------------------------------
# Self-training on unlabelled radiographs
@dataclass
class SelfTrainResult:
    """Weights folders of a self-training run and what each round pseudo-labelled."""

    teacher: Path
    students: list[Path]
    rounds: list[dict[str, Any]]

    @property
    def final(self) -> Path:
        return self.students[-1]


def pseudo_label(
    detector_weights: str | Path,
    unlabelled: str | Path,
    out_dir: str | Path,
    *,
    segment: str | Path | None = None,
    threshold: float = 0.7,
    device: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Box the radiographs under ``unlabelled`` with a trained detector; keep an image only when
    all 13 boxes survive the anatomy checks and every box scores at least ``threshold``.

    Palm masks come from the segmenter ``segment`` (the bundled one by default). Writes
    ``out_dir/annotations.json`` (the project's COCO manifest, boxes with their ``score``,
    ``file_name`` relative to ``unlabelled``, ``mask_file`` to ``out_dir/masks/``) and returns
    it with the counts.
    """
    from ..labels.predicted import list_images, predict_masks_and_boxes

    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"pseudo-label threshold {threshold} must be in [0, 1]")
    unlabelled, out_dir = Path(unlabelled), Path(out_dir)
    paths = list_images(unlabelled)
    preds = predict_masks_and_boxes(paths, out_dir, detect=detector_weights, segment=segment,
                                    device=device, progress=progress)
    images, anns = [], []
    counts = {"unlabelled": len(paths), "kept": 0, "no_hand": 0, "missing_or_implausible": 0,
              "low_score": 0}
    for path, p in zip(paths, preds, strict=True):
        if p.mask is None:
            counts["no_hand"] += 1
        elif not p.complete:
            counts["missing_or_implausible"] += 1
        elif p.min_score() < threshold:
            counts["low_score"] += 1
        else:
            counts["kept"] += 1
            iid = len(images) + 1
            h, w = read_mask(p.mask).shape
            images.append({"id": iid, "file_name": path.relative_to(unlabelled).as_posix(),
                           "width": w, "height": h, "mask_file": p.mask.relative_to(out_dir).as_posix(),
                           "pseudo_label": True})
            for c, key in enumerate(ROI_KEYS, 1):
                b = p.boxes[key]
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c,
                             "bbox": [b.x0, b.y0, b.width, b.height], "area": b.width * b.height,
                             "iscrowd": 0, "score": round(p.scores[key], 4)})
    manifest = out_dir / "annotations.json"
    manifest.write_text(json.dumps({
        "info": {"description": "pseudo-labels: boxes of a trained detector",
                 "detector": display_path(detector_weights), "threshold": threshold, **counts},
        "images": images, "annotations": anns,
        "categories": [{"id": i, "name": k} for i, k in enumerate(ROI_KEYS, 1)]}, indent=1))
    log.info("pseudo-labels: kept %(kept)d of %(unlabelled)d (no hand %(no_hand)d, missing or "
             "implausible ROI %(missing_or_implausible)d, a score below the bar %(low_score)d)",
             counts)
    return manifest, counts


def self_train_detector(
    recipe: str | Path | Mapping[str, Any] | DetectRecipe,
    coco: str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    *,
    unlabelled: str | Path,
    init_weights: str | Path | None = None,
    segment: str | Path | None = None,
    threshold: float = 0.7,
    rounds: int = 1,
    teacher_epochs: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    val_fraction: float = 0.15,
    device: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    pretrained: bool | None = None,
    phantom: bool | None = None,
    progress: bool = True,
) -> SelfTrainResult:
    """Teacher-student self-training: adapt a detector to unlabelled radiographs.

    The teacher is ``init_weights`` or, without it, a detector trained first on the labelled
    manifest (``out_dir/teacher``, ``teacher_epochs``). Each round the teacher pseudo-labels
    ``unlabelled`` (:func:`pseudo_label`; manifest in ``out_dir/pseudo-labels/round-N``) and
    a student starts from the teacher's weights and trains on the labelled training split plus
    the pseudo-labelled images (validation on labelled images only); the student teaches the
    next round. The last student is written to ``out_dir`` (earlier ones to
    ``out_dir/round-N``).
    """
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}")
    out_dir = Path(out_dir)
    common = dict(batch_size=batch_size, val_fraction=val_fraction, device=device, seed=seed,
                  workers=workers, pretrained=pretrained, phantom=phantom)
    if init_weights is None:
        teacher = out_dir / "teacher"
        train_detector(recipe, coco, images_dir, teacher, epochs=teacher_epochs, **common)
    else:
        teacher = Path(init_weights)
    first_teacher, students, summary = teacher, [], []
    for r in range(1, rounds + 1):
        if launched_distributed():  # torchrun: process 0 pseudo-labels, the others wait for it
            import torch

            setup_distributed("cuda" if torch.cuda.is_available() else "cpu")
        manifest, counts = run_on_main(lambda t=teacher, r=r: pseudo_label(
            t, unlabelled, out_dir / "pseudo-labels" / f"round-{r}", segment=segment,
            threshold=threshold, device=device, progress=progress))
        if not counts["kept"]:
            raise InputError(f"{unlabelled}: no radiograph got 13 plausible boxes scoring >= "
                             f"{threshold} from {teacher}; lower --pseudo-threshold or train the "
                             "teacher longer")
        extra = load_coco(manifest, unlabelled).records
        student = out_dir if r == rounds else out_dir / f"round-{r}"
        info = {"self_training": {"round": r, "teacher": display_path(teacher),
                                  "unlabelled_dir": display_path(unlabelled),
                                  "pseudo_labels": display_path(manifest), "threshold": threshold,
                                  **counts}}
        train_detector(recipe, coco, images_dir, student, epochs=epochs, init_weights=teacher,
                       extra_train=extra, card_extra=info, **common)
        students.append(student)
        summary.append({"round": r, **counts})
        teacher = student
    return SelfTrainResult(first_teacher, students, summary)
