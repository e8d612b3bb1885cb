"""Engines: how the pending inputs of a run are decoded and assessed.

One function does the work of a batch, :func:`score_items` (decode with :func:`decode`, then
:func:`assess_decoded`): ``(pipeline, items, metadata) -> [(Assessment, pixels), ...]``, one
result per item, in the items' order, a bad file becoming an ``error`` result. An engine maps
it over the pending inputs and hands the results back batch by batch, in input order; the
scoring loop (:func:`precise_baa.batch.loop.score_folder`) is the one writer of every output.

- ``local`` (:class:`LocalEngine`): this process; ``workers`` DataLoader processes decode
  ahead of the models.
- ``ray`` (:class:`precise_baa.batch.ray_engine.RayEngine`): Ray Data; decoding in tasks and
  each learned stage in its own pool of actors (:func:`run_stage_isolated`, then
  :func:`finish_works`), each actor building the pipeline once from a :class:`PipelineSpec`,
  on one machine or a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ImageReadError, InputError
from ..imaging import Radiograph, read_radiograph
from ..schemas import Assessment
from .discovery import InputItem
from .metadata import Meta

if TYPE_CHECKING:

    from ..pipeline import Pipeline, Work

#: one input's outcome: its Assessment and the radiograph as assessed (None for error rows,
#: or when the engine was told that no pictures are wanted)
Result = tuple[Assessment, "np.ndarray | None"]
Decoded = tuple[InputItem, "Radiograph | None", "str | None"]

ENGINES = ("local", "ray")


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ------------------------------------------------------------------------------ the batch function
def decode(item: InputItem, max_pixels: int | None = None) -> tuple[Radiograph | None, str | None]:
    """``(radiograph, None)``, or ``(None, one-line reason)`` when the file cannot be read."""
    if item.error:
        return None, item.error
    try:
        return read_radiograph(item.path, max_pixels=max_pixels), None
    except ImageReadError as e:
        return None, one_line(e.reason)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        return None, one_line(f"unreadable ({type(e).__name__}: {e})")


def error_result(item: InputItem, message: str) -> Assessment:
    """The ``error`` Assessment of an input that could not be assessed."""
    return Assessment(id=item.id, source=str(item.path), status="error", reason=one_line(message))


def assess_decoded(pipeline: Any, decoded: Sequence[Decoded],
                   metadata: Mapping[str, Meta]) -> list[Result]:
    """Assess a decoded batch: one result per entry, in order (decode failures as error rows).

    ``pipeline`` is anything with :meth:`~precise_baa.pipeline.Pipeline.assess_batch`; if the
    batch fails as a whole, its radiographs are retried one by one to isolate the culprit."""
    out: list[Result | None] = [None] * len(decoded)
    ok: list[tuple[int, InputItem, Radiograph]] = []
    for i, (it, rad, err) in enumerate(decoded):
        if rad is None:
            out[i] = (error_result(it, err or "unreadable"), None)
        else:
            ok.append((i, it, rad))
    for (i, _, _), res in zip(ok, _assess(pipeline, [(it, rad) for _, it, rad in ok], metadata),
                              strict=True):
        out[i] = res
    return out  # type: ignore[return-value]


def internal_error(e: BaseException) -> str:
    return f"internal error: {type(e).__name__}: {e}"


def run_stage_isolated(pipeline: Any, stage: str, works: Sequence[Work]) -> None:
    """``pipeline.run_stage(stage, works)``; if the batch fails, each work alone, so one bad
    radiograph fails alone (its ``failed`` says why; no later stage runs on it), as
    :func:`assess_decoded` does for a whole batch."""
    live = [w for w in works if w.failed is None]
    try:
        pipeline.run_stage(stage, live)
    except Exception as e:  # noqa: BLE001
        if len(live) > 1:
            for w in live:
                run_stage_isolated(pipeline, stage, [w])
        else:
            for w in live:
                w.failed = internal_error(e)


def finish_works(pipeline: Any, rows: Sequence[tuple[InputItem, Work | None, str | None]],
                 pixels: bool = True) -> list[Result]:
    """The results of works that went through the stages (``rows``: item, work or None when
    the file could not be decoded, the decoding error): as :func:`assess_decoded` makes them."""
    out: list[Result] = []
    for item, work, err in rows:
        if work is None:
            out.append((error_result(item, err or "unreadable"), None))
        elif work.failed is not None:
            out.append((error_result(item, work.failed), None))
        else:
            try:
                a = pipeline.finish([work])[0]
            except Exception as e:  # noqa: BLE001
                out.append((error_result(item, internal_error(e)), None))
                continue
            out.append((a, work.rad.pixels if pixels else None))
    return out


def score_items(pipeline: Any, items: Sequence[InputItem], metadata: Mapping[str, Meta],
                max_pixels: int | None = None) -> list[Result]:
    """Decode and assess ``items``: the work of one batch, whatever the engine."""
    return assess_decoded(pipeline, [(it, *decode(it, max_pixels)) for it in items], metadata)


def _assess(pipeline: Any, ok: list[tuple[InputItem, Radiograph]],
            metadata: Mapping[str, Meta]) -> list[Result]:
    from ..pipeline import assessed_pixels

    if not ok:
        return []
    sexes = [metadata[it.id].sex if it.id in metadata else None for it, _ in ok]
    ages = [metadata[it.id].chronological_age if it.id in metadata else None for it, _ in ok]
    ids = [it.id for it, _ in ok]
    rads = [rad for _, rad in ok]
    try:
        out = pipeline.assess_batch(rads, sexes, ages, ids)
        return [(a, assessed_pixels(a, rad.pixels)) for a, rad in zip(out, rads, strict=True)]
    except Exception:  # noqa: BLE001
        if len(ok) == 1:
            it, rad = ok[0]
            try:
                a = pipeline.assess_batch([rad], sexes, ages, ids)[0]
                return [(a, assessed_pixels(a, rad.pixels))]
            except Exception as e:  # noqa: BLE001
                return [(error_result(it, internal_error(e)), None)]
        return [r for pair in ok for r in _assess(pipeline, [pair], metadata)]


# ------------------------------------------------------------------------------ the pipeline, as data
@dataclass(frozen=True)
class PipelineSpec:
    """How to build a :class:`~precise_baa.pipeline.Pipeline` (the arguments of
    :meth:`~precise_baa.pipeline.Pipeline.from_recipe`), for engines that build it in other
    processes or on other machines. Relative paths are read from ``cwd`` (the directory the
    spec was made in) where it exists, so every worker records the same weights paths.
    """

    recipe: str | dict[str, Any] = "stages/pipelines/default.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    precision: str = "fp32"
    trust: bool = False
    allow_unverified: bool = False
    cwd: str = field(default_factory=os.getcwd)

    def build(self, device: str | None = None, load: Collection[str] | None = None) -> Pipeline:
        """The pipeline, on ``device`` (default: the spec's); ``load``: only these stages
        (:meth:`~precise_baa.pipeline.Pipeline.from_recipe`)."""
        from ..pipeline import Pipeline

        if self.cwd and Path(self.cwd).is_dir() and Path.cwd() != Path(self.cwd):
            os.chdir(self.cwd)
        recipe = self.recipe if isinstance(self.recipe, str) else dict(self.recipe)
        return Pipeline.from_recipe(recipe, overrides=dict(self.overrides),
                                    device=device or self.device, precision=self.precision,  # type: ignore[arg-type]
                                    trust=self.trust, allow_unverified=self.allow_unverified,
                                    load=load)


# ------------------------------------------------------------------------------ engines
class Engine(Protocol):
    """Maps :func:`score_items` over ``items``; yields each batch's results in input order."""

    name: str

    def run(self, pipeline: Any, items: list[InputItem], metadata: Mapping[str, Meta], *,
            batch_size: int, max_pixels: int | None, pixels: bool) -> Iterator[list[Result]]:
        """``pixels=False``: the caller needs no radiographs back (no pictures, no hook)."""
        ...


class _DecodeDataset:
    """Reads radiographs in DataLoader workers; failures travel back as messages."""

    def __init__(self, items: list[InputItem], max_pixels: int | None = None, shared: bool = False):
        self.items = items
        self.max_pixels = max_pixels
        self.shared = shared

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Decoded:
        item, rad, err = (self.items[i], *decode(self.items[i], self.max_pixels))
        if rad is not None and self.shared:
            # a torch tensor crosses to the main process through shared memory; a numpy array
            # would be pickled through the pipe (a 1024 px radiograph: 4 MB, ~9 ms each way)
            import torch

            rad = replace(rad, pixels=torch.from_numpy(rad.pixels))
        return item, rad, err


def _collate(batch):
    return batch


def _as_numpy(decoded: Decoded) -> Decoded:
    """A decoded row with its pixels as numpy again (they came as a shared tensor)."""
    item, rad, err = decoded
    if rad is not None and not isinstance(rad.pixels, np.ndarray):
        rad = replace(rad, pixels=rad.pixels.numpy())
    return item, rad, err


class LocalEngine:
    """This process assesses; ``workers`` DataLoader processes decode ahead (0: decode here)."""

    name = "local"

    def __init__(self, workers: int = 0):
        if int(workers) < 0:
            raise InputError(f"workers {workers}: must be 0 (decode in this process) or more")
        self.workers = int(workers)

    def run(self, pipeline: Any, items: list[InputItem], metadata: Mapping[str, Meta], *,
            batch_size: int, max_pixels: int | None = None, pixels: bool = True
            ) -> Iterator[list[Result]]:
        import torch

        if isinstance(pipeline, PipelineSpec):
            pipeline = pipeline.build()
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(items, max_pixels, shared=self.workers > 0), batch_size=int(batch_size), shuffle=False,
            num_workers=self.workers, collate_fn=_collate, persistent_workers=False,
            prefetch_factor=2 if self.workers > 0 else None,
        )
        for batch in loader:
            yield assess_decoded(pipeline, [_as_numpy(d) for d in batch], metadata)


def make_engine(engine: str | Engine, *, workers: int = 0, address: str | None = None) -> Engine:
    """An engine by name (``local``, ``ray``) or the engine given."""
    if not isinstance(engine, str):
        if address is not None:
            raise InputError("address: give it to the engine object, not beside it")
        return engine
    if engine == "local":
        if address is not None:
            raise InputError(f"--address {address}: joins a Ray cluster; use it with --engine ray")
        return LocalEngine(workers)
    if engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=address, workers=workers)
    raise InputError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
