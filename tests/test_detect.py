"""Stage 2: box selection and anatomical checks, mmdet configs, predictor, training, evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from precise_baa.detect.anatomy import (
    AnatomyParams,
    check_anatomy,
    choose_boxes,
    detections_from_raw,
    hand_frame,
    rank_candidates,
    select_best,
)
from precise_baa.errors import RecipeError
from precise_baa.interfaces import Detector
from precise_baa.registry import load_stage, read_recipe
from precise_baa.rois import ROI_KEYS
from precise_baa.schemas import Box
from precise_baa.synth import generate_dataset, render_phantom

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Geometry helpers: phantom ground-truth boxes, rotated / mirrored as whole hands
def _rotate(boxes: dict[str, Box], degrees: float, mirror: bool = False) -> dict[str, Box]:
    """Boxes of the hand turned by ``degrees`` (and mirrored left-right first): each box's
    corners are moved and re-boxed, as an annotator would box the rotated bone."""
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.mean([b.center for b in boxes.values()], axis=0)
    out = {}
    for k, b in boxes.items():
        pts = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1]])
        if mirror:
            pts[:, 0] = 2 * centre[0] - pts[:, 0]
        pts = (pts - centre) @ rot.T + centre
        out[k] = Box(x0=pts[:, 0].min(), y0=pts[:, 1].min(), x1=pts[:, 0].max(), y1=pts[:, 1].max())
    return out


def _flagged(flags, code: str) -> set[str]:
    return {f.roi for f in flags if f.code == code}


@pytest.fixture(scope="module")
def hands() -> list[dict[str, Box]]:
    return [render_phantom(seed, 256).boxes for seed in range(12)]


# --------------------------------------------------------------------------------------------
# Selection
def test_select_best_keeps_the_top_box_of_each_class_above_the_threshold():
    bboxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4], [30, 30, 40, 40]], float)
    scores = np.array([0.4, 0.9, 0.2, 0.03])
    labels = np.array([0, 0, 2, 5])
    boxes, best = select_best(bboxes, scores, labels, score_threshold=0.05)
    assert boxes["radius"] == Box(x0=5, y0=5, x1=20, y1=20) and best["radius"] == pytest.approx(0.9)
    assert boxes["mc1"] == Box(x0=1, y0=1, x1=4, y1=4)
    assert boxes["pp1"] is None and best["pp1"] is None  # below the threshold
    assert set(boxes) == set(ROI_KEYS) and sum(b is not None for b in boxes.values()) == 2


# --------------------------------------------------------------------------------------------
# Anatomy
@pytest.mark.parametrize("degrees", [-20.0, 0.0, 20.0])
@pytest.mark.parametrize("mirror", [False, True])
def test_anatomy_accepts_rotated_and_mirrored_hands(hands, degrees, mirror):
    for boxes in hands:
        checked, flags = check_anatomy(_rotate(boxes, degrees, mirror))
        assert flags == [], [f.message for f in flags]
        assert all(checked[k] is not None for k in ROI_KEYS)


def test_hand_frame_follows_the_hand_not_the_image(hands):
    base = hand_frame(hands[0])
    for degrees in (-20.0, 20.0, 90.0):
        frame = hand_frame(_rotate(hands[0], degrees))
        turned = math.degrees(math.atan2(frame.axis[1], frame.axis[0])
                              - math.atan2(base.axis[1], base.axis[0]))
        assert abs((turned - degrees + 180) % 360 - 180) < 3.0
        # the thumb direction turns with the hand too
        assert float(frame.thumb @ base.thumb) == pytest.approx(math.cos(math.radians(degrees)),
                                                                 abs=0.06)
    assert base.axis[1] < -0.9  # phantoms: fingers up (towards smaller y)


@pytest.mark.parametrize("pair", [("pp3", "mp3"), ("radius", "ulna"), ("mc1", "mc5"),
                                  ("dp1", "dp5"), ("mc3", "dp3")])
def test_anatomy_flags_both_rois_of_a_swapped_pair_and_nothing_else(hands, pair):
    a, b = pair
    for degrees in (-20.0, 0.0, 20.0):
        boxes = _rotate(hands[1], degrees)
        boxes[a], boxes[b] = boxes[b], boxes[a]
        scores = dict.fromkeys(ROI_KEYS, 0.9)
        checked, flags = check_anatomy(boxes, scores)
        assert _flagged(flags, "roi_implausible") == {a, b}, [f.message for f in flags]
        assert checked[a] is None and checked[b] is None
        assert sum(v is not None for v in checked.values()) == 11
        assert all(f.stage == "detect" for f in flags)


def test_anatomy_flags_missing_misplaced_and_oversized_rois(hands):
    boxes = dict(hands[2])
    boxes["dp3"] = None
    del boxes["mp5"]
    boxes["radius"] = boxes["mc3"].shift(2.0, 3.0)  # a second metacarpal III called radius
    big = boxes["dp5"]
    boxes["dp5"] = Box(x0=big.x0, y0=big.y0, x1=big.x0 + 8 * big.width, y1=big.y0 + 8 * big.height)
    checked, flags = check_anatomy(boxes, dict.fromkeys(ROI_KEYS, 0.5))
    assert _flagged(flags, "roi_missing") == {"dp3", "mp5"}
    assert _flagged(flags, "roi_implausible") == {"radius", "dp5"}
    by_roi = {f.roi: f.message for f in flags}
    assert "not found" in by_roi["dp3"]
    assert "box size" in by_roi["dp5"] and "Radius" in by_roi["radius"]
    assert checked["mc3"] == boxes["mc3"]  # the real metacarpal III stays
    assert check_anatomy(boxes, params=AnatomyParams(enabled=False))[0]["radius"] is not None


# --------------------------------------------------------------------------------------------
# Lower-ranked candidates when the top box is implausible
def test_rank_candidates_orders_by_score_and_drops_the_same_bone_twice():
    bboxes = np.array([[0, 0, 10, 10], [0.5, 0.5, 10.5, 10.5], [40, 40, 50, 50], [80, 80, 90, 90],
                       [5, 5, 9, 9]], float)
    scores = np.array([0.9, 0.8, 0.5, 0.04, 0.7])
    labels = np.array([3, 3, 3, 3, 4])
    c = rank_candidates(bboxes, scores, labels, score_threshold=0.05, max_per_class=5)
    assert [s for _, s in c["mc3"]] == pytest.approx([0.9, 0.5])  # IoU 0.82 twin and 0.04 gone
    assert c["mc3"][1][0] == Box(x0=40, y0=40, x1=50, y1=50)
    assert len(c["mc5"]) == 1 and c["radius"] == []
    assert len(rank_candidates(bboxes, scores, labels, max_per_class=1)["mc3"]) == 1


def _candidates(boxes: dict[str, Box], score: float = 0.9) -> dict[str, list[tuple[Box, float]]]:
    return {k: [(b, score)] for k, b in boxes.items()}


@pytest.mark.parametrize("pair", [("mc3", "mc5"), ("pp3", "mp3"), ("dp3", "dp5")])
def test_a_swapped_pair_is_repaired_from_second_candidates(hands, pair):
    a, b = pair
    for degrees in (-20.0, 0.0, 20.0):
        truth = _rotate(hands[3], degrees)
        cands = _candidates(truth)
        # the detector's top box of each class sits on the other bone; the right boxes rank second
        cands[a] = [(truth[b], 0.8), (truth[a], 0.45)]
        cands[b] = [(truth[a], 0.7), (truth[b], 0.40)]
        boxes, scores, notes = choose_boxes(cands)
        assert boxes == truth, [n.message for n in notes]
        assert scores[a] == pytest.approx(0.45) and scores[b] == pytest.approx(0.40)
        assert {n.roi for n in notes} == {a, b} and {n.code for n in notes} == {"roi_alternative"}
        assert "score 0.80" in next(n.message for n in notes if n.roi == a)
        checked, flags = check_anatomy(boxes, scores)
        assert flags == []


def test_a_misplaced_box_takes_the_next_plausible_candidate_not_an_implausible_one(hands):
    truth = hands[4]
    cands = _candidates(truth)
    wrong = truth["mc1"].shift(0.0, -3 * truth["mc1"].height)  # up near the fingertips
    far = truth["radius"].shift(3.0, 0.0)  # also in the wrong place
    cands["mp5"] = [(wrong, 0.9), (far, 0.6), (truth["mp5"], 0.3)]
    det = detections_from_raw(*_raw(cands), score_threshold=0.05)
    assert det.boxes["mp5"] == truth["mp5"] and det.scores["mp5"] == pytest.approx(0.3)
    assert [f.code for f in det.flags] == ["roi_alternative"]


def test_still_rejected_when_no_candidate_is_plausible(hands):
    truth = hands[5]
    cands = _candidates(truth)
    cands["pp5"] = [(truth["dp1"].shift(1.0, 1.0), 0.9), (truth["radius"].shift(2.0, 0.0), 0.5)]
    det = detections_from_raw(*_raw(cands), score_threshold=0.05)
    assert det.boxes["pp5"] is None and det.missing == ["pp5"]
    assert [(f.code, f.roi) for f in det.flags] == [("roi_implausible", "pp5")]
    # one candidate per class: the old behaviour, the top box only
    one = detections_from_raw(*_raw(cands), score_threshold=0.05, max_candidates=1)
    assert one.missing == ["pp5"]


def test_a_missing_roi_takes_a_low_scoring_box_only_where_it_fits_the_hand(hands):
    truth = hands[6]
    cands = _candidates(truth)
    # the detector barely saw dp1: its right box scores 0.02, under a box on the wrong bone
    cands["dp1"] = [(truth["pp3"].shift(0.5, 0.5), 0.04), (truth["dp1"], 0.02)]
    plain = detections_from_raw(*_raw(cands), score_threshold=0.05)
    assert plain.missing == ["dp1"]
    det = detections_from_raw(*_raw(cands), score_threshold=0.05, rescue_threshold=0.01)
    assert det.boxes == truth and det.missing == []
    assert det.scores["dp1"] == pytest.approx(0.02)
    assert [(f.code, f.roi) for f in det.flags] == [("roi_low_score", "dp1")]
    assert "score 0.02" in det.flags[0].message
    # under the floor: still missing
    low = detections_from_raw(*_raw(cands), score_threshold=0.05, rescue_threshold=0.03)
    assert low.missing == ["dp1"]


def test_no_rescue_far_from_the_ray_for_a_broken_hand_or_a_mirrored_one(hands):
    truth = hands[7]
    # a box in the right order but far beyond the thumb's tip is no distal phalanx I
    axis = np.subtract(truth["dp1"].center, truth["pp1"].center)
    far = truth["dp1"].shift(*(2.5 * axis))
    cands = _candidates(truth)
    cands["dp1"] = [(far, 0.03)]
    assert detections_from_raw(*_raw(cands), score_threshold=0.05,
                               rescue_threshold=0.01).missing == ["dp1"]
    # three ROIs missing (more than rescue_max 2): not a hand that is otherwise found
    cands = _candidates(truth)
    for k in ("dp1", "dp3", "dp5"):
        cands[k] = [(truth[k], 0.03)]
    det = detections_from_raw(*_raw(cands), score_threshold=0.05, rescue_threshold=0.01)
    assert sorted(det.missing) == ["dp1", "dp3", "dp5"]
    ok = detections_from_raw(*_raw(cands), score_threshold=0.05, rescue_threshold=0.01,
                             rescue_max=3)
    assert ok.missing == []
    # a mirrored hand (thumb on the left) is left to the pipeline's mirrored retry
    mirrored = _rotate(truth, 0.0, mirror=True)
    cands = _candidates(mirrored)
    cands["dp1"] = [(mirrored["dp1"], 0.03)]
    assert detections_from_raw(*_raw(cands), score_threshold=0.05,
                               rescue_threshold=0.01).missing == ["dp1"]
    # anatomy checks off: nothing to judge a low-scoring box by, so no rescue
    cands = _candidates(truth)
    cands["dp1"] = [(truth["dp1"], 0.03)]
    assert detections_from_raw(*_raw(cands), score_threshold=0.05, rescue_threshold=0.01,
                               params=AnatomyParams(enabled=False)).missing == ["dp1"]


def test_every_phantom_roi_sits_where_the_shipped_geometry_says_and_a_moved_box_does_not():
    from precise_baa.detect.geometry import ANCHORS, fit, fits, shipped
    from precise_baa.synth.render import GENERATOR_VERSION

    assert json.loads(Path("precise_baa/detect/geometry.json").read_text())["generator"] == \
        GENERATOR_VERSION, "phantoms changed: remake it (python -m precise_baa.synth.roi_geometry)"
    hands = [render_phantom(seed, 256).boxes for seed in range(500, 530)]  # not the fit's seeds
    fresh = fit(hands)
    p = AnatomyParams()
    floors, n_sd = (p.rescue_along, p.rescue_across, p.rescue_size), p.rescue_sd
    assert set(ANCHORS) == set(ROI_KEYS) - {"radius", "ulna"}
    for k in ANCHORS:
        assert np.allclose(fresh[k]["mean"], shipped()[k]["mean"], atol=0.05), k
        for h in hands:
            assert fits(h, k, h[k], floors, n_sd), k
            a, b = (np.asarray(h[x].center) for x in ANCHORS[k])
            tol = max(floors[0], n_sd * shipped()[k]["sd"][0])
            assert not fits(h, k, h[k].shift(*(2.2 * tol * (b - a))), floors, n_sd), k
            (cx, cy), w, ht = h[k].center, 0.8 * h[k].width, 0.8 * h[k].height
            big = Box(x0=cx - w, y0=cy - ht, x1=cx + w, y1=cy + ht)  # sides x1.6, same centre
            assert not fits(h, k, big, floors, n_sd), k
        assert not fits({**hands[0], ANCHORS[k][0]: None}, k, hands[0][k], floors, n_sd)
    assert not fits(hands[0], "radius", hands[0]["radius"], floors, n_sd)  # never rescued


def test_the_rescue_floor_lowers_the_detectors_score_threshold():
    from precise_baa.detect.config import load_config

    lite = "stages/detect/detectors-cascade-rcnn-lite.py"
    r = read_recipe("detect", lite)
    assert r.rescue_threshold == pytest.approx(0.01)
    assert load_config(r).model.test_cfg.rcnn.score_thr == pytest.approx(0.01)
    off = r.model_copy(update={"rescue_threshold": None})
    assert load_config(off).model.test_cfg.rcnn.score_thr == pytest.approx(0.05)


def _raw(cands: dict[str, list[tuple[Box, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates as a detector's raw output (boxes, scores, labels)."""
    rows = [(b.as_list(), s, ROI_KEYS.index(k)) for k, c in cands.items() for b, s in c]
    return (np.array([r[0] for r in rows], float), np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]))


