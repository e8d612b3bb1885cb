"""The ``ray`` engine: Ray Data decodes in tasks and assesses in a pool of pipeline actors.

The plan of a run::

    from_items(pending inputs)                         driver: ids, paths, metadata
      -> map_batches(decode_batch)   Ray tasks         each file read where the task runs
      -> map_batches(PipelineActor)  actor pool        the Pipeline built once per actor (from a
                                                       PipelineSpec), 1 GPU each when the cluster
                                                       has GPUs, else 1 CPU each
      -> iter_batches()              driver            results in input order, to the one writer

Every batch runs :func:`precise_baa.batch.engines.assess_decoded`, the local engine's batch
function, so results (error rows included) are the same. Values cross process boundaries as
pickles made and read by this module only (never a user's file). Inputs, recipes and weights
must be readable at the same paths on every node (a shared filesystem or the same image).

Without ``address`` a local Ray is started (the machine's CPUs and GPUs, no dashboard, no
usage report, quiet logs) and stopped at the end; with it, the running cluster is joined
(``auto`` on a cluster node, ``ray://HEAD:10001`` from elsewhere). A Ray already initialised
in this process is used as it is.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import InputError
from .discovery import InputItem
from .engines import PipelineSpec, Result, assess_decoded, decode
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


class PipelineActor:
    """Ray actor: builds the pipeline once, then assesses decoded batches. Made for a run by
    :func:`actor_class`, which sets ``spec`` and ``pixels``."""

    spec: PipelineSpec
    pixels: bool = True

    def __init__(self):
        device = self.spec.device
        if device and device.startswith("cuda"):  # Ray shows each actor its own GPU(s)
            device = "cuda"
        self.pipeline = self.spec.build(device=device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        decoded, metadata = [], {}
        for blob in batch["decoded"]:
            item, meta, rad, err = pickle.loads(blob)  # made by decode_batch
            decoded.append((item, rad, err))
            if meta is not None:
                metadata[item.id] = meta
        results = assess_decoded(self.pipeline, decoded, metadata)
        if not self.pixels:
            results = [(a, None) for a, _ in results]
        return {"result": [_dumps(r) for r in results]}


def actor_class(spec: PipelineSpec, pixels: bool) -> type[PipelineActor]:
    """:class:`PipelineActor` bound to a run's spec. (The class carries them rather than
    constructor arguments, which Ray would keep in its object store for actor restarts.)"""
    return type("PipelineActor", (PipelineActor,), {"spec": spec, "pixels": pixels})


class RayEngine:
    """Ray Data over a local Ray or a cluster (see the module docstring).

    ``workers``: pipeline actors (0: one per GPU of the cluster, else one per CPU but one, the
    most CPU actors there are room for);
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

    def _pool(self, ray, spec: PipelineSpec) -> tuple[int, dict[str, float]]:
        """Actor count and resources per actor."""
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        wants_gpu = spec.device is None or spec.device.startswith("cuda")
        if spec.device and spec.device.startswith("cuda") and not gpus:
            raise InputError(f"device {spec.device!r}: the Ray cluster has no GPU; use --device cpu")
        if wants_gpu and gpus:
            return self.workers or gpus, {"num_gpus": 1}
        # one CPU per actor, and at least one CPU left for the decoding tasks (else they wait
        # for a CPU that the actors never give back)
        most = max(1, int(res.get("CPU", 1)) - 1)
        if self.workers > most:
            print(f"note: {self.workers} pipeline actors asked, the Ray cluster's "
                  f"{int(res.get('CPU', 1))} CPUs hold {most} beside the decoding tasks",
                  file=sys.stderr)
        return min(self.workers or most, most), {"num_cpus": 1}

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
            size, resources = self._pool(ray, pipeline)
            rows = [{"item": _dumps((it, metadata.get(it.id)))} for it in items]
            ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
            # decoding tasks take half a CPU: lighter than the models, and never fused into them
            ds = ds.map_batches(decode_batch, fn_kwargs={"max_pixels": max_pixels},
                                batch_size=batch_size, batch_format="numpy", num_cpus=0.5)
            ds = ds.map_batches(
                actor_class(pipeline, pixels), batch_size=batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size), **resources)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield [pickle.loads(blob) for blob in batch["result"]]  # made by PipelineActor
        finally:
            if started:
                ray.shutdown()
