"""Running a weights folder's exported network with ONNX Runtime, checked against its card.

>>> net = OnnxModel("weights/segment-unet-lite", device="cpu")   # doctest: +SKIP
>>> logits = net.run(image=x)[0]                                 # doctest: +SKIP

What a stage hands the exporter is an :class:`ExportGraph`: an eval-mode module, example inputs
and the names of the graph's inputs and outputs (axis 0 of each is the batch).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import RecipeError, WeightsError
from ..schemas import ModelInfo
from . import CARD_KEY, INSTALL_HINT


@dataclass(frozen=True)
class ExportGraph:
    """What a stage exports: ``module(*inputs)`` returns a tensor per name in ``output_names``.

    ``inputs`` are example tensors with a batch of at least 2 (axis 0 of every input and output
    is exported as a dynamic ``batch`` axis).
    """

    module: Any  # torch.nn.Module in eval mode
    inputs: tuple[Any, ...]  # torch.Tensor each
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def import_onnxruntime():
    """``onnxruntime``, or a :class:`RecipeError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise RecipeError(f"runtime: onnxruntime needs the onnxruntime package, which is not "
                          f"installed: {INSTALL_HINT}; or use runtime: torch") from None
    return onnxruntime


def onnx_record(folder: str | Path, card: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The card's ``onnx`` entry and the file it names, or a :class:`WeightsError` saying what
    to do (export first, export again, restore the card)."""
    rec = card.get(CARD_KEY)
    if not rec:
        raise WeightsError(f"{folder}: no ONNX export recorded in card.json; run `precise-baa "
                           f"export {folder} --format onnx` first, or use runtime: torch")
    if not isinstance(rec, dict) or not all(rec.get(k) for k in ("file", "sha256")):
        raise WeightsError(f"{folder}: card.json {CARD_KEY!r} entry lacks file / sha256; "
                           f"export again (precise-baa export {folder} --format onnx)")
    name = str(rec["file"])
    if PurePath(name).name != name or name in (".", ".."):
        raise WeightsError(f"{folder}: card.json names the ONNX file {name!r}; a plain file name "
                           "inside the weights folder is expected")
    if not card.get("sha256"):
        raise WeightsError(f"{folder}: card.json has no sha256 of the tensors the ONNX file was "
                           "exported from; runtime: onnxruntime needs a verified weights folder")
    if rec.get("exported_from_sha256") != card["sha256"]:
        raise WeightsError(f"{folder}/{name} was exported from other tensors than the folder's "
                           f"model.safetensors (re-trained since?); export again: precise-baa "
                           f"export {folder} --format onnx")
    path = Path(folder) / name
    if not path.is_file():
        raise WeightsError(f"{path}: not found although card.json records it; export again: "
                           f"precise-baa export {folder} --format onnx")
    return rec, path


def onnx_info(folder: str | Path, card: dict[str, Any], *, stage: str, implementation: str,
              name: str = "") -> ModelInfo:
    """The stage's :class:`ModelInfo` (as :func:`precise_baa.weights.restore` records it)."""
    return ModelInfo(stage=stage, implementation=implementation, name=name or Path(folder).name,
                     weights=str(folder), sha256=card.get("sha256"),
                     phantom_trained=bool(card.get("phantom_trained", False)))


class OnnxModel:
    """The exported network of a weights folder in an ``onnxruntime.InferenceSession``.

    The file's sha256 is checked against ``card.json`` (and the card's record that it was
    exported from the folder's ``model.safetensors``) before the session is made from the very
    bytes that were checked. ``device`` ``cuda[:N]`` uses the CUDA execution provider when
    onnxruntime has it (``onnxruntime-gpu``), else the CPU one with a warning. ``threads``:
    intra-op threads (default: torch's thread count, so both runtimes obey the same setting);
    idle threads do not spin.
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
                 expect_inputs: Sequence[str] | None = None):
        from ..paths import resolve
        from ..weights import read_card

        folder = resolve(folder)
        card = read_card(folder)
        self.folder = folder
        self.card = card
        self.record, self.path = onnx_record(folder, card)
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.record["sha256"]:
            raise WeightsError(f"{self.path}: sha256 does not match card.json; the file is corrupted "
                               f"or replaced: export again (precise-baa export {folder} --format onnx)")
        ort = import_onnxruntime()
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: no provider chatter on stderr
        # idle worker threads sleep rather than spin (as OMP_WAIT_POLICY=PASSIVE for torch):
        # the next stage, in PyTorch, gets the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = int(device.split(":")[1]) if ":" in device else 0
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
            else:
                warnings.warn(f"{self.path}: device {device} asked for, but this onnxruntime has no "
                              "CUDA execution provider (install onnxruntime-gpu); running on CPU",
                              stacklevel=2)
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise WeightsError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}); export again with this version"
                               ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if expect_inputs is not None and list(expect_inputs) != self.input_names:
            raise WeightsError(f"{self.path}: inputs {self.input_names}, but this stage feeds "
                               f"{list(expect_inputs)}; export again from this weights folder")
        self.providers = self.session.get_providers()

    def run(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """Outputs in the graph's order for inputs given by name (numpy arrays)."""
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        return self.session.run(None, feed)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path}, providers={self.providers})"


def open_exported(stage: str, weights: str | Path | None, *, implementation: str, name: str,
                  device: str | None, expect_inputs: Sequence[str]
                  ) -> tuple[OnnxModel, ModelInfo, str]:
    """A stage's ``runtime: onnxruntime`` start: its weights folder's checked ``model.onnx``,
    the ModelInfo recording it, and the device chosen. One place for the segmenter and grader."""
    from ..training import pick_device

    if weights is None:
        raise RecipeError(f"{stage}: runtime: onnxruntime runs an exported weights folder; "
                          "give its weights (precise-baa export WEIGHTS --format onnx)")
    device = pick_device(device)
    onnx = OnnxModel(weights, device=device, expect_inputs=expect_inputs)
    info = onnx_info(weights, onnx.card, stage=stage, implementation=implementation, name=name)
    return onnx, info, device