# --------------------------------------------------------------------------------------------
# Recipes and configs (no model built)
def test_py_recipe_and_yaml_recipe(tmp_path):
    r = read_recipe("detect", "stages/detect/detectors-cascade-rcnn-lite.py")
    assert r.implementation == "mmdet" and r.config.endswith("lite.py") and not r.pretrained
    y = tmp_path / "det.yaml"
    y.write_text("stage: detect\nimplementation: mmdet\nconfig: stages/detect/faster-rcnn-r50.py\n"
                 "score_threshold: 0.3\nanatomy: {size_factor: 4}\n")
    r = read_recipe("detect", y)
    assert r.score_threshold == 0.3 and r.anatomy.size_factor == 4
    y.write_text("stage: detect\nimplementation: mmdet\nconfig: x.py\nanatomy: {sise_factor: 4}\n")
    with pytest.raises(RecipeError, match="anatomy.sise_factor: unknown field"):
        read_recipe("detect", y)


def test_configs_are_offline_unless_pretrained_and_survive_json():
    pytest.importorskip("mmdet")
    from precise_baa.detect.config import decode_config, encode_config, load_config
    from precise_baa.detect.recipe import DetectRecipe

    full = "stages/detect/detectors-cascade-rcnn-r50.py"
    cfg = load_config(DetectRecipe(config=full))
    assert cfg.model.backbone.init_cfg is None and cfg.model.neck.rfp_backbone.pretrained is None
    assert cfg.model.backbone.frozen_stages == -1 and cfg.model.backbone.norm_eval is False
    assert cfg.model.neck.rfp_steps == 2 and cfg.model.backbone.stage_with_sac == (False, True, True, True)
    assert [h.num_classes for h in cfg.model.roi_head.bbox_head] == [13, 13, 13]
    assert [s.assigner.pos_iou_thr for s in cfg.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    online = load_config(DetectRecipe(config=full, pretrained=True))
    assert online.model.backbone.init_cfg["checkpoint"] == "torchvision://resnet50"
    data = json.loads(json.dumps(encode_config(cfg.to_dict())))
    back = decode_config(data)
    assert back["model"]["backbone"]["stage_with_sac"] == (False, True, True, True)  # tuples kept
    assert isinstance(back["model"]["neck"]["in_channels"], list)  # lists stay lists
    assert back["test_pipeline"][1]["scale"] == (512, 512)  # tuples kept


def test_config_with_other_classes_is_refused(tmp_path, detect_tiny):
    pytest.importorskip("mmdet")
    from precise_baa.rois import ROI_KEYS

    bad = tmp_path / "coco80.py"
    bad.write_text(f"metainfo = dict(classes={ROI_KEYS + ('dp2',)!r})\n"
                   "model = dict(type='CascadeRCNN')\n")
    with pytest.raises(RecipeError, match="differ from the 13 ROI keys"):
        load_stage("detect", recipe=bad, trust=True)
    with pytest.raises(RecipeError, match="mmdet config file not found"):
        load_stage("detect", recipe={"stage": "detect", "implementation": "mmdet", "config": "nope.py"})


def test_py_recipes_run_only_inside_stages_or_when_trusted(tmp_path, monkeypatch):
    """An mmdet config is Python that runs when read: never from a flag or a file by accident."""
    pytest.importorskip("mmdet")
    from precise_baa.registry import check_recipe_trusted, trusted_recipes

    marker = tmp_path / "it-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nmodel = dict(type='NoSuchModel')\n")
    y = tmp_path / "det.yaml"
    y.write_text(f"stage: detect\nimplementation: mmdet\nconfig: {evil}\n")
    w = tmp_path / "weights"  # a weights folder whose recipe names the file instead of storing it
    w.mkdir()
    (w / "recipe.json").write_text(json.dumps({"stage": "detect", "implementation": "mmdet",
                                               "config": str(evil)}))
    refused = r"evil.py: a \.py recipe is Python code and runs when loaded; .*pass --trust-recipe"
    for kw in ({"recipe": evil}, {"recipe": y}, {"weights": w},
               {"recipe": {"stage": "detect", "implementation": "mmdet", "config": str(evil)}}):
        with pytest.raises(RecipeError, match=refused):
            load_stage("detect", **kw)
    assert not marker.exists()
    # inside stages/ (after resolving links) it runs without asking
    stages = tmp_path / "stages"
    stages.mkdir()
    monkeypatch.setenv("PRECISE_BAA_STAGES", str(stages))
    (stages / "link.py").symlink_to(evil)
    with pytest.raises(RecipeError, match="link.py: a .py recipe is Python code"):
        check_recipe_trusted(stages / "link.py")
    (stages / "own.py").write_text("x = 1\n")
    check_recipe_trusted(stages / "own.py")
    # trusted explicitly: it runs (and then fails to build, as this one should)
    with pytest.raises(RecipeError, match="cannot build the detector"):
        load_stage("detect", recipe=evil, trust=True)
    assert marker.exists()
    marker.unlink()
    with trusted_recipes(), pytest.raises(RecipeError, match="cannot build the detector"):
        load_stage("detect", recipe=y)
    assert marker.exists()


