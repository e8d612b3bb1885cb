"""``precise-baa export WEIGHTS --format onnx``: a weights folder's network as an ONNX file.

>>> r = export_onnx("weights/my-segmenter")      # doctest: +SKIP
>>> r.path, r.sha256, r.max_abs_diff             # doctest: +SKIP

The stage is loaded from the folder (its tensors checked against the card), asked for its
:class:`~precise_baa.runtime.session.ExportGraph`, exported with ``torch.onnx.export``
(the ``torch.export`` based exporter, opset 18 by default, a dynamic batch axis) and checked:
onnxruntime must reproduce PyTorch's outputs on a batch of another size than the one traced.
By default the file goes beside the tensors (``WEIGHTS/model.onnx``) and the card records it::

    "onnx": {"file": "model.onnx", "sha256": ..., "opset": 18, "exported_from_sha256": ...}

What exports: the ``unet`` segmenter and the ``densenet-attention`` / ``resnet-shuffle``
graders. What does not: the mmdet detectors (DetectoRS, Faster R-CNN); see
:data:`NOT_EXPORTABLE` for why.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..paths import atomic_write
from . import CARD_KEY, INSTALL_HINT, ONNX_FILE, ExportError

#: opset of the exported graphs (onnxruntime >= 1.14 runs it)
DEFAULT_OPSET = 18
#: the export check: onnxruntime's outputs within atol + rtol * |torch| of PyTorch's
CHECK_ATOL = 1e-3
CHECK_RTOL = 1e-3

_MMDET_REASON = (
    "its inference ends in RPN proposal selection, NMS and RoIAlign: mmcv compiled ops and "
    "data-dependent Python control flow (mmdet's `if not valid_mask.all()`) that torch.export "
    "cannot trace, mmdet 3.x's own ONNX code still imports the removed mmdet.core (its export "
    "moved to MMDeploy), and DetectoRS's deformable SAC exports only as an mmcv:: custom node "
    "that onnxruntime cannot run; the detector runs in PyTorch (runtime: torch)")

#: (stage, implementation) -> why it does not export (``*``: every implementation)
NOT_EXPORTABLE: dict[tuple[str, str], str] = {
    ("detect", "mmdet"): _MMDET_REASON,
    ("segment", "threshold"): "it has no network to export (an Otsu threshold in OpenCV)",
    ("score", "*"): "it has no network to export (table look-ups)",
}


@dataclass
class ExportResult:
    """Where the exported file went and how well it reproduces PyTorch."""

    path: Path
    sha256: str
    opset: int
    #: the weights folder whose card records the file (None: a standalone file)
    folder: Path | None
    #: largest |onnxruntime - torch| per output on the check batch
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    check_batch: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        worst = max(self.max_abs_diff.values(), default=0.0)
        where = (f"recorded in {self.folder / 'card.json'}" if self.folder is not None else
                 "standalone (no card records it; runtime: onnxruntime reads WEIGHTS/model.onnx)")
        check = (f"onnxruntime vs PyTorch on a batch of {self.check_batch}: max |diff| {worst:.2e}"
                 if self.check_batch else "not checked against PyTorch (--no-check)")
        return (f"{self.path}: ONNX opset {self.opset}, sha256 {self.sha256[:16]}..., {where}; "
                f"{check} ({self.seconds:.0f} s)")


def _not_exportable(stage: str, implementation: str) -> str | None:
    return NOT_EXPORTABLE.get((stage, implementation)) or NOT_EXPORTABLE.get((stage, "*"))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def _destination(folder: Path, card: dict[str, Any], out: str | Path | None
                 ) -> tuple[Path, Path | None]:
    """(file to write, weights folder whose card records it or None)."""
    from ..weights import CARD, RECIPE, TENSORS, read_card

    if out is None:
        return folder / ONNX_FILE, folder
    out = Path(out).expanduser()
    if out.suffix.lower() == ".onnx":
        parent = out.resolve().parent
        if not parent.is_dir():
            raise ExportError(f"--out {out}: folder {parent} does not exist")
        return out.resolve(), (folder if parent == folder else None)
    out = out.resolve()
    if out == folder:
        return folder / ONNX_FILE, folder
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: a file, not a folder; give a folder or a name ending in .onnx")
    if out.is_dir() and any(out.iterdir()):
        theirs = read_card(out) if (out / CARD).is_file() else {}
        if not theirs.get("sha256") or theirs.get("sha256") != card.get("sha256"):
            raise ExportError(f"--out {out}: the folder exists and is not a copy of {folder}; "
                              "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in (TENSORS, RECIPE, CARD):
        shutil.copy2(folder / name, out / name)
    return out / ONNX_FILE, out


def _export(graph, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in graph.inputs)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, tuple(graph.inputs), dynamo=True, opset_version=opset,
            input_names=list(graph.input_names), output_names=list(graph.output_names),
            dynamic_shapes=shapes, external_data=False, verbose=False)
        program.save(str(path), external_data=False)


def _check(graph, data: bytes) -> tuple[dict[str, float], int]:
    """Run the exported bytes on a batch of another size than the traced one; compare."""
    import torch

    from .session import import_onnxruntime

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs = tuple(torch.cat([x, x[:1]]) for x in graph.inputs)  # batch n + 1
    with torch.no_grad():
        ref = graph.module(*inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    got = sess.run(None, {n: x.numpy() for n, x in zip(graph.input_names, inputs, strict=True)})
    diffs: dict[str, float] = {}
    for name, r, g in zip(graph.output_names, ref, got, strict=True):
        r = r.float().numpy()
        if r.shape != g.shape:
            raise ExportError(f"output {name}: onnxruntime gives shape {g.shape}, PyTorch "
                              f"{r.shape}; the export is wrong")
        diffs[name] = float(np.max(np.abs(r - g))) if r.size else 0.0
        if not np.allclose(g, r, atol=CHECK_ATOL, rtol=CHECK_RTOL):
            raise ExportError(f"output {name}: onnxruntime differs from PyTorch by up to "
                              f"{diffs[name]:.3g} (tolerance {CHECK_ATOL} + {CHECK_RTOL} x |value|); "
                              "the export is not trustworthy")
    return diffs, int(inputs[0].shape[0])


def export_onnx(weights: str | Path, out: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
                check: bool = True) -> ExportResult:
    """Export the network of the weights folder ``weights`` to ONNX (see the module docstring).

    ``out``: ``None`` (``WEIGHTS/model.onnx``, recorded in its card), a folder (a copy of the
    weights folder with the ONNX file recorded in the copy's card), or a ``.onnx`` file name
    (recorded only when it lies in ``weights``). ``check``: compare with onnxruntime (needs it).
    """
    import hashlib

    from ..paths import resolve
    from ..registry import load_stage, parse_recipe
    from ..weights import read_card, read_stored_recipe

    t0 = time.perf_counter()
    if opset < 17:
        raise ExportError(f"opset {opset}: 17 or newer is needed (LayerNormalization)")
    folder = resolve(weights).resolve()
    if not folder.is_dir():
        raise WeightsError(f"{weights}: weights folder not found")
    stored = read_stored_recipe(folder)
    stage = str(stored.get("stage", "?"))
    implementation = str(stored.get("implementation", "?"))
    reason = _not_exportable(stage, implementation)
    if reason:
        raise ExportError(f"{weights}: the {stage} implementation {implementation!r} does not "
                          f"export to ONNX: {reason}")
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's dynamo exporter needs it)
    except ImportError:
        raise ExportError(f"exporting needs the onnx and onnxscript packages: {INSTALL_HINT}"
                          ) from None
    recipe = parse_recipe(stage, stored, f"{folder}/recipe.json")
    if "runtime" in getattr(type(recipe), "model_fields", {}):
        recipe = recipe.model_copy(update={"runtime": "torch"})  # export from the torch model
    obj = load_stage(stage, recipe=recipe, weights=folder, device="cpu")
    make_graph = getattr(obj, "export_graph", None)
    if make_graph is None:
        raise ExportError(f"{weights}: the {stage} implementation {implementation!r} has no ONNX "
                          "export; run it with runtime: torch")
    card = read_card(folder)
    if not card.get("sha256"):
        raise WeightsError(f"{weights}: card.json has no sha256 of the tensors; an export must "
                           "record what it was made from: restore the folder's card")
    path, recorded_in = _destination(folder, card, out)
    graph = make_graph()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            _export(graph, tmp, opset)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ExportError(f"{weights}: torch.onnx.export failed ({type(e).__name__}: {first})"
                              ) from None
        data = tmp.read_bytes()
        diffs, check_batch = _check(graph, data) if check else ({}, 0)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    sha = hashlib.sha256(data).hexdigest()
    if recorded_in is not None:
        import torch

        own = read_card(recorded_in)
        own[CARD_KEY] = {
            "file": path.name, "sha256": sha, "opset": opset,
            "exported_from_sha256": card["sha256"],
            "inputs": list(graph.input_names), "outputs": list(graph.output_names),
            "dynamic_axes": "axis 0 of every input and output (batch)",
            "exporter": f"torch.onnx.export (dynamo) in torch {torch.__version__}",
            "check": {"max_abs_diff": max(diffs.values(), default=None), "batch": check_batch}
            if check else None,
        }
        _write_json_atomic(recorded_in / "card.json", own)
    return ExportResult(path=path, sha256=sha, opset=opset, folder=recorded_in, max_abs_diff=diffs,
                        check_batch=check_batch, seconds=time.perf_counter() - t0)
