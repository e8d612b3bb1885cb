"""Recipes, registry, weights folders, CLI start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from precise_baa.errors import RecipeError, WeightsError
from precise_baa.registry import load_stage, parse_recipe, read_recipe
from precise_baa.schemas import Assessment, Box, RoiResult, parse_sex
from precise_baa.weights import load_into, load_weights, read_card, save_weights


def test_recipe_errors_name_the_field(tmp_path):
    bad = tmp_path / "score.yaml"
    bad.write_text("stage: score\nimplementation: table\nstandrd: tw3\n")
    with pytest.raises(RecipeError, match=r"score.yaml: standrd: unknown field"):
        read_recipe("score", bad)
    bad.write_text("stage: score\nimplementation: table\nstandard: gp\n")
    with pytest.raises(RecipeError, match=r"standard: Input should be 'rus-chn' or 'tw3'"):
        read_recipe("score", bad)
    with pytest.raises(RecipeError, match="no score implementation named 'magic'"):
        parse_recipe("score", {"stage": "score", "implementation": "magic"})
    with pytest.raises(RecipeError, match="not 'score'"):
        parse_recipe("score", {"stage": "grade", "implementation": "table"})
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="YAML mapping"):
        read_recipe("score", bad)


def test_shipped_score_recipes_load():
    tw3 = load_stage("score", "stages/score/tw3.yaml")
    assert tw3.standard == "tw3"
    rus = load_stage("score", "stages/score/rus-chn.yaml")
    assert rus.standard == "rus-chn" and rus.recipe.deviation_threshold_years == 2.0


def test_weights_round_trip_and_tamper_detection(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    recipe = {"stage": "grade", "implementation": "toy", "width": 4}
    out = save_weights(tmp_path / "toy", model.state_dict(), recipe, card={"metrics": {"acc": 0.5}})
    (out / "history.json").write_text("[]")
    save_weights(out, model.state_dict(), recipe)  # overwriting keeps other files
    assert (out / "history.json").exists()
    card = read_card(out)
    assert len(card["sha256"]) == 64 and card["stage"] == "grade"
    w = load_weights(out)
    assert w.recipe == recipe
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    load_into(twin, w)
    x = torch.randn(1, 1, 8, 8)
    model.eval(), twin.eval()
    assert torch.equal(model(x), twin(x))
    # fp16 storage casts back to the model's dtype
    save_weights(tmp_path / "half", model.state_dict(), recipe, half=True)
    load_into(twin, load_weights(tmp_path / "half"))
    assert twin[0].weight.dtype == torch.float32
    assert torch.allclose(twin(x), model(x), atol=1e-2)
    # a replaced tensor file is caught by its sha256
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 does not match"):
        load_weights(out)


def test_weights_mismatch_and_pickles_are_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_weights(tmp_path / "w", model.state_dict(), {"stage": "grade", "implementation": "x"})
    with pytest.raises(WeightsError, match="do not fit"):
        load_into(torch.nn.Linear(4, 2), load_weights(tmp_path / "w"))
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    with pytest.raises(WeightsError, match="only safetensors"):
        load_weights(folder)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nothing")


def test_weights_without_their_card_are_refused_unless_allowed(tmp_path):
    from precise_baa.weights import allow_unverified_weights

    model = torch.nn.Linear(3, 2)
    out = save_weights(tmp_path / "w", model.state_dict(), {"stage": "grade", "implementation": "x"})
    (out / "card.json").unlink()
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # tampered, and nothing left to check it against
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"w: no card.json, so model.safetensors cannot be checked.*"
                                           r"--allow-unverified-weights"):
        load_weights(out)
    assert load_weights(out, allow_unverified=True).sha256 == ""
    with allow_unverified_weights():
        assert load_weights(out).state_dict.keys() == model.state_dict().keys()
    with pytest.raises(WeightsError, match="no card.json"):  # the permission ends with the block
        load_weights(out)
    (out / "card.json").write_text('{"name": "w"}')
    with pytest.raises(WeightsError, match="its card.json has no sha256"):
        load_weights(out)
    (out / "card.json").write_text("{not json")
    with pytest.raises(WeightsError, match="card.json: not valid JSON"):
        load_weights(out)


def test_assessment_json_round_trip():
    a = Assessment(
        id="p1", sex="F", bone_age_years=9.1, maturity_score=355, standard="rus-chn",
        rois=[RoiResult(key="radius", name="Radius", box=Box(x0=1, y0=2, x1=30, y1=40), stage=7)],
        attention=np.eye(13).tolist(),
    )
    back = Assessment.model_validate_json(a.model_dump_json())
    assert back == a and back.roi("radius").box.center == (15.5, 21.0)
    assert json.loads(a.model_dump_json())["schema_version"] == "1.0"
    with pytest.raises(ValueError):
        Assessment(id="x", sex="unknown")


def test_parse_sex():
    assert [parse_sex(s) for s in ("M", "f", " Male ", "FEMALE")] == ["M", "F", "M", "F"]
    with pytest.raises(ValueError, match="bad sex"):
        parse_sex("O")


def test_table_commands_do_not_import_torch():
    code = (
        "import sys, io, contextlib\n"
        "from precise_baa.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['stage-score', '--sex', 'M', '--stages', "
        "','.join(f'{k}=1' for k in ['radius','ulna','mc1','mc3','mc5','pp1','pp3','pp5','mp3','mp5','dp1','dp3','dp5'])])\n"
        "    main(['--help']) if False else None\n"
        "heavy = [m for m in ('torch', 'mmdet', 'mmcv', 'segmentation_models_pytorch', 'cv2') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_help_lists_the_commands(cli):
    p = cli("--help")
    assert p.returncode == 0
    for command in ("stage-score", "info", "train", "evaluate"):
        assert command in p.stdout


def test_imports_run_one_way():
    """The layering the README's Layout describes: the foundation imports no stage, a stage
    imports no other stage but score, and a stage's evaluate never imports its train."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "precise_baa"
    foundation = ["rois", "schemas", "errors", "paths", "imaging", "handcrop", "crops", "augment", "data",
                  "registry", "weights", "training", "evaluation", "interfaces"]
    stages = ["segment", "detect", "grade", "score"]
    upper = ["pipeline", "batch", "report", "synth", "cli", "dicom"]

    def imported(path: Path) -> set[str]:
        """First components below precise_baa of every import in ``path`` (lazy ones too)."""
        rel = path.relative_to(pkg).with_suffix("").parts
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(rel[:len(rel) - node.level])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    out.add(parts[0])
                else:
                    out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("precise_baa."):
                out.add(node.module.split(".")[1])
        return out

    for name in foundation:
        bad = imported(pkg / f"{name}.py") & set(stages + upper)
        assert not bad, f"{name}.py (foundation) imports {bad}"
    # labels predicted for training (used by the stages' train modules) load stages through
    # the registry only; the rest of labels/ (export / import) sits above the pipeline
    bad = imported(pkg / "labels" / "predicted.py") & set(stages + upper)
    assert not bad, f"labels/predicted.py imports {bad}"
    for f in (pkg / "runtime").rglob("*.py"):  # a foundation package
        bad = imported(f) & (set(stages + upper) - ({"cli"} if f.name == "cli.py" else set()))
        assert not bad, f"{f.relative_to(pkg)} (foundation) imports {bad}"
    for stage in stages:
        for f in (pkg / stage).rglob("*.py"):
            allowed = {stage, "score"} | ({"cli"} if f.name == "cli.py" else set())
            bad = imported(f) & (set(stages + upper) - allowed)
            assert not bad, f"{f.relative_to(pkg)} imports {bad}"
        evaluate = pkg / stage / "evaluate.py"
        if evaluate.is_file():
            local = {n.module for n in ast.walk(ast.parse(evaluate.read_text()))
                     if isinstance(n, ast.ImportFrom) and n.level == 1}
            assert "train" not in local, f"{stage}/evaluate.py imports {stage}/train.py"


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    from precise_baa.paths import atomic_open, atomic_write

    target = tmp_path / "results.csv"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temporary left
    atomic_write(target, b"\x00new", fsync=True)
    assert target.read_bytes() == b"\x00new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