def test_radiograph_augment_builds_from_a_config_dict_and_runs():
    pytest.importorskip("mmdet")
    from mmdet.registry import TRANSFORMS

    from precise_baa.detect.config import load_config, register_mmdet
    from precise_baa.detect.recipe import DetectRecipe

    register_mmdet()
    t = TRANSFORMS.build(dict(type="RadiographAugment", noise=dict(p=1.0, range=(0.01, 0.02))))
    assert t.settings.noise.p == 1.0 and t.settings.keep_background
    img = np.zeros((120, 90, 3), np.uint8)
    img[20:100, 15:75] = np.linspace(60, 200, 60, dtype=np.uint8)[None, :, None]
    boxes = np.array([[20.0, 30.0, 60.0, 90.0]], np.float32)
    np.random.seed(0)
    out = t({"img": img.copy(), "gt_bboxes": boxes.copy()})
    np.random.seed(0)
    again = t({"img": img.copy()})["img"]
    res = out["img"]
    assert res.shape == img.shape and res.dtype == np.uint8 and np.array_equal(res, again)
    assert np.array_equal(res[..., 0], res[..., 2])  # grey, repeated in the channels
    assert not res[img[..., 0] == 0].any() and not np.array_equal(res, img)
    assert np.array_equal(out["gt_bboxes"], boxes)
    with pytest.raises(RecipeError, match="nosie: unknown field"):
        TRANSFORMS.build(dict(type="RadiographAugment", nosie=dict(p=1.0)))
    cfg = load_config(DetectRecipe(config="stages/detect/detectors-cascade-rcnn-lite.py"))
    steps = [s["type"] for s in cfg.train_dataloader.dataset.pipeline]
    assert "RadiographAugment" in steps and steps.index("RadiographAugment") > steps.index("Resize")
    assert "RadiographAugment" not in [s["type"] for s in cfg.test_pipeline]


