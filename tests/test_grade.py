"""Stage 3: ROI crops, grader networks (both implementations), training pieces, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from precise_baa.crops import Jitter, crop_roi, crop_rois, present_mask
from precise_baa.errors import RecipeError
from precise_baa.interfaces import Grader
from precise_baa.registry import load_stage, read_recipe
from precise_baa.rois import ROI_KEYS, stage_counts
from precise_baa.schemas import Box

RECIPES = Path(__file__).parent / "recipes"

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Crops
def _ramp(h: int = 100, w: int = 120) -> np.ndarray:
    return (1.0 + np.arange(h * w, dtype=np.float32).reshape(h, w)) / (h * w)


def test_crop_at_unit_scale_is_a_pixel_copy():
    img = _ramp()
    c = crop_roi(img, Box(x0=30, y0=40, x1=50, y1=60), 20, context=1.0)
    np.testing.assert_allclose(c, img[40:60, 30:50], atol=1e-6)


def test_crop_keeps_aspect_by_padding_the_short_side():
    img = _ramp()
    # 10 wide x 20 tall at scale 1: the 20 px square holds the region in columns 5..14
    c = crop_roi(img, Box(x0=30, y0=40, x1=40, y1=60), 20, context=1.0)
    assert (c[:, :5] == 0).all() and (c[:, 15:] == 0).all()
    np.testing.assert_allclose(c[:, 5:15], img[40:60, 30:40], atol=1e-6)
    # scaled 2x down, still not stretched: a wide box pads rows instead
    c = crop_roi(img, Box(x0=10, y0=10, x1=90, y1=50), 40, context=1.0)
    assert (c[:10] == 0).all() and (c[30:] == 0).all() and (c[10:30] > 0).all()


def test_crop_at_image_edge_pads_outside_and_keeps_inside():
    img = _ramp()
    # box centred on the bottom-left corner: only its top-right quarter lies in the image
    c = crop_roi(img, Box(x0=-10, y0=90, x1=10, y1=110), 20, context=1.0)
    np.testing.assert_allclose(c[:10, 10:], img[90:100, 0:10], atol=1e-6)
    assert (c[10:] == 0).all() and (c[:, :10] == 0).all()
    assert (crop_roi(img, Box(x0=500, y0=500, x1=520, y1=530), 16) == 0).all()  # fully outside


def test_crop_downscaling_is_antialiased():
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (200, 100))  # 1-px vertical stripes
    c = crop_roi(stripes, Box(x0=0, y0=0, x1=200, y1=200), 25, context=1.0)
    assert abs(float(c[5:-5, 5:-5].mean()) - 0.5) < 0.05 and float(c[5:-5, 5:-5].std()) < 0.05


def test_crop_jitter_is_seeded_and_rois_come_in_order():
    img = _ramp()
    box = Box(x0=30, y0=40, x1=50, y1=70)
    j = Jitter(scale=0.2, shift=0.1, rotation=10)
    a = crop_roi(img, box, 24, jitter=j, rng=np.random.default_rng(3))
    b = crop_roi(img, box, 24, jitter=j, rng=np.random.default_rng(3))
    c = crop_roi(img, box, 24, jitter=j, rng=np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    boxes = {k: Box(x0=5 * i, y0=5 * i, x1=5 * i + 20, y1=5 * i + 30) for i, k in enumerate(ROI_KEYS)}
    boxes["mc3"] = None
    stack = crop_rois(img, boxes, 24)
    assert stack.shape == (13, 24, 24) and stack.dtype == np.float32
    assert np.array_equal(stack[ROI_KEYS.index("pp1")], crop_roi(img, boxes["pp1"], 24))
    assert (stack[ROI_KEYS.index("mc3")] == 0).all()
    assert present_mask(boxes).tolist() == [k != "mc3" for k in ROI_KEYS]


# --------------------------------------------------------------------------------------------
# The grader contract, once per implementation
def _boxes(seed: int = 0, h: int = 160, w: int = 120) -> dict[str, Box]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in ROI_KEYS:
        x, y = rng.uniform(0, w - 30), rng.uniform(0, h - 40)
        out[k] = Box(x0=x, y0=y, x1=x + rng.uniform(10, 30), y1=y + rng.uniform(15, 40))
    return out


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((160, 120), dtype=np.float32)


class GraderContract:
    recipe_file: str
    has_attention: bool

    @pytest.fixture(scope="class")
    @classmethod
    def grader(cls):
        torch.manual_seed(0)
        return load_stage("grade", recipe=RECIPES / cls.recipe_file, device="cpu")

    def test_is_a_grader(self, grader):
        assert isinstance(grader, Grader) and grader.standard == "rus-chn"
        assert grader.info.stage == "grade" and grader.info.weights is None

    @pytest.mark.parametrize("standard", ["rus-chn", "tw3"])
    def test_heads_sized_per_bone(self, standard):
        recipe = read_recipe("grade", RECIPES / self.recipe_file).model_copy(update={"standard": standard})
        g = load_stage("grade", recipe=recipe, device="cpu")
        assert g.standard == standard
        out = g.model(torch.rand(2, 13, 32, 32), torch.tensor([0, 1]))
        assert [t.shape for t in out.logits] == [(2, n) for n in stage_counts(standard).values()]
        res = g.grade([_image()], [_boxes()], ["M"])[0]
        assert {k: len(p) for k, p in res.probabilities.items()} == stage_counts(standard)
        assert res.standard == standard

    def test_grades_and_attention(self, grader):
        res = grader.grade([_image(0), _image(1), _image(2)], [_boxes(0), _boxes(1), _boxes(2)],
                           ["M", "female", "F"])
        assert len(res) == 3
        for g in res:
            assert list(g.probabilities) == list(ROI_KEYS) and not g.flags
            for p in g.probabilities.values():
                assert p.dtype == np.float32 and abs(float(p.sum()) - 1) < 1e-5
            if self.has_attention:
                assert g.attention.shape == (13, 13)
                np.testing.assert_allclose(g.attention.sum(1), 1.0, atol=1e-5)
                assert (g.attention >= 0).all()
            else:
                assert g.attention is None

    def test_batched_equals_single(self, grader):
        both = grader.grade([_image(0), _image(1)], [_boxes(0), _boxes(1)], ["M", "F"])
        one = grader.grade([_image(1)], [_boxes(1)], ["F"])[0]
        for k in ROI_KEYS:
            np.testing.assert_allclose(both[1].probabilities[k], one.probabilities[k], atol=1e-5)

    def test_sex_changes_the_output(self, grader):
        m, f = grader.grade([_image(), _image()], [_boxes(), _boxes()], ["M", "F"])
        assert not np.allclose(m.probabilities["radius"], f.probabilities["radius"])

    def test_missing_boxes(self, grader):
        boxes = _boxes()
        partial = {**boxes, "ulna": None}
        del partial["dp5"]
        g, empty = grader.grade([_image(), _image()], [partial, {}], ["F", "M"])
        assert set(g.probabilities) == set(ROI_KEYS) - {"ulna", "dp5"}
        assert sorted(f.roi for f in g.flags) == ["dp5", "ulna"]
        assert all(f.code == "roi_not_graded" and f.stage == "grade" for f in g.flags)
        if self.has_attention:
            np.testing.assert_allclose(g.attention.sum(1), 1.0, atol=1e-5)
            assert np.all(g.attention[:, [ROI_KEYS.index("ulna"), ROI_KEYS.index("dp5")]] == 0)
        assert empty.probabilities == {} and empty.attention is None and len(empty.flags) == 13
        # a missing ROI's pixels never reach the network
        crops, present = grader.crops([_image()], [partial])
        noisy = crops.copy()
        noisy[0, ~present[0]] = np.random.default_rng(1).random((2, *crops.shape[2:]))
        a, _ = grader.predict_crops(crops, [0], present)
        b, _ = grader.predict_crops(noisy, [0], present)
        for pa, pb in zip(a, b):
            np.testing.assert_allclose(pa, pb, atol=1e-6)

    def test_save_load_round_trip(self, grader, tmp_path):
        grader.save_pretrained(tmp_path / "w", card={"phantom_trained": True})
        again = load_stage("grade", weights=tmp_path / "w", device="cpu")
        assert again.recipe == grader.recipe and again.info.phantom_trained
        assert again.info.sha256 == json.loads((tmp_path / "w" / "card.json").read_text())["sha256"]
        card = json.loads((tmp_path / "w" / "card.json").read_text())
        assert card["input"]["crop_size"] == grader.recipe.crop_size
        a = grader.grade([_image()], [_boxes()], ["M"])[0]
        b = again.grade([_image()], [_boxes()], ["M"])[0]
        for k in ROI_KEYS:
            np.testing.assert_array_equal(a.probabilities[k], b.probabilities[k])
        if self.has_attention:
            np.testing.assert_array_equal(a.attention, b.attention)

    def test_a_few_steps_reduce_the_loss(self, grader):
        from precise_baa.grade.train import class_weights, grade_loss

        torch.manual_seed(0)
        model = load_stage("grade", recipe=grader.recipe, device="cpu").model.train()
        crops, labels, sex = synthetic_crops(8, grader.recipe.crop_size, seed=0)
        weights = class_weights([], "rus-chn")
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(15):
            loss = grade_loss(model(crops, sex), labels, weights, ordinal_weight=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.6 * losses[0], losses


class TestDenseNetAttention(GraderContract):
    recipe_file = "grade-densenet-tiny.yaml"
    has_attention = True


class TestResNetShuffle(GraderContract):
    recipe_file = "grade-resnet-shuffle-tiny.yaml"
    has_attention = False


def synthetic_crops(n: int, size: int, seed: int = 0):
    """Crops whose stage shows as the radius of a bright disk (a learnable toy task)."""
    rng = np.random.default_rng(seed)
    counts = list(stage_counts("rus-chn").values())
    labels = np.array([[rng.integers(0, c) for c in counts] for _ in range(n)], dtype=np.int64)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    crops = np.zeros((n, 13, size, size), np.float32)
    for i in range(n):
        for c, k in enumerate(counts):
            radius = 2 + (size / 2 - 3) * labels[i, c] / (k - 1)
            crops[i, c] = (r <= radius) * 0.8 + rng.normal(0, 0.03, (size, size))
    return torch.from_numpy(crops), torch.from_numpy(labels), torch.from_numpy(rng.integers(0, 2, n))


# --------------------------------------------------------------------------------------------
# Recipes, loss pieces, metrics
def test_shipped_recipes_validate():
    from precise_baa.paths import stages_dir

    files = sorted((stages_dir() / "grade").glob("*.yaml"))
    assert {f.name for f in files} >= {"densenet121-attention.yaml", "densenet-attention-lite.yaml",
                                       "resnet-shuffle.yaml"}
    for f in files:
        r = read_recipe("grade", f)
        assert r.stage == "grade" and not r.pretrained  # offline by default


@pytest.mark.parametrize("change, words", [
    ({"pretrained": True}, "stock backbone"),
    ({"shuffle_groups": 3}, "divide by 2 x groups"),
    ({"crop_sise": 64}, "unknown field"),
    ({"embed_dim": 30, "roi_attention": True, "attention_heads": 4}, "divisible"),
])
def test_recipe_errors_name_the_problem(change, words):
    data = {"stage": "grade", "implementation": "resnet-shuffle", "backbone": "custom",
            "block": "basic", "layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32],
            "shuffle_groups": 2, **change}
    with pytest.raises(RecipeError, match=words):
        load_stage("grade", recipe=data)


def test_class_weights_favour_rare_stages():
    from precise_baa.data import ImageRecord
    from precise_baa.grade.train import class_weights

    recs = [ImageRecord(id=i, path=None, width=1, height=1, boxes={"radius": Box(x0=0, y0=0, x1=1, y1=1)},
                        stages={"radius": 3 if i < 9 else 7}) for i in range(10)]
    w = class_weights(recs, "rus-chn", power=0.5)[0]
    assert w[7] > w[3] > 0 and w[0] > w[3]
    assert abs(float(w[3] * 9 + w[7] * 1) / 10 - 1.0) < 1e-5  # mean 1 over training samples


def test_grade_loss_ignores_unlabelled_and_prefers_near_misses():
    from precise_baa.grade.models import GraderOutput
    from precise_baa.grade.train import grade_loss

    counts = list(stage_counts("rus-chn").values())
    labels = torch.full((1, 13), -1)
    labels[0, 0] = 5
    def out_at(stage):
        logits = [torch.zeros(1, k) for k in counts]
        logits[0] = torch.full((1, counts[0]), -10.0)
        logits[0][0, stage] = 10.0
        return GraderOutput(logits, None)

    near = grade_loss(out_at(6), labels, ordinal_weight=1.0)
    far = grade_loss(out_at(12), labels, ordinal_weight=1.0)
    assert float(grade_loss(out_at(5), labels, ordinal_weight=1.0)) < 1e-3
    assert far > near > 0
    assert float(grade_loss(out_at(6), labels)) == pytest.approx(float(grade_loss(out_at(12), labels)))


def test_grading_metrics():
    from precise_baa.grade.evaluate import grading_metrics

    true = [{k: 3 for k in ROI_KEYS}, {k: 5 for k in ROI_KEYS}]
    pred = [dict(true[0]), {**true[1], "radius": 6, "ulna": 9}]
    m = grading_metrics(pred, true, ["F", "M"], "rus-chn", [10.0, None])
    assert m["accuracy"]["per_roi"]["radius"] == {"n": 2, "exact": 0.5, "within_one": 1.0}
    assert m["accuracy"]["per_roi"]["ulna"]["within_one"] == 0.5
    assert m["confusion"]["radius"][5][6] == 1 and m["confusion"]["radius"][3][3] == 1
    assert sum(map(sum, m["confusion"]["mc1"])) == 2
    ba = m["bone_age"]
    assert ba["n"] == 2 and ba["mae_vs_true_stages"] > 0  # only the 2nd radiograph differs
    assert ba["vs_reference"]["all"]["n"] == 1
    same = grading_metrics(true, true, ["F", "M"], "rus-chn")["bone_age"]
    assert same["mae_vs_true_stages"] == 0.0


# --------------------------------------------------------------------------------------------
# End to end on phantoms: train and evaluate through the command line
@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    synth = pytest.importorskip("precise_baa.synth")
    out = tmp_path_factory.mktemp("phantoms")
    return synth.generate_dataset(out, 8, seed=5, size=256, progress=False).parent


def test_train_and_evaluate_cli(phantom_set, tmp_path, cli):
    coco = phantom_set / "annotations.json"
    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"),
            "--coco", str(coco), "--out", str(tmp_path / "w"), "--epochs", "2",
            "--val-fraction", "0.25", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "w" / "card.json").read_text())
    marked = any(im.get("phantom") for im in json.loads(coco.read_text())["images"])
    assert card["phantom_trained"] == marked and card["training_data"]["val"] == 2
    assert card["metrics"]["epoch"] in (1, 2) and 0 <= card["metrics"]["mean_accuracy"] <= 1
    history = json.loads((tmp_path / "w" / "history.json").read_text())
    assert len(history) == 2 and (tmp_path / "w" / "last" / "model.safetensors").is_file()

    r = cli("evaluate", "grade", "--weights", str(tmp_path / "w"), "--coco", str(coco),
            "--out", str(tmp_path / "eval"), "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert res["n_images"] == 8 and set(res["accuracy"]["per_roi"]) == set(ROI_KEYS)
    assert res["bone_age"]["n"] == 8 and res["bone_age"]["mae_vs_true_stages"] >= 0
    confusion = json.loads((tmp_path / "eval" / "confusion.json").read_text())
    assert sum(map(sum, confusion["radius"]["matrix"])) == 8
    assert (tmp_path / "eval" / "confusion.png").is_file()
    assert len(list((tmp_path / "eval" / "confusion").glob("*.png"))) == 13


def test_train_tw3_with_workers(phantom_set, tmp_path):
    from precise_baa.grade.train import train_grader
    from precise_baa.schemas import read_yaml

    recipe = {**read_yaml(RECIPES / "grade-densenet-tiny.yaml"), "standard": "tw3"}
    res = train_grader(recipe, phantom_set / "annotations.json", None, tmp_path / "w", epochs=1,
                       val_fraction=0.25, device="cpu", workers=1, progress=False)
    assert res.best_epoch == 1 and 0 <= res.best_metric <= 1
    grader = load_stage("grade", weights=tmp_path / "w", device="cpu")
    assert grader.standard == "tw3" and grader.info.weights is not None
    card = json.loads((tmp_path / "w" / "card.json").read_text())
    assert card["output"]["stages"] == stage_counts("tw3")
    assert sum(card["training_data"]["stage_histogram"]["radius"]) == 6  # 8 images, 2 held out


def test_train_rejects_a_manifest_without_stages(tmp_path, cli):
    coco = tmp_path / "ann.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10, "sex": "F"}],
        "categories": [{"id": 1, "name": "radius"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}))
    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"),
            "--coco", str(coco), "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "no image has an ROI with both a bbox and a 'stage'" in r.stderr


# --------------------------------------------------------------------------------------------
# Training data: resolution jitter and radiograph appearance (precise_baa.augment)
def test_downscaled_hand_gives_the_same_crop_at_lower_resolution():
    from precise_baa.grade.dataset import downscale_hand

    image = np.zeros((200, 160), np.float32)
    image[60:140, 50:110] = 0.8
    box = Box(x0=40, y0=50, x1=120, y1=150)
    small, moved = downscale_hand(image, {"radius": box, "ulna": None}, 0.5)
    assert small.shape == (100, 80) and moved["ulna"] is None
    assert moved["radius"].as_list() == pytest.approx([20, 25, 60, 75])
    a, b = crop_roi(image, box, 32), crop_roi(small, moved["radius"], 32)
    assert np.abs(a - b).mean() < 0.03  # the same view, softer


def test_training_items_get_one_appearance_change_per_radiograph(phantom_set):
    from precise_baa.data import load_coco
    from precise_baa.grade.dataset import GradeDataset
    from precise_baa.grade.recipes import GRADE_PHOTOMETRIC

    recipe = read_recipe("grade", RECIPES / "grade-densenet-tiny.yaml")
    t = recipe.training
    assert t.photometric == GRADE_PHOTOMETRIC and t.hand_downscale.p > 0  # the defaults apply
    records = load_coco(phantom_set / "annotations.json").records[:2]
    ds = GradeDataset(records, recipe, train=True, seed=0)
    crops, labels, sex, present = ds[0]
    crops0, labels0, sex0, present0 = ds.as_eval()[0]
    assert crops.shape == crops0.shape == (13, 32, 32) and crops.dtype == crops0.dtype == torch.float32
    assert labels.dtype == labels0.dtype == torch.int64 and sex == sex0
    assert 0 <= crops.min() and crops.max() <= 1 and not torch.allclose(crops, crops0, atol=1e-3)
    assert torch.equal(crops, ds[0][0])  # seeded by (seed, epoch, index)
    assert not crops[~present].any()  # hidden ROIs (and the black background) stay black

    # appearance only (no jitter, dropout, downscale): ROIs differ from the plain crops, and the
    # black outside the hand stays black
    still = recipe.model_copy(update={"training": t.model_copy(update={
        "roi_dropout": 0.0, "hand_downscale": t.hand_downscale.model_copy(update={"p": 0.0}),
        "jitter": t.jitter.model_copy(update={"scale": 0.0, "shift": 0.0, "rotation": 0.0,
                                              "aspect": 0.0})})})
    plain = GradeDataset(records, still, train=False)[0][0]
    changed = GradeDataset(records, still, train=True, seed=3)[0][0]
    assert not changed[plain == 0].any()
    assert (changed - plain).abs().mean() > 0.005


def test_old_training_blocks_migrate():
    from precise_baa.augment import Photometric
    from precise_baa.grade.recipes import GradeTraining

    old = GradeTraining(gamma=1.35, contrast=0.15, brightness=0.08, noise=0.01)
    assert old.photometric == Photometric.from_legacy(gamma=1.35, contrast=0.15, brightness=0.08,
                                                      noise=0.01)
    assert old.hand_downscale.p == 0  # older recipes trained without resolution jitter
    with pytest.raises(ValueError, match="hand_downscale.range"):
        GradeTraining(hand_downscale={"p": 1, "range": (0.5, 1.5)})
