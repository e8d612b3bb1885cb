"""The one training loop shared by the torch-native stages (segment, grade).

Detection trains through mmengine's Runner (see :mod:`precise_baa.detect.train`); everything
else calls :func:`fit`: AdamW + cosine schedule, a tqdm progress bar, validation every epoch,
the best checkpoint (by a validation metric) written as a weights folder, the last one kept
too, and ``history.json`` updated after every epoch so an interrupted run loses nothing.

Distributed data parallel: started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
in the environment, ``WORLD_SIZE > 1``), :func:`setup_distributed` joins the process group
(gloo on CPU, nccl on GPU, one GPU per process), :func:`make_loaders` gives each process its
share of the training images (a ``DistributedSampler``, reshuffled every epoch), and
:func:`fit` wraps the model in ``DistributedDataParallel``; process 0 validates (on the whole
validation split, so the metric is the single-process one), shows progress and writes the
weights, ``history.json`` and logs. The recipe's ``batch_size`` is per process. Started
without torchrun, nothing of this is used.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


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


# ------------------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


_OWN_GROUP = False  # whether setup_distributed started the process group (and ends it)


def launched_distributed() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE > 1``) started this process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup_distributed(device: str) -> str:
    """Under torchrun, join the process group (once) and return this process's device:
    ``cuda:LOCAL_RANK`` when ``device`` is a CUDA device (backend nccl), else ``device``
    (backend gloo). Without torchrun, ``device`` unchanged."""
    global _OWN_GROUP
    if not launched_distributed():
        return device
    import torch
    import torch.distributed as dist

    from .errors import InputError

    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not "
                         "set: start distributed training with torchrun (see the README)")
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible: start at most that many processes per node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=60))  # rank 0 validates alone
        _OWN_GROUP = True
    return device


def dist_info() -> DistInfo | None:
    """This process's rank and the job's size when a process group of more than one process
    is running, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", "0")), str(dist.get_backend()))


def finish_distributed() -> None:
    """Wait for every process, then end the process group if :func:`setup_distributed`
    started it."""
    global _OWN_GROUP
    if dist_info() is None:
        return
    import torch.distributed as dist

    dist.barrier()
    if _OWN_GROUP:
        dist.destroy_process_group()
        _OWN_GROUP = False


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` in process 0 only; every process returns its result (or raises its error).
    Without a process group, simply ``fn()``. For work that writes files (a label cache)."""
    info = dist_info()
    if info is None:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if info.main:
        try:
            box[0] = (True, fn())
        except Exception as e:  # noqa: BLE001 - raised again in every process below
            box[0] = (False, e)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


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
    sampler: Any = None  # the DistributedSampler of ``train`` under torchrun

    def batches(self, epoch: int) -> Iterator[Any]:
        """The training batches of ``epoch`` (0-based): the dataset's augmentation and the
        distributed sampler's shuffle both follow the epoch."""
        if hasattr(self.train_ds, "epoch"):
            self.train_ds.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return iter(self.train)


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
    runs on the training images (a warning says so). Under torchrun each process iterates
    its share of the training images (:attr:`Loaders.sampler`; ``batch_size`` per process);
    the validation loader covers the whole split (process 0 validates).
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
    info = dist_info()
    if cache:  # read every image once, before DataLoader workers fork and share the cache
        train_ds.preload()
        if info is None or info.main:  # only process 0 validates
            val_ds.preload()
    common = dict(num_workers=workers, pin_memory=device.startswith("cuda"))
    sampler = None
    if info is None:
        train = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(seed),
                           drop_last=len(train_ds) > batch_size, **common)
    else:  # every process the same number of batches (the sampler pads with repeats)
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                     shuffle=True, seed=seed)
        train = DataLoader(train_ds, batch_size=batch_size, sampler=sampler,
                           drop_last=len(sampler) > batch_size, **common)
    val = DataLoader(val_ds, batch_size=val_batch_size, shuffle=False, **common)
    return Loaders(train_items, val_items, train_ds, val_ds, train, val, sampler)


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
    select_window: int = 1,
) -> FitResult:
    """Train ``model``; write the best weights folder to ``out_dir``, the last to ``out_dir/last``.

    ``train_batches(epoch)`` yields batches; ``loss_fn(model, batch)`` returns a scalar tensor;
    ``validate(model)`` returns metrics including ``metric``. ``select_window``: the best epoch
    is the one whose ``metric``, averaged over it and the ``select_window - 1`` epochs before
    it, is best (a noisy validation metric then cannot pick one lucky epoch); 1: its own value.
    The first ``select_window - 1`` epochs average the fewer epochs there are. ``best_metric``
    is that average, not the best epoch's own value (``history`` has both).

    Under torchrun (see the module docstring) ``loss_fn`` gets the ``DistributedDataParallel``
    wrapper, ``validate`` the model itself, on process 0 only; every process returns the same
    result (the metrics are sent to all), ``train_loss`` is the mean over all processes, and
    only process 0 writes. The process group is ended at the end.
    """
    import torch
    from tqdm.auto import tqdm

    from .weights import save_weights

    out_dir = Path(out_dir)
    model.to(device)
    info = dist_info()
    main = info is None or info.main
    progress = progress and main
    net = model
    if info is not None:
        from torch.nn.parallel import DistributedDataParallel

        # parts of a network may get no gradient (encoder stages a shallow U-Net leaves out,
        # a head without labels in a batch): let DDP look for them each step
        net = DistributedDataParallel(model, device_ids=[torch.device(device).index]
                                      if device.startswith("cuda") else None,
                                      find_unused_parameters=True)
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
    if info is not None:
        card["distributed"] = {"world_size": info.world_size, "backend": info.backend}
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(epochs):
        net.train()
        losses = []
        bar = tqdm(train_batches(epoch), total=steps_per_epoch, disable=not progress,
                   desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
        for batch in bar:
            loss = loss_fn(net, batch)
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
        train_loss = _mean_over_processes(losses, info)
        metrics: dict[str, float] = {}
        if main:
            model.eval()
            with torch.inference_mode():
                metrics = {k: float(v) for k, v in validate(model).items()}
        if info is not None:
            import torch.distributed as dist

            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        row = {"epoch": epoch + 1, "train_loss": train_loss,
               "seconds": round(time.time() - t0, 1), **metrics}
        history.append(row)
        recent = [r[metric] for r in history[-max(1, select_window):]]
        value = float(np.mean(recent))
        improved = value > best if higher_is_better else value < best
        if improved:
            best, best_epoch = value, epoch + 1
        if main:
            state = model.state_dict()
            if improved:
                save_weights(out_dir, state, recipe, card={
                    **card, "metrics": {**metrics, "epoch": epoch + 1}, "history": history})
            save_weights(out_dir / "last", state, recipe, card={
                **card, "metrics": {**metrics, "epoch": epoch + 1}})
            (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        if progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}, {shown}"
                       f"{'  (best)' if improved else ''}")
    finish_distributed()
    return FitResult(out_dir, best, best_epoch, history, time.time() - t0)


def _mean_over_processes(losses: list[float], info: DistInfo | None) -> float | None:
    """The mean training loss of the epoch, over every process's batches."""
    if info is None:
        return float(np.mean(losses)) if losses else None
    import torch
    import torch.distributed as dist

    dev = "cuda" if info.backend == "nccl" else "cpu"
    total = torch.tensor([float(np.sum(losses)), float(len(losses))], dtype=torch.float64, device=dev)
    dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None