# --------------------------------------------------------------------------------------------
# Predictor
@pytest.fixture(scope="module")
def tiny(detect_tiny):
    pytest.importorskip("mmdet")
    return load_stage("detect", recipe=detect_tiny, trust=True)  # outside stages/: trusted here


def test_trained_tiny_detector_gives_one_box_per_roi_in_input_coordinates(trained):
    out, _ = trained
    recipe = json.loads((out / "recipe.json").read_text())
    # keep every box and skip the checks: after two steps the toy model is far from a hand
    recipe.update(score_threshold=0.0, anatomy={"enabled": False})
    det = load_stage("detect", recipe=recipe, weights=out)
    assert isinstance(det, Detector) and det.info.implementation == "mmdet"
    rng = np.random.default_rng(0)
    images = [rng.random((320, 240), dtype=np.float32), rng.random((150, 200), dtype=np.float32),
              render_phantom(3, 192).image]
    raw = det.predict_raw(images)
    dets = det.detect(images)
    assert len(dets) == len(images) == len(raw)
    for img, r, d in zip(images, raw, dets, strict=True):
        h, w = img.shape
        assert set(d.boxes) == set(ROI_KEYS) and d.missing == [] and d.flags == []
        xyxy = np.array([b.as_list() for b in d.boxes.values()])
        assert (xyxy[:, 0] >= 0).all() and (xyxy[:, 2] <= w + 1e-3).all() and (xyxy[:, 3] <= h + 1e-3).all()
        # the best box of each class is what was selected
        for i, k in enumerate(ROI_KEYS):
            assert d.scores[k] == pytest.approx(float(r.scores[r.labels == i].max()))
    # boxes are mapped back to the 320 px tall input, not left in the 160 px resized frame
    assert raw[0].bboxes[:, 3].max() > 200
    with pytest.raises(Exception, match="2-D grayscale"):
        det.detect([np.zeros((10, 10, 3), np.float32)])


