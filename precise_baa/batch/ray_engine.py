"""The ``ray`` engine: Ray Data decodes in tasks and runs each learned stage in its own actor pool.

The plan of a run::

    from_items(pending inputs)                         driver: ids, paths, metadata
      -> map_batches(decode_batch)   Ray tasks         each file read where the task runs
      -> map_batches(StageActor)     segment pool      \
      -> map_batches(StageActor)     detect pool        } the pipeline built once per actor
      -> map_batches(StageActor)     grade pool        /  (from a PipelineSpec); the grade
                                                          actors also score and assemble
      -> iter_batches()              driver            results in input order, to the one writer

Between the pools travel :class:`~precise_baa.pipeline.Work` records (the radiograph, the hand
crop, boxes, grades). The detector is most of the work (about 80 % of the lite pipeline's time,
more than 90 % of the full one's), so its pool gets whole CPUs (or half a GPU) per actor and
grows the most; the segmenter's and grader's actors take a quarter each. Every stage runs
:func:`~precise_baa.batch.engines.run_stage_isolated` and the last
:func:`~precise_baa.batch.engines.finish_works`, the same steps as the local engine's
:meth:`~precise_baa.pipeline.Pipeline.assess_batch`, so results (error rows included) are the
same. Values cross process boundaries as pickles made and read by this module only (never a
user's file). Inputs, recipes and weights must be readable at the same paths on every node (a
shared filesystem or the same image).

Without ``address`` a local Ray is started (the machine's CPUs and GPUs, no dashboard, no
usage report, quiet logs) and stopped at the end; with it, the running cluster is joined
(``auto`` on a cluster node, ``ray://HEAD:10001`` from elsewhere). A Ray already initialised
in this process is used as it is.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import InputError
from ..pipeline import LEARNED_STAGES, Work
from .discovery import InputItem
from .engines import PipelineSpec, Result, decode, finish_works, run_stage_isolated
from .metadata import Meta

#: the version the project is tested with (the ``[ray]`` extra)
RAY_PIN = "ray[data]==2.60.0"
INSTALL = (f"the ray engine needs Ray Data: pip install 'precise-baa[ray]' (or '{RAY_PIN}'), "
           "or use --engine local")


def require_ray():
    """The ``ray`` module with Ray Data, or an :class:`InputError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(INSTALL) from None
    return ray


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(batch: dict[str, Any], max_pixels: int | None = None) -> dict[str, Any]:
    """Ray task: read the batch's files (:func:`~precise_baa.batch.engines.decode`)."""
    out = []
    for blob in batch["item"]:
        item, meta = pickle.loads(blob)  # made by RayEngine.run, not read from a file
        out.append(_dumps((item, meta, *decode(item, max_pixels))))
    return {"decoded": out}


class StageActor:
    """Ray actor: builds the pipeline once, then runs one learned stage on batches of works.
    Made for a run by :func:`actor_class`, which sets ``spec``, ``stage`` and ``pixels``."""

    spec: PipelineSpec
    stage: str = "segment"
    pixels: bool = True

    def __init__(self):
        device = self.spec.device
        if device and device.startswith("cuda"):  # Ray shows each actor its own GPU(s)
            device = "cuda"
        if self.stage != LEARNED_STAGES[-1]:  # runs its stage only: builds only its model
            self.pipeline = self.spec.build(device=device, load={self.stage})
            return
        # the last pool assembles the records, which name every stage's model as the weights
        # loaded it: it builds them all, then keeps the grader and the scorer
        self.pipeline = self.spec.build(device=device)
        for name, st in self.pipeline.stages.items():
            if name not in (self.stage, "score"):
                st.obj = None
        gc.collect()

    def _begin(self, blobs) -> list[tuple[InputItem, Work | None, str | None]]:
        """Decoded files (from :func:`decode_batch`) as works, refused ones included."""
        rows: list[tuple[InputItem, Work | None, str | None]] = []
        ok = []
        for blob in blobs:
            item, meta, rad, err = pickle.loads(blob)  # made by decode_batch
            rows.append((item, None, err))
            if rad is not None:
                ok.append((len(rows) - 1, item, meta, rad))
        works = self.pipeline.begin(
            [rad for *_, rad in ok], [meta.sex if meta else None for _, _, meta, _ in ok],
            [meta.chronological_age if meta else None for _, _, meta, _ in ok],
            [item.id for _, item, _, _ in ok])
        for (i, item, _, _), w in zip(ok, works, strict=True):
            rows[i] = (item, w, None)
        return rows

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.stage == "segment":
            rows = self._begin(batch["decoded"])
        else:
            rows = [pickle.loads(blob) for blob in batch["work"]]  # made by the previous pool
        run_stage_isolated(self.pipeline, self.stage, [w for _, w, _ in rows if w is not None])
        if self.stage != LEARNED_STAGES[-1]:
            return {"work": [_dumps(r) for r in rows]}
        return {"result": [_dumps(r) for r in finish_works(self.pipeline, rows, self.pixels)]}


def actor_class(spec: PipelineSpec, stage: str, pixels: bool) -> type[StageActor]:
    """:class:`StageActor` bound to a run's spec and stage. (The class carries them rather than
    constructor arguments, which Ray would keep in its object store for actor restarts.)"""
    return type(f"{stage.capitalize()}Actor", (StageActor,),
                {"spec": spec, "stage": stage, "pixels": pixels})


class RayEngine:
    """Ray Data over a local Ray or a cluster (see the module docstring).

    ``workers``: detector actors (0: one per GPU of the cluster, else as many as the CPUs hold
    beside the other stages' actors and the decoding); the segmenter's and the grader's pools
    hold as many per GPU, a quarter as many on CPUs;
    ``address``: a running cluster to join; ``num_cpus``: CPUs of a local Ray (default all).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 0, num_cpus: int | None = None):
        if int(workers) < 0:
            raise InputError(f"workers {workers}: must be 0 (as many as the cluster holds) or more")
        self.address = address
        self.workers = int(workers)
        self.num_cpus = num_cpus

    def check_address(self) -> None:
        """A HOST:PORT (or ray://HOST:PORT) address must answer before Ray is asked to join it
        (Ray itself retries for minutes)."""
        target = (self.address or "").removeprefix("ray://")
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            return  # "auto", or a form Ray resolves itself
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as e:
            raise InputError(f"--address {self.address}: no Ray cluster answers there "
                             f"({e.strerror or type(e).__name__}); start one with `ray start "
                             "--head` or check the address") from None

    def _start(self, ray) -> bool:
        """Initialise Ray unless it is; True when this call started it (and must stop it)."""
        if ray.is_initialized():
            return False
        if self.address:
            self.check_address()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # this process's Ray core logs every actor pool's start as an error (its constructor
        # arguments live in the object store: ray-project/ray#53727); keep fatal ones only
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise InputError(f"cannot start or join {where}: {' '.join(str(e).split())}") from None
        return True

    def _pools(self, ray, spec: PipelineSpec) -> dict[str, tuple[int, dict[str, float]]]:
        """Per learned stage: the most actors of its pool and the resources of each."""
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        wants_gpu = spec.device is None or spec.device.startswith("cuda")
        if spec.device and spec.device.startswith("cuda") and not gpus:
            raise InputError(f"device {spec.device!r}: the Ray cluster has no GPU; use --device cpu")
        if wants_gpu and gpus:  # per GPU: a detector actor on half, the two others a quarter each
            n = self.workers or gpus
            return {"segment": (n, {"num_gpus": 0.25}), "detect": (n, {"num_gpus": 0.5}),
                    "grade": (n, {"num_gpus": 0.25})}
        # CPU: a whole CPU per detector actor, a quarter per segmenter / grader actor (a pool
        # of a quarter as many), and half a CPU left at least for the decoding tasks
        cpus = int(res.get("CPU", 1))
        most = max(1, int((cpus - 0.5) / 1.125))
        if self.workers > most:
            print(f"note: {self.workers} detector actors asked, the Ray cluster's {cpus} CPUs "
                  f"hold {most} beside the other stages and the decoding tasks", file=sys.stderr)
        n = min(self.workers or most, most)
        light = max(1, round(n / 4))
        return {"segment": (light, {"num_cpus": 0.25}), "detect": (n, {"num_cpus": 1}),
                "grade": (light, {"num_cpus": 0.25})}

    def run(self, pipeline: PipelineSpec, items: list[InputItem], metadata: Mapping[str, Meta], *,
            batch_size: int, max_pixels: int | None = None, pixels: bool = True
            ) -> Iterator[list[Result]]:
        if not isinstance(pipeline, PipelineSpec):
            raise InputError("the ray engine builds the pipeline in its actors: pass a PipelineSpec")
        ray = require_ray()
        started = self._start(ray)
        try:
            import ray.data

            logging.getLogger("ray.data").setLevel(logging.ERROR)  # run notes, not problems
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the scoring loop shows its own
            ctx.execution_options.preserve_order = True  # results in input order, as locally
            pools = self._pools(ray, pipeline)
            rows = [{"item": _dumps((it, metadata.get(it.id)))} for it in items]
            ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
            # decoding tasks take half a CPU: lighter than the models, and never fused into them
            ds = ds.map_batches(decode_batch, fn_kwargs={"max_pixels": max_pixels},
                                batch_size=batch_size, batch_format="numpy", num_cpus=0.5)
            for stage in LEARNED_STAGES:
                size, resources = pools[stage]
                ds = ds.map_batches(
                    actor_class(pipeline, stage, pixels), batch_size=batch_size,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size), **resources)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield [pickle.loads(blob) for blob in batch["result"]]  # made by StageActor
        finally:
            if started:
                ray.shutdown()
