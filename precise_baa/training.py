"""The one training loop shared by the torch-native stages (segment, grade).

Detection trains through mmengine's Runner (see :mod:`precise_baa.detect.train`); everything
else calls :func:`fit`: AdamW + cosine schedule, a tqdm progress bar, validation every epoch,
the best checkpoint (by a validation metric) written as a weights folder, the last one kept
too, and ``history.json`` updated after every epoch so an interrupted run loses nothing.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def pick_device(device: str | None = None) -> str:
    """``device`` if given (checked: a device torch knows and this machine has), else ``cuda``
    when available, else ``cpu``. A bad device is an :class:`~precise_baa.errors.InputError`."""
    import torch

    from .errors import InputError

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but no CUDA device is available here; "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) are visible (cuda:0 ...)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r} requested but MPS is not available here")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def with_training_overrides(recipe, **overrides):
    """``recipe`` with the non-None ``overrides`` applied to its ``training`` block, re-validated
    (so a bad value from the command line fails with the field's name)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return recipe
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update=changes)})
    return type(recipe).model_validate(recipe.model_dump())


@dataclass
class Loaders:
    """Train/validation datasets and loaders of one training run (see :func:`make_loaders`)."""

    train_items: list
    val_items: list  # empty when validation falls back to the training set
    train_ds: Any
    val_ds: Any
    train: Any  # DataLoader
    val: Any  # DataLoader


def make_loaders(
    items: list,
    make_dataset: Callable[[list, bool], Any],
    *,
    val_fraction: float,
    seed: int,
    batch_size: int,
    val_batch_size: int,
    workers: int,
    device: str,
    cache: bool,
) -> Loaders:
    """Split ``items`` by image, build the datasets and their loaders.

    ``make_dataset(items, train)`` returns a dataset with ``as_eval()`` (same items, no
    augmentation) and ``preload()`` (fill its cache). With no validation images, validation
    runs on the training images (a warning says so).
    """
    import logging

    import torch
    from torch.utils.data import DataLoader

    from .data import split_records

    train_items, val_items = split_records(items, val_fraction, seed)
    train_ds = make_dataset(train_items, True)
    if val_items:
        val_ds = make_dataset(val_items, False)
    else:
        logging.getLogger(__name__).warning(
            "no validation images (val_fraction %s): validating on the training set", val_fraction)
        val_ds = train_ds.as_eval()
    if cache:  # read every image once, before DataLoader workers fork and share the cache
        train_ds.preload()
        val_ds.preload()
    common = dict(num_workers=workers, pin_memory=device.startswith("cuda"))
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed),
                       drop_last=len(train_ds) > batch_size, **common)
    val = DataLoader(val_ds, batch_size=val_batch_size, shuffle=False, **common)
    return Loaders(train_items, val_items, train_ds, val_ds, train, val)


@dataclass
class FitResult:
    out_dir: Path
    best_metric: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model,
    train_batches: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[Any, Any], Any],
    validate: Callable[[Any], dict[str, float]],
    *,
    metric: str,
    out_dir: str | Path,
    recipe: Any,
    card: dict[str, Any] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str = "cpu",
    steps_per_epoch: int | None = None,
    higher_is_better: bool = True,
    progress: bool = True,
    grad_clip: float | None = 5.0,
) -> FitResult:
    """Train ``model``; write the best weights folder to ``out_dir``, the last to ``out_dir/last``.

    ``train_batches(epoch)`` yields batches; ``loss_fn(model, batch)`` returns a scalar tensor;
    ``validate(model)`` returns metrics including ``metric``.
    """
    import torch
    from tqdm.auto import tqdm

    from .weights import save_weights

    out_dir = Path(out_dir)
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    total = max(1, epochs * (steps_per_epoch or 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)) * 0.98 + 0.02
    )
    history: list[dict[str, Any]] = []
    best, best_epoch = (-math.inf if higher_is_better else math.inf), -1
    t0 = time.time()
    card = dict(card or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(epochs):
        model.train()
        losses = []
        bar = tqdm(train_batches(epoch), total=steps_per_epoch, disable=not progress,
                   desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
        for batch in bar:
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        model.eval()
        with torch.inference_mode():
            metrics = {k: float(v) for k, v in validate(model).items()}
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
               "seconds": round(time.time() - t0, 1), **metrics}
        history.append(row)
        value = metrics[metric]
        improved = value > best if higher_is_better else value < best
        state = model.state_dict()
        if improved:
            best, best_epoch = value, epoch + 1
            save_weights(out_dir, state, recipe, card={
                **card, "metrics": {**metrics, "epoch": epoch + 1}, "history": history})
        save_weights(out_dir / "last", state, recipe, card={
            **card, "metrics": {**metrics, "epoch": epoch + 1}})
        (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        if progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}, {shown}"
                       f"{'  (best)' if improved else ''}")
    return FitResult(out_dir, best, best_epoch, history, time.time() - t0)