def test_every_crop_is_padded_to_one_canvas(tiny):
    """A radiograph's boxes must not depend on the other crops of its batch (a batch is padded to
    its largest image and DetectoRS pools globally): every crop lands on the same canvas, also
    with weights whose stored config predates the fixed-size Pad."""
    from precise_baa.detect.config import fixed_canvas
    from precise_baa.detect.model import to_model_input

    rng = np.random.default_rng(0)
    shapes = {tuple(tiny.pipeline({"img": to_model_input(rng.random((h, w), dtype=np.float32)),
                                   "img_id": 0})["inputs"].shape)
              for h, w in ((300, 200), (120, 250), (160, 160), (90, 40))}
    assert shapes == {(3, 160, 160)}
    old = [{"type": "mmdet.LoadImageFromNDArray"},
           {"type": "Resize", "scale": (384, 384), "keep_ratio": True}, {"type": "PackDetInputs"}]
    assert [s["type"] for s in fixed_canvas(old)] == ["mmdet.LoadImageFromNDArray", "Resize",
                                                      "mmdet.Pad", "PackDetInputs"]
    assert fixed_canvas(old)[2]["size"] == (384, 384)
    assert fixed_canvas(fixed_canvas(old)) == fixed_canvas(old)  # never padded twice
    cfg = tiny.cfg
    for pipe in (cfg.train_pipeline, cfg.test_pipeline):  # training sees what inference sees
        assert {"type": "Pad", "size": (160, 160), "pad_val": {"img": 0}} in [dict(s) for s in pipe]


