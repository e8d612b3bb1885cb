"""Training from partial labels: stage 4 in torch, bone-age supervision, age units, predicted
boxes, detector self-training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from precise_baa.data import load_coco
from precise_baa.errors import InputError
from precise_baa.rois import ROI_KEYS, stage_counts
from precise_baa.score import create_scorer
from precise_baa.score.torch import DifferentiableScorer, interp

RECIPES = Path(__file__).parent / "recipes"
torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Stage 4 in torch
def _one_hot(stages: dict[str, int], standard: str) -> list[torch.Tensor]:
    counts = stage_counts(standard)
    return [torch.nn.functional.one_hot(torch.tensor([stages[k]]), counts[k]).double()
            for k in ROI_KEYS]


def _hands(n: int, seed: int = 0):
    """(sex, RUS-CHN stages, TW3 stages) of phantom hands: stages as bones of one hand have them."""
    from precise_baa.synth.labels import sample_labels

    rng = np.random.default_rng(seed)
    return [(lab.sex, lab.stages, lab.stages_tw3) for lab in (sample_labels(rng) for _ in range(n))]


@pytest.mark.parametrize("standard", ["rus-chn", "tw3"])
def test_differentiable_scorer_equals_the_table_scorer_on_one_hot_stages(standard):
    torch_scorer, table = DifferentiableScorer(standard), create_scorer(standard)
    extremes = [(s, {k: v for k in ROI_KEYS}) for s in "FM"
                for v in (0, 1)] + [(s, {k: n - 1 for k, n in stage_counts(standard).items()})
                                    for s in "FM"]
    hands = [(s, rus if standard == "rus-chn" else tw3) for s, rus, tw3 in _hands(60)] + extremes
    interior = 0
    for sex, stages in hands:
        probs = _one_hot(stages, standard)
        sex_t = torch.tensor([0 if sex == "F" else 1])
        points = table.points(stages, sex)
        np.testing.assert_array_equal(torch_scorer.expected_points(probs, sex_t)[0].numpy(),
                                      [points[k] for k in ROI_KEYS])
        total = sum(points.values())
        assert float(torch_scorer.maturity_score(probs, sex_t)) == total
        age, flags = table.bone_age(total, sex)
        assert float(torch_scorer(probs, sex_t)) == pytest.approx(age, abs=1e-12)
        interior += not flags
    assert interior > 40  # most hands lie inside the curve, not at its clamped ends


def test_gradients_check_and_flow_beyond_the_curve():
    scorer = DifferentiableScorer("rus-chn")
    torch.manual_seed(0)
    logits = [torch.randn(3, n, dtype=torch.float64, requires_grad=True)
              for n in stage_counts("rus-chn").values()]
    sex = torch.tensor([0, 1, 1])

    def age(*lg):
        return scorer([x.softmax(-1) for x in lg], sex)

    assert torch.autograd.gradcheck(age, tuple(logits), eps=1e-6, atol=1e-5)
    # interpolation between knots: analytic gradient, against finite differences
    xp, fp = scorer.curve("F")[1], scorer.curve("F")[0]
    x = torch.tensor([55.0, 310.0, 777.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: interp(v, xp, fp), (x,))
    # beyond the adult end the age is clamped, the gradient is the last segment's slope
    y = torch.tensor([1200.0, -50.0], dtype=torch.float64, requires_grad=True)
    out = interp(y, xp, fp)
    assert out.tolist() == [float(fp[-1]), float(fp[0])]
    out.sum().backward()
    slopes = [(fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), (fp[1] - fp[0]) / (xp[1] - xp[0])]
    np.testing.assert_allclose(y.grad.numpy(), [float(s) for s in slopes])


def test_level_is_where_every_bone_scores_the_age():
    scorer = DifferentiableScorer("rus-chn")
    ages, sex = torch.tensor([3.0, 9.5, 14.0], dtype=torch.float64), torch.tensor([0, 1, 0])
    level = scorer.level(ages, sex)
    # each ROI at the level's fraction of its top points totals the P50 score of the age
    top = torch.stack([scorer.points(i)[:, -1] for i in range(13)], 1)[sex].double()
    back = scorer.bone_age((level[:, None] * top).sum(1), sex)
    np.testing.assert_allclose(back.numpy(), ages.numpy(), atol=1e-9)


# --------------------------------------------------------------------------------------------
# The bone-age loss
def _toy_out(stage_of_every_roi: list[int], peak: float = 8.0):
    from precise_baa.grade.models import GraderOutput

    counts = list(stage_counts("rus-chn").values())
    logits = []
    for n in counts:
        z = torch.zeros(len(stage_of_every_roi), n)
        for b, s in enumerate(stage_of_every_roi):
            z[b, min(s, n - 1)] = peak
        logits.append(z.requires_grad_())
    return GraderOutput(logits, None)


def test_bone_age_loss_terms():
    from precise_baa.grade.train import bone_age_loss

    scorer = DifferentiableScorer("rus-chn")
    sex = torch.tensor([0])
    out = _toy_out([5])
    probs = [lg.softmax(-1) for lg in out.logits]
    right = scorer(probs, sex).detach()
    assert float(bone_age_loss(out, right, sex, scorer).detach()) < 1e-6
    wrong = bone_age_loss(out, right + 3.0, sex, scorer)
    assert float(wrong.detach()) == pytest.approx(2.5, abs=1e-4)  # Huber, delta 1 y: 3 - 0.5
    wrong.backward()
    assert all(lg.grad is not None and lg.grad.abs().sum() > 0 for lg in out.logits)
    # the concentration term prefers one stage to a mix of far stages with the same points
    mix = _toy_out([0])
    for lg in mix.logits:
        lg.data[:, -1] = 8.0
    c_mix = bone_age_loss(mix, right, sex, scorer, concentration_weight=1.0) - \
        bone_age_loss(mix, right, sex, scorer)
    c_peak = bone_age_loss(out, right, sex, scorer, concentration_weight=1.0) - \
        bone_age_loss(out, right, sex, scorer)
    assert float(c_mix.detach()) > 10 * float(c_peak.detach()) + 1.0
    # the hand prior: at its least when every bone sits at the level the label implies (all
    # fused at the adult end of the curve); one bone at stage 0 instead costs about one (l2:
    # its fraction is 1 away) or much more (soft: cross entropy with the fused stage)
    adult = _toy_out([99], peak=40.0)
    end = torch.tensor([scorer.age_range("F")[1]])
    assert float(scorer.level(end.double(), sex)) == pytest.approx(1.0)

    def prior(o, kind):
        with torch.no_grad():
            return float(bone_age_loss(o, end, sex, scorer, prior_weight=1.0, prior=kind)
                         - bone_age_loss(o, end, sex, scorer))

    fused = {k: prior(adult, k) for k in ("l2", "soft")}
    adult.logits[0].data[:] = torch.zeros_like(adult.logits[0])
    adult.logits[0].data[:, 0] = 40.0
    assert fused["l2"] < 1e-6 and prior(adult, "l2") == pytest.approx(1.0, abs=1e-3)
    assert prior(adult, "soft") > fused["soft"] + 1.0
    with pytest.raises(ValueError, match="hand prior 'x'"):
        bone_age_loss(adult, end, sex, scorer, prior_weight=1.0, prior="x")
    # prior_mask: the prior averaged over the masked images only (none masked: no prior),
    # against each image's prior computed on its own
    two = _toy_out([3, 9])
    ages, sexes = torch.tensor([6.0, 12.0]), torch.tensor([0, 1])
    for kind in ("soft", "l2"):
        def loss(o, a, s, kind=kind, **kw):
            return float(bone_age_loss(o, a, s, scorer, prior=kind, **kw).detach())

        alone = []
        for i, idx in enumerate((3, 9)):
            one, a, s = _toy_out([idx]), ages[i:i + 1], sexes[i:i + 1]
            alone.append(loss(one, a, s, prior_weight=1.0) - loss(one, a, s))
        assert min(alone) > 1e-3 and abs(alone[0] - alone[1]) > 1e-3  # distinct, not zero
        plain = loss(two, ages, sexes)
        masked = {m: loss(two, ages, sexes, prior_weight=1.0, prior_mask=torch.tensor(m)) - plain
                  for m in ((True, True), (True, False), (False, True), (False, False))}
        assert masked[(True, True)] == pytest.approx(np.mean(alone), rel=1e-5)
        assert loss(two, ages, sexes, prior_weight=1.0) - plain == pytest.approx(np.mean(alone),
                                                                              rel=1e-5)
        assert masked[(True, False)] == pytest.approx(alone[0], rel=1e-5)
        assert masked[(False, True)] == pytest.approx(alone[1], rel=1e-5)
        assert masked[(False, False)] == pytest.approx(0.0, abs=1e-7)


def test_mixed_terms_count_each_image_once_or_each_term_once():
    from precise_baa.grade.train import combine_terms

    stage, age = torch.tensor(2.0), torch.tensor(0.5)
    # one stage-labelled image and three bone-age images in a batch of four
    got = combine_terms(stage, age, staged=1, aged=3, batch=4, age_weight=2.0, weighting="image")
    assert float(got) == pytest.approx(0.25 * 2.0 + 2.0 * 0.75 * 0.5)
    got = combine_terms(stage, age, staged=1, aged=3, batch=4, age_weight=2.0, weighting="term")
    assert float(got) == pytest.approx(2.0 + 2.0 * 0.5)
    # no stage-labelled image: the image form drops the stage term (0 in training then anyway)
    for w in ("image", "term"):
        assert float(combine_terms(stage, age, staged=0, aged=4, batch=4, weighting=w)) == \
            pytest.approx(2.0 * (w == "term") + 0.5)
    # the stage term's weight multiplies it in both forms
    got = combine_terms(stage, age, staged=1, aged=3, batch=4, weighting="image", stage_weight=3.0)
    assert float(got) == pytest.approx(3.0 * 0.25 * 2.0 + 0.75 * 0.5)
    got = combine_terms(stage, age, staged=1, aged=3, batch=4, weighting="term", stage_weight=3.0)
    assert float(got) == pytest.approx(3.0 * 2.0 + 0.5)
    with pytest.raises(ValueError, match="mixed_weighting"):
        combine_terms(stage, age, staged=1, aged=3, batch=4, weighting="batch")


def test_soft_prior_prefers_the_stage_at_the_level():
    """Per bone, the soft prior is least for the stage whose points fraction is nearest the
    level the bone age implies, and grows with the distance from it."""
    from precise_baa.grade.train import bone_age_loss

    scorer = DifferentiableScorer("rus-chn")
    for age, sex_i in ((6.0, 1), (12.0, 0)):
        ages, sex = torch.tensor([age]), torch.tensor([sex_i])
        level = float(scorer.level(ages, sex))
        for i in (0, 5, 12):
            frac = (scorer.points(i)[sex_i] / scorer.points(i)[sex_i, -1]).numpy()
            costs = []
            for j in range(len(frac)):
                out = _toy_out([0], peak=30.0)
                out.logits[i].data[:] = -30.0
                out.logits[i].data[0, j] = 30.0
                with torch.no_grad():
                    costs.append(float(bone_age_loss(out, ages, sex, scorer, prior_weight=1.0)
                                       - bone_age_loss(out, ages, sex, scorer)))
            best = int(np.argmin(costs))
            assert best == int(np.argmin(np.abs(frac - level)))
            target = scorer.level_target(i, scorer.level(ages, sex), sex, 0.05)
            assert int(target.argmax()) == best and float(target.sum()) == pytest.approx(1.0)
            assert costs[0] > costs[best] and costs[-1] > costs[best] or best in (0, len(frac) - 1)


# --------------------------------------------------------------------------------------------
# Manifests: ages in months, bone-age-only records
def _manifest(tmp_path: Path, images: list[dict], info: dict | None = None) -> Path:
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"info": info or {}, "images": images, "annotations": [],
                             "categories": [{"id": 1, "name": "radius"}]}))
    return p


def test_bone_age_units(tmp_path):
    im = {"id": 1, "file_name": "a.png", "sex": "F", "bone_age": 126}
    with pytest.raises(InputError, match="looks like months.*bone_age_unit"):
        load_coco(_manifest(tmp_path, [im]))
    r = load_coco(_manifest(tmp_path, [im], {"bone_age_unit": "months"})).records[0]
    assert r.bone_age == pytest.approx(10.5) and r.stages == {} and r.boxes == {}
    per_image = [dict(im, bone_age_unit="months"), {"id": 2, "file_name": "b.png", "bone_age": 7.5,
                                                    "bone_age_unit": "years"}]
    ages = [r.bone_age for r in load_coco(_manifest(tmp_path, per_image)).records]
    assert ages == pytest.approx([10.5, 7.5])
    with pytest.raises(InputError, match="unit 'weeks'"):
        load_coco(_manifest(tmp_path, [dict(im, bone_age_unit="weeks")]))
    with pytest.raises(InputError, match="outside 0..30 years"):
        load_coco(_manifest(tmp_path, [dict(im, bone_age=400)], {"bone_age_unit": "months"}))
    with pytest.raises(InputError, match="not a number"):
        load_coco(_manifest(tmp_path, [dict(im, bone_age="ten")]))


# --------------------------------------------------------------------------------------------
# Training from bone ages on phantoms
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from precise_baa.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("pl"), 8, seed=5, size=256, progress=False)


def _strip(manifest: Path, out: Path, keep_ids=(), **image_changes) -> Path:
    data = json.loads(manifest.read_text())
    for a in data["annotations"]:
        if a["image_id"] not in keep_ids:
            a.pop("stage")
            a.pop("stage_tw3")
    for im in data["images"]:
        for k, v in image_changes.items():
            im[k] = v(im) if callable(v) else v
    out.write_text(json.dumps(data))
    return out


def test_train_from_bone_ages_only(phantoms, tmp_path, cli, caplog):
    # image 1: a girl of bone age 17.5 y, beyond the RUS-CHN girls' curve (17 y)
    coco = _strip(phantoms, phantoms.parent / "ba.json",
                  bone_age=lambda im: 17.5 if im["id"] == 1 else im["bone_age"],
                  sex=lambda im: "F" if im["id"] == 1 else im["sex"])
    from precise_baa.grade.train import train_grader

    with caplog.at_level(logging.WARNING):
        res = train_grader(RECIPES / "grade-densenet-tiny.yaml", coco, phantoms.parent / "images",
                           tmp_path / "w", epochs=2, val_fraction=0.25, device="cpu",
                           supervision="bone-age", progress=False)
    card = json.loads((tmp_path / "w" / "card.json").read_text())
    td = card["training_data"]
    assert td["supervision"] == "bone-age" and td["train_with_stages"] == 0
    assert td["skipped"]["outside_curve"] == 1 and "1 bone age(s) outside the rus-chn" in caplog.text
    assert td["train"] + td["val"] == 7 and td["train_with_bone_age"] == td["train"]
    assert res.best_metric >= 0 and "bone_age_mae_vs_label" in card["metrics"]
    # the stages of a bone-age run are a grader like any other
    from precise_baa.registry import load_stage

    g = load_stage("grade", weights=tmp_path / "w", device="cpu")
    assert g.standard == "rus-chn"

    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"), "--coco",
            str(phantoms), "--out", str(tmp_path / "cli"), "--epochs", "1", "--val-fraction",
            "0.25", "--device", "cpu", "--quiet", "--supervision", "mixed")
    assert r.returncode == 0, r.stderr
    assert "val bone-age MAE" in r.stdout


def test_mixed_uses_stages_where_present(phantoms, tmp_path):
    from precise_baa.grade.train import supervised_records
    from precise_baa.registry import read_recipe

    coco = _strip(phantoms, phantoms.parent / "mixed.json", keep_ids=(1, 2))
    recipe = read_recipe("grade", RECIPES / "grade-densenet-tiny.yaml")
    recs = load_coco(coco).records
    sup = supervised_records(recs, recipe, "mixed", "m")
    assert [sup.use_stages[r.id] for r in recs] == [r.id in (1, 2) for r in recs]
    assert set(sup.ages) == {r.id for r in recs}  # a stage-labelled image's bone age counts too
    assert set(sup.reference_ages) == {r.id for r in recs}  # validation reads every bone age
    only_age = supervised_records(recs, recipe, "bone-age", "m")
    assert not any(only_age.use_stages.values()) and len(only_age.ages) == 8


def test_mixed_training_keeps_the_prior_off_staged_images(phantoms, tmp_path, monkeypatch):
    """The wiring of mixed supervision: the bone-age loss gets the images without stage labels
    as its prior mask (the recipe's hand_prior_on_staged off), and fit chooses the epoch over
    age_select_window epochs."""
    import precise_baa.grade.train as gt

    coco = _strip(phantoms, phantoms.parent / "mixed-wiring.json", keep_ids=(1, 2, 3, 4))
    staged_ids = {1, 2, 3, 4}
    masks, windows, real_loss, real_fit = [], [], gt.bone_age_loss, gt.fit

    def spy_loss(out, ages, sex, scorer, **kw):
        masks.append((ages.clone(), kw["prior_mask"]))
        return real_loss(out, ages, sex, scorer, **kw)

    def spy_fit(*a, **kw):
        windows.append(kw["select_window"])
        return real_fit(*a, **kw)

    monkeypatch.setattr(gt, "bone_age_loss", spy_loss)
    monkeypatch.setattr(gt, "fit", spy_fit)
    gt.train_grader(RECIPES / "grade-densenet-tiny.yaml", coco, phantoms.parent / "images",
                    tmp_path / "w", epochs=1, val_fraction=0.25, device="cpu",
                    supervision="mixed", progress=False, batch_size=8)
    assert windows == [3]
    images = json.loads(coco.read_text())["images"]
    known = np.array([im["bone_age"] for im in images])
    assert np.diff(np.sort(known)).min() > 1e-3  # the phantoms' bone ages tell them apart
    seen = {}
    for ages, mask in masks:
        assert mask is not None and mask.dtype == torch.bool and len(mask) == len(ages)
        for a, m in zip(ages.tolist(), mask.tolist()):
            i = int(np.abs(known - a).argmin())
            assert abs(known[i] - a) < 1e-4
            seen[images[i]["id"]] = m
    assert seen and all(m == (i not in staged_ids) for i, m in seen.items())
    assert set(seen.values()) == {True, False}  # the batches held both kinds


def test_bad_manifests_say_what_is_wrong(phantoms, tmp_path, cli):
    nothing = _strip(phantoms, tmp_path / "none.json", bone_age=None)
    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"), "--coco",
            str(nothing), "--images", str(phantoms.parent / "images"), "--out", str(tmp_path / "w"),
            "--supervision", "bone-age")
    assert r.returncode == 2 and "no image has a 'bone_age' or a 'stage'" in r.stderr
    far = _strip(phantoms, tmp_path / "far.json", bone_age=25.0)
    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"), "--coco",
            str(far), "--images", str(phantoms.parent / "images"), "--out", str(tmp_path / "w"),
            "--supervision", "bone-age")
    assert r.returncode == 2 and "8 outside curve" in r.stderr
    months = _strip(phantoms, tmp_path / "months.json", bone_age=lambda im: im["bone_age"] * 12)
    r = cli("train", "grade", "--recipe", str(RECIPES / "grade-densenet-tiny.yaml"), "--coco",
            str(months), "--images", str(phantoms.parent / "images"), "--out", str(tmp_path / "w"),
            "--supervision", "bone-age")
    assert r.returncode == 2 and "looks like months" in r.stderr


def test_boxes_and_masks_from_trained_stages(phantoms, tmp_path):
    """Bone-age data without boxes or masks: the bundled segmenter and detector supply them."""
    pytest.importorskip("mmdet")
    from precise_baa.grade.train import train_grader

    data = json.loads(phantoms.read_text())
    data["annotations"] = []
    for im in data["images"]:
        im.pop("mask_file")
    bare = phantoms.parent / "bare.json"
    bare.write_text(json.dumps(data))
    res = train_grader(RECIPES / "grade-densenet-tiny.yaml", bare, None, tmp_path / "w",
                       epochs=1, val_fraction=0.25, device="cpu", supervision="bone-age",
                       boxes_from="weights/detect-detectors-lite", progress=False)
    card = json.loads((tmp_path / "w" / "card.json").read_text())
    pred = card["training_data"]["predicted_labels"]
    assert pred["masks_predicted"] == 8 and pred["boxes_predicted"] >= 6
    assert res.best_epoch == 1
    cache = json.loads((tmp_path / "w" / "predicted-labels" / "predictions.json").read_text())
    assert len(cache["images"]) == 8 and cache["stages"]["detect"]
    # the boxes are close to the truth (the bundled detector on phantoms)
    truth = load_coco(phantoms).records
    from precise_baa.labels.predicted import predict_masks_and_boxes

    again = predict_masks_and_boxes([r.path for r in truth], tmp_path / "w" / "predicted-labels",
                                    detect="weights/detect-detectors-lite", progress=False)
    # in the image's own coordinates (not the hand crop's): centres close to the true ones
    dist = [np.hypot(*np.subtract(p.boxes[k].center, r.boxes[k].center)) / r.boxes[k].width
            for p, r in zip(again, truth) for k in p.boxes]
    assert len(dist) >= 6 * 13 and np.median(dist) < 0.15


# --------------------------------------------------------------------------------------------
# Detector self-training
def test_detector_self_training_adds_pseudo_labelled_images(tmp_path, cli):
    """The bundled detector teaches; images whose 13 boxes pass join; a student trains."""
    pytest.importorskip("mmdet")
    from precise_baa.synth import generate_dataset

    lab = generate_dataset(tmp_path / "lab", 4, seed=11, size=256, progress=False, style="raw")
    generate_dataset(tmp_path / "unl", 3, seed=12, size=320, progress=False, style="raw")
    out = tmp_path / "w"
    r = cli("train", "detect", "--recipe", "stages/detect/detectors-cascade-rcnn-lite.py",
            "--coco", str(lab), "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--val-fraction", "0.25", "--workers", "0",
            "--init-weights", "weights/detect-detectors-lite",
            "--unlabelled", str(tmp_path / "unl" / "images"), "--pseudo-threshold", "0.5")
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "card.json").read_text())
    st = card["self_training"]
    assert st["unlabelled"] == 3 and st["kept"] >= 1 and st["threshold"] == 0.5
    assert card["init_weights"] == "weights/detect-detectors-lite"
    assert card["training_data"]["train"] == 3 + st["kept"]
    pseudo = load_coco(out / "pseudo-labels" / "round-1" / "annotations.json",
                       tmp_path / "unl" / "images")
    assert len(pseudo.records) == st["kept"]
    for rec in pseudo.records:
        assert set(rec.boxes) == set(ROI_KEYS) and rec.mask_path.is_file()
    raw = json.loads((out / "pseudo-labels" / "round-1" / "annotations.json").read_text())
    assert min(a["score"] for a in raw["annotations"]) >= 0.5
    # an impossible bar keeps nothing and says what to do
    r = cli("train", "detect", "--recipe", "stages/detect/detectors-cascade-rcnn-lite.py",
            "--coco", str(lab), "--out", str(tmp_path / "w2"), "--epochs", "1",
            "--init-weights", "weights/detect-detectors-lite",
            "--unlabelled", str(tmp_path / "unl" / "images"), "--pseudo-threshold", "1.0")
    assert r.returncode == 2 and "lower --pseudo-threshold" in r.stderr


@pytest.mark.parametrize("window, best_epoch", [(1, 2), (3, 6)])
def test_best_epoch_by_a_trailing_mean_of_the_validation_metric(tmp_path, window, best_epoch):
    """A bone-age-supervised run chooses its epoch by the validation error averaged over
    ``age_select_window`` epochs: one lucky epoch (here the 2nd) is not kept over a stretch of
    good ones; window 1 keeps it. The weights written are those of the chosen epoch."""
    from precise_baa.training import fit
    from precise_baa.weights import load_weights

    model = torch.nn.Linear(1, 1)
    errors = iter([5.0, 1.0, 4.0, 2.0, 2.0, 2.0])

    def loss_fn(m, batch):
        return (m(batch) - 1.0).pow(2).mean()

    res = fit(model, lambda epoch: [torch.ones(4, 1)], loss_fn,
              lambda m: {"err": next(errors), "weight": float(m.weight)}, metric="err",
              out_dir=tmp_path / "w", recipe={"stage": "grade"}, epochs=6, lr=0.1,
              steps_per_epoch=1, higher_is_better=False, progress=False,
              select_window=window)
    assert res.best_epoch == best_epoch
    assert res.best_metric == pytest.approx(1.0 if window == 1 else 2.0)
    saved = load_weights(tmp_path / "w")
    assert saved.card["metrics"]["epoch"] == best_epoch
    assert float(saved.state_dict["weight"]) == pytest.approx(res.history[best_epoch - 1]["weight"])
