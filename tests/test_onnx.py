"""The ONNX deployment runtime: export, parity with PyTorch, the recipe switch, refusals.

Tolerances (stated here, checked below): hand probabilities and stage probabilities / attention
within 1e-4 (absolute) of PyTorch; masks identical except < 0.1 % of pixels (those at the
threshold); through the pipeline the same status, stages, maturity scores and bone ages.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="needs the [onnx] extra (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="needs the [onnx] extra (pip install -e '.[onnx]')")

from precise_baa.errors import RecipeError, WeightsError  # noqa: E402
from precise_baa.pipeline import Pipeline, PipelineRecipe  # noqa: E402
from precise_baa.registry import load_stage, read_recipe  # noqa: E402
from precise_baa.rois import ROI_KEYS  # noqa: E402
from precise_baa.runtime import ExportError, with_runtime  # noqa: E402
from precise_baa.runtime.export import export_onnx  # noqa: E402
from precise_baa.runtime.session import OnnxModel  # noqa: E402
from precise_baa.schemas import Box, read_yaml  # noqa: E402
from precise_baa.synth import render_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tests" / "recipes"
PROB_TOL = 1e-4  # probabilities (hand, stages) and attention weights
MASK_TOL = 0.001  # share of mask pixels allowed to differ (at the threshold)


def _fresh(stage: str, recipe: Path, out: Path) -> Path:
    import torch

    torch.manual_seed(0)
    load_stage(stage, recipe=recipe, device="cpu").save_pretrained(out)
    return out


def _load(stage: str, folder: Path, runtime: str):
    return load_stage(stage, recipe=with_runtime(stage, None, folder, runtime), weights=folder,
                      device="cpu")


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory, cli) -> Path:
    """A tiny random-weight U-Net exported through the command line into a copy of its folder."""
    tmp = tmp_path_factory.mktemp("seg")
    src = _fresh("segment", RECIPES / "segment-unet-tiny.yaml", tmp / "trained")
    res = cli("export", str(src), "--format", "onnx", "--out", str(tmp / "deploy"))
    assert res.returncode == 0, res.stderr
    assert "deploy/model.onnx" in res.stdout and "max |diff|" in res.stdout
    assert not (src / "model.onnx").exists()  # --out DIR leaves the source folder alone
    return tmp / "deploy"


@pytest.fixture(scope="module")
def tiny_grader(tmp_path_factory) -> Path:
    folder = _fresh("grade", RECIPES / "grade-densenet-tiny.yaml",
                    tmp_path_factory.mktemp("grade") / "w")
    export_onnx(folder)
    return folder


# --------------------------------------------------------------------------------------------
# Export
def test_export_records_the_file_in_the_card(tiny_seg):
    import onnx

    card = json.loads((tiny_seg / "card.json").read_text())
    rec = card["onnx"]
    data = (tiny_seg / rec["file"]).read_bytes()
    assert rec["file"] == "model.onnx"
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["exported_from_sha256"] == card["sha256"]
    assert rec["opset"] >= 17 and rec["check"]["max_abs_diff"] < 1e-4
    model = onnx.load_from_string(data)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a dynamic batch axis


def test_grader_export_names_its_outputs(tiny_grader):
    net = OnnxModel(tiny_grader)
    assert net.input_names == ["crops", "sex", "present"]
    assert net.output_names == [f"logits_{k}" for k in ROI_KEYS] + ["attention"]


def test_detector_export_is_a_one_line_error(cli):
    res = cli("export", "weights/detect-detectors-lite", "--format", "onnx")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "does not export to ONNX" in lines[0] and "mmcv" in lines[0]
    assert "runtime: torch" in lines[0]
    assert not Path(ROOT / "weights/detect-detectors-lite/model.onnx").exists()


def test_export_refuses_a_foreign_out_folder(tiny_grader, tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's folder")
    with pytest.raises(ExportError, match="not a copy of"):
        export_onnx(tiny_grader, tmp_path)


# --------------------------------------------------------------------------------------------
# Parity with PyTorch
def test_segmenter_parity(tiny_seg):
    torch_seg = _load("segment", tiny_seg, "torch")
    onnx_seg = _load("segment", tiny_seg, "onnxruntime")
    assert onnx_seg.model is None and onnx_seg.onnx is not None
    assert onnx_seg.info.sha256 == torch_seg.info.sha256
    # 5 images of several sizes: more than max_batch (4), so a full and a partial batch
    images = [render_phantom(i, s).image for i, s in enumerate((256, 200, 317, 128, 256))]
    pt, ox = torch_seg.probabilities(images), onnx_seg.probabilities(images)
    assert max(float(np.abs(a - b).max()) for a, b in zip(pt, ox)) < PROB_TOL
    for a, b in zip(torch_seg.segment(images), onnx_seg.segment(images)):
        assert np.mean(a.raw_mask != b.raw_mask) < MASK_TOL
        assert np.mean(a.mask != b.mask) < MASK_TOL
        assert (a.rejected is None) == (b.rejected is None)


def test_grader_parity_with_missing_rois(tiny_grader):
    torch_g = _load("grade", tiny_grader, "torch")
    onnx_g = _load("grade", tiny_grader, "onnxruntime")
    rng = np.random.default_rng(0)
    images = [rng.random((160, 120), dtype=np.float32) for _ in range(3)]
    boxes = []
    for _ in range(3):
        b = {}
        for k in ROI_KEYS:
            x, y = rng.uniform(0, 90), rng.uniform(0, 120)
            b[k] = Box(x0=x, y0=y, x1=x + rng.uniform(10, 30), y1=y + rng.uniform(15, 40))
        boxes.append(b)
    boxes[1]["mc3"] = None  # a missing ROI: the "missing" token, masked out of the keys
    boxes[2].update(radius=None, dp5=None)
    a = torch_g.grade(images, boxes, ["F", "M", "F"])
    b = onnx_g.grade(images, boxes, ["F", "M", "F"])
    for ga, gb in zip(a, b):
        assert ga.probabilities.keys() == gb.probabilities.keys()
        diff = max(float(np.abs(ga.probabilities[k] - gb.probabilities[k]).max())
                   for k in ga.probabilities)
        assert diff < PROB_TOL
        assert float(np.abs(ga.attention - gb.attention).max()) < PROB_TOL
        assert [f.code for f in ga.flags] == [f.code for f in gb.flags]
    assert "mc3" not in b[1].probabilities and b[1].attention[:, ROI_KEYS.index("mc3")].max() == 0


def test_resnet_shuffle_grader_exports_without_attention(tmp_path):
    folder = _fresh("grade", RECIPES / "grade-resnet-shuffle-tiny.yaml", tmp_path / "w")
    res = export_onnx(folder)
    assert max(res.max_abs_diff.values()) < 1e-4
    onnx_g = _load("grade", folder, "onnxruntime")
    assert "attention" not in onnx_g.onnx.output_names
    crops = np.random.default_rng(1).random((4, 13, 32, 32), dtype=np.float32)
    present = np.ones((4, 13), bool)
    pa, att = _load("grade", folder, "torch").predict_crops(crops, [0, 1, 1, 0], present)
    pb, att_b = onnx_g.predict_crops(crops, [0, 1, 1, 0], present)
    assert att is None and att_b is None
    assert max(float(np.abs(x - y).max()) for x, y in zip(pa, pb)) < PROB_TOL


@pytest.fixture(scope="module")
def lite_exported(tmp_path_factory) -> dict[str, Path]:
    """Copies of the bundled lite segmenter and grader, exported (the bundled folders are not
    touched: their exports are made after each retraining)."""
    tmp = tmp_path_factory.mktemp("lite")
    out = {}
    for stage, name in (("segment", "segment-unet-lite"), ("grade", "grade-densenet-attention-lite")):
        export_onnx(ROOT / "weights" / name, tmp / name)
        out[stage] = tmp / name
    return out


def test_pipeline_gives_the_same_stages_and_bone_ages(lite_exported):
    def pipe(runtime: str | None) -> Pipeline:
        extra = {"runtime": runtime} if runtime else {}
        return Pipeline.from_recipe({
            "segment": {"weights": str(lite_exported["segment"]), **extra},
            "detect": {"weights": "weights/detect-detectors-lite"},
            "grade": {"weights": str(lite_exported["grade"]), **extra},
            "score": {"recipe": "stages/score/rus-chn.yaml"},
        }, device="cpu")

    torch_pipe, onnx_pipe = pipe(None), pipe("onnxruntime")
    assert onnx_pipe.stages["segment"].obj.onnx is not None
    assert onnx_pipe.stages["grade"].obj.onnx is not None
    assert torch_pipe.stages["grade"].obj.onnx is None
    phantoms = [render_phantom(s, 512) for s in (11, 12, 13)]
    args = ([p.image for p in phantoms], [p.sex for p in phantoms], [None] * 3,
            [f"p{i}" for i in range(3)])
    a, b = torch_pipe.assess_batch(*args), onnx_pipe.assess_batch(*args)
    assert sum(x.status == "ok" for x in a) >= 2
    for x, y in zip(a, b):
        assert (x.status, x.bone_age_years, x.maturity_score) == (y.status, y.bone_age_years,
                                                                   y.maturity_score)
        assert x.crop_box == y.crop_box
        assert [r.stage for r in x.rois] == [r.stage for r in y.rois]
        for rx, ry in zip(x.rois, y.rois):
            if rx.probabilities is not None:
                assert np.abs(np.subtract(rx.probabilities, ry.probabilities)).max() < PROB_TOL
        assert [m.sha256 for m in x.models] == [m.sha256 for m in y.models]


# --------------------------------------------------------------------------------------------
# Refusals and the recipe switch
def test_a_tampered_model_onnx_is_refused(tiny_seg, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(tiny_seg, folder)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="sha256 does not match card.json"):
        _load("segment", folder, "onnxruntime")


def test_an_export_of_other_tensors_is_refused(tiny_seg, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(tiny_seg, folder)
    card = json.loads((folder / "card.json").read_text())
    card["onnx"]["exported_from_sha256"] = "0" * 64  # as after retraining without re-exporting
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="exported from other tensors.*export again"):
        _load("segment", folder, "onnxruntime")


def test_a_card_cannot_point_outside_its_folder(tiny_seg, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(tiny_seg, folder)
    card = json.loads((folder / "card.json").read_text())
    card["onnx"]["file"] = "../model.onnx"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="plain file name"):
        _load("segment", folder, "onnxruntime")


def test_without_an_export_the_error_says_how_to_make_one(tmp_path):
    folder = _fresh("segment", RECIPES / "segment-unet-tiny.yaml", tmp_path / "w")
    with pytest.raises(WeightsError, match=r"no ONNX export.*precise-baa export .* --format onnx"):
        _load("segment", folder, "onnxruntime")
    recipe = read_recipe("segment", RECIPES / "segment-unet-tiny.yaml")
    with pytest.raises(RecipeError, match="runs an exported weights folder"):
        load_stage("segment", recipe=recipe.model_copy(update={"runtime": "onnxruntime"}))


def test_without_onnxruntime_the_error_says_how_to_install(tiny_seg, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(RecipeError, match=r"pip install 'precise-baa\[onnx\]'"):
        _load("segment", tiny_seg, "onnxruntime")


def test_an_onnx_stage_cannot_be_saved_as_torch_weights(tiny_seg, tmp_path):
    with pytest.raises(WeightsError, match="runtime: torch"):
        _load("segment", tiny_seg, "onnxruntime").save_pretrained(tmp_path / "copy")


def test_runtime_field_defaults_to_torch_and_is_checked(tmp_path):
    assert read_recipe("segment", RECIPES / "segment-unet-tiny.yaml").runtime == "torch"
    assert read_recipe("grade", RECIPES / "grade-densenet-tiny.yaml").runtime == "torch"
    # weights folders saved before the field existed carry no runtime: torch
    stored = json.loads((ROOT / "weights/segment-unet-lite/recipe.json").read_text())
    assert "runtime" not in stored or stored["runtime"] == "torch"
    bad = read_yaml(RECIPES / "segment-unet-tiny.yaml") | {"runtime": "tensorrt"}
    with pytest.raises(RecipeError, match="runtime"):
        load_stage("segment", recipe=bad)
    with pytest.raises(RecipeError, match="no runtime switch"):
        with_runtime("detect", None, ROOT / "weights/detect-detectors-lite", "onnxruntime")
    with pytest.raises(RecipeError, match="no runtime switch"):
        with_runtime("segment", ROOT / "stages/segment/threshold.yaml", None, "onnxruntime")


def test_the_onnx_pipeline_recipe_sets_the_runtime_per_stage():
    recipe = PipelineRecipe.model_validate(read_yaml(ROOT / "stages/pipelines/default-onnx.yaml"))
    assert recipe.segment.runtime == "onnxruntime" and recipe.grade.runtime == "onnxruntime"
    assert recipe.detect.runtime is None
    default = PipelineRecipe.model_validate(read_yaml(ROOT / "stages/pipelines/default.yaml"))
    assert (recipe.segment.weights, recipe.grade.weights) == (default.segment.weights,
                                                              default.grade.weights)


def test_export_summary_says_whether_the_export_was_checked(tmp_path):
    from precise_baa.runtime.export import ExportResult

    checked = ExportResult(tmp_path / "m.onnx", "ab" * 32, 18, tmp_path, {"logits": 3e-6}, 2, 1.0)
    assert "on a batch of 2: max |diff| 3.00e-06" in checked.summary()
    unchecked = ExportResult(tmp_path / "m.onnx", "ab" * 32, 18, tmp_path)
    assert "not checked against PyTorch" in unchecked.summary()
    assert "batch of 0" not in unchecked.summary()