def test_weights_round_trip_is_exact_and_runs_no_python(tiny, tmp_path, monkeypatch):
    from mmengine.config import Config

    out = tiny.save_pretrained(tmp_path / "tiny", card={"note": "test"})
    stored = json.loads((out / "recipe.json").read_text())
    assert stored["mmdet_config"]["model"]["type"] == "CascadeRCNN"
    card = json.loads((out / "card.json").read_text())
    assert card["input"]["resize"]["scale"] == [160, 160] and card["note"] == "test"

    def refuse(*a, **k):
        raise AssertionError("loading weights must not execute a config file")

    monkeypatch.setattr(Config, "fromfile", staticmethod(refuse))
    again = load_stage("detect", weights=out)
    assert again.info.sha256 == card["sha256"]
    assert again.recipe.mmdet_config == tiny.recipe.mmdet_config
    img = [render_phantom(5, 160).image]
    a, b = tiny.predict_raw(img)[0], again.predict_raw(img)[0]
    assert len(a.scores) > 0
    np.testing.assert_array_equal(a.bboxes, b.bboxes)
    np.testing.assert_array_equal(a.scores, b.scores)


# --------------------------------------------------------------------------------------------
# Training and evaluation on phantoms
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("phantoms"), n=6, seed=1, size=160,
                            progress=False)


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory, detect_tiny):
    pytest.importorskip("mmdet")
    from precise_baa.detect.train import train_detector

    out = tmp_path_factory.mktemp("weights") / "detect-tiny"
    res = train_detector(detect_tiny, phantoms, None, out, epochs=1, batch_size=2, val_fraction=0.34,
                         workers=0, seed=0, phantom=True, trust=True)  # detect-tiny.py: outside stages/
    return out, res


def test_training_exports_safetensors_with_config_and_history(trained):
    out, res = trained
    assert res.best_epoch == 1 and 0.0 <= res.best_metric <= 1.0
    for folder in (out, out / "last"):
        assert {"model.safetensors", "recipe.json", "card.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in out.rglob("*") if p.suffix in (".pth", ".pkl", ".pt")]
    assert not list(out.glob(".detect-data-*"))  # temporary crops removed
    card = json.loads((out / "card.json").read_text())
    assert card["phantom_trained"] is True and card["training_data"]["val"] == 2
    assert "coco/bbox_mAP" in card["metrics"] and set(card["metrics"]["per_roi_ap"]) == set(ROI_KEYS)
    history = json.loads((out / "history.json").read_text())
    assert history[0]["epoch"] == 1 and history[0]["train_loss"] > 0
    recipe = json.loads((out / "recipe.json").read_text())
    datasets = recipe["mmdet_config"]["train_dataloader"]["dataset"]
    assert datasets["data_root"] == ""  # the stored config names no temporary paths
    assert "RadiographAugment" in [s["type"] for s in datasets["pipeline"]]  # trained with it


def test_evaluate_detector_and_cli(trained, phantoms, tmp_path, cli):
    from precise_baa.detect.evaluate import evaluate_detector

    out, _ = trained
    det = load_stage("detect", weights=out)
    res = evaluate_detector(det, phantoms, out_dir=tmp_path / "ev", progress=False)
    assert res["n_images"] == 6 and set(res["per_roi"]) == set(ROI_KEYS)
    assert 0.0 <= res["map"] <= res["map50"] <= 1.0 and 0.0 <= res["all_13_found"] <= 1.0
    per = res["per_roi"]["radius"]
    assert per["missing"] + per["implausible"] <= 6
    assert (tmp_path / "ev" / "evaluation.md").read_text().count("|") > 13 * 5
    r = cli("evaluate", "detect", "--weights", str(out), "--coco", str(phantoms),
            "--out", str(tmp_path / "cli"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "All 13 ROIs found" in r.stdout and (tmp_path / "cli" / "evaluation.json").is_file()
    r = cli("train", "detect", "--recipe", "missing.py", "--coco", str(phantoms), "--out",
            str(tmp_path / "x"))
    assert r.returncode == 2 and "missing.py: mmdet config file not found" in r.stderr


# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_configs_build_with_expected_sizes():
    sizes = {}
    for name in ("detectors-cascade-rcnn-r50", "detectors-cascade-rcnn-lite", "faster-rcnn-r50"):
        det = load_stage("detect", recipe=f"stages/detect/{name}.py")
        sizes[name] = det.num_parameters
        d = det.detect([render_phantom(0, 256).image])[0]
        assert set(d.boxes) == set(ROI_KEYS)
    assert 120e6 < sizes["detectors-cascade-rcnn-r50"] < 130e6
    assert sizes["detectors-cascade-rcnn-lite"] < sizes["faster-rcnn-r50"] < sizes["detectors-cascade-rcnn-r50"]
