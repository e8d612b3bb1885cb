"""Stage 1: palm segmentation, cleanup, hand crop, training and evaluation (phantom data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precise_baa.augment import Photometric
from precise_baa.data import load_coco, prepared_example, read_mask, read_pair
from precise_baa.errors import InputError, RecipeError, WeightsError
from precise_baa.evaluation import mask_metrics
from precise_baa.handcrop import CleanupParams, clean_mask, hand_crop, mask_bounds, mask_box
from precise_baa.interfaces import Segmenter
from precise_baa.registry import load_stage, read_recipe
from precise_baa.segment.base import letterbox, unletterbox
from precise_baa.segment.recipes import AugmentSettings, CleanupSettings
from precise_baa.segment.threshold import ThresholdSegmenter, remove_edge_strips
from precise_baa.synth import generate_dataset, render_phantom

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "recipes" / "segment-unet-tiny.yaml"
THRESHOLD = ROOT / "stages" / "segment" / "threshold.yaml"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """8 phantoms (256 px) in the generator's layout: images/, masks/, annotations.json."""
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, n=8, seed=3, size=256, progress=False)
    return out


@pytest.fixture(scope="module")
def phantom():
    return render_phantom(8, 256)


@pytest.fixture(scope="module")
def tiny_unet():
    import torch

    torch.manual_seed(0)
    return load_stage("segment", recipe=TINY, device="cpu")


# --------------------------------------------------------------------------------------------
# Recipes
@pytest.mark.parametrize("name", ["unet-resnet34", "unet-lite", "threshold"])
def test_bundled_recipes_parse(name):
    r = read_recipe("segment", ROOT / "stages" / "segment" / f"{name}.yaml")
    assert r.name == name
    assert r.cleanup.params() == CleanupParams()  # the bundled recipes keep the shared defaults


def test_cleanup_settings_mirror_cleanup_params():
    assert CleanupSettings().params() == CleanupParams()


@pytest.mark.parametrize("change, words", [
    ({"input_size": 250}, "multiple of 32"),
    ({"decoder_channels": [16, 8]}, "decoder_channels"),
    ({"cleanup": {"treshold": 0.4}}, "cleanup.treshold: unknown field"),
    ({"cleanup": {"min_area": 0.9, "max_area": 0.5}}, "min_area"),
    ({"training": {"dice_weight": 0, "bce_weight": 0}}, "nothing to learn"),
])
def test_bad_unet_recipe_is_a_clear_error(change, words):
    data = {"stage": "segment", "implementation": "unet", **change}
    with pytest.raises(RecipeError, match=words):
        load_stage("segment", recipe=data)


def test_unknown_encoder_is_a_recipe_error():
    with pytest.raises(RecipeError, match="not a segmentation-models-pytorch encoder"):
        load_stage("segment", recipe={"stage": "segment", "implementation": "unet",
                                      "encoder": "resnet3", "input_size": 64})


def test_threshold_takes_no_weights(tmp_path):
    with pytest.raises(WeightsError, match="no weights"):
        load_stage("segment", recipe=THRESHOLD, weights=tmp_path)


def test_package_import_is_light():
    code = ("import sys, precise_baa.segment, precise_baa.segment.cli\n"
            "print([m for m in ('torch', 'cv2', 'segmentation_models_pytorch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Cleanup and the threshold segmenter on phantoms
def test_clean_mask_drops_marker_strip_and_fills_holes(phantom):
    prob = phantom.mask.astype(np.float32) * 0.9
    prob[phantom.mask & (np.arange(256)[:, None] % 40 == 0) & (np.arange(256)[None] % 40 == 0)] = 0
    hole = np.zeros_like(phantom.mask)
    ys, xs = np.nonzero(phantom.mask)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    hole[cy - 2:cy + 3, cx - 2:cx + 3] = True
    prob[hole] = 0.0
    free = ~np.asarray(phantom.mask)
    marker = np.zeros_like(free)
    marker[5:25, 5:20] = True  # an "L" block away from the hand
    strip = np.zeros_like(free)
    strip[:, -4:] = True  # a border strip
    assert not (marker & phantom.mask).any() and not (strip & phantom.mask).any()
    prob[marker | strip] = 1.0
    cleaned = clean_mask(prob, CleanupParams())
    assert not cleaned[marker].any() and not cleaned[strip].any()
    assert cleaned[hole].all()
    assert mask_metrics(cleaned, phantom.mask)["dice"] > 0.98


def test_mask_bounds_and_box_match_the_nonzero_pixels(phantom):
    rng = np.random.default_rng(4)
    masks = [phantom.mask, np.zeros((7, 9), bool), np.ones((3, 5), bool)]
    for _ in range(50):
        m = np.zeros((int(rng.integers(1, 40)), int(rng.integers(1, 40))), bool)
        k = int(rng.integers(1, 12))
        m[rng.integers(0, m.shape[0], k), rng.integers(0, m.shape[1], k)] = True
        masks.append(m)
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            assert mask_bounds(m)[2:] == (0, 0)
            assert mask_box(m) == mask_box(np.ones_like(m))  # the whole image
            continue
        want = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert mask_bounds(m) == want and mask_bounds(m.astype(np.uint8) * 7) == want
        assert mask_bounds(m[:, ::-1]) == (m.shape[1] - xs.max() - 1, *want[1:])  # not contiguous
        b = mask_box(m)
        assert (b.x0, b.y0, b.x1, b.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_threshold_segmenter_removes_planted_marker_and_edge_strip(phantom):
    image = phantom.image.copy()
    # the phantom's own strips and markers are set to background: only the planted ones remain
    image[phantom.artefact_mask] = np.median(image[~phantom.mask & ~phantom.artefact_mask])
    h, w = image.shape
    marker = np.zeros((h, w), bool)
    ys, xs = np.nonzero(phantom.mask)
    # a bright marker block in the corner farthest from the hand
    y0 = 8 if ys.mean() > h / 2 else h - 28
    x0 = 8 if xs.mean() > w / 2 else w - 28
    marker[y0:y0 + 20, x0:x0 + 14] = True
    assert not (marker & phantom.mask).any()
    strip = np.zeros((h, w), bool)
    strip[-8:] = True  # a white strip along the bottom edge, across the forearm
    assert (strip & phantom.mask).any()
    image[marker | strip] = 0.97
    seg = ThresholdSegmenter()
    r = seg.segment([image])[0]
    assert r.rejected is None
    assert not r.mask[marker].any()
    assert not r.mask[strip].any()
    assert r.raw_mask[marker].all()  # found by the threshold, removed by the cleanup
    truth = phantom.mask & ~strip
    assert mask_metrics(r.mask, truth)["dice"] > 0.9
    # the hand crop: uniform background where the marker was (if it lies inside the crop)
    b = r.crop_box
    crop_marker = marker[int(b.y0):int(b.y1), int(b.x0):int(b.x1)]
    assert (r.image[crop_marker] == seg.cleanup.background).all()
    assert r.image.shape == (int(b.height), int(b.width))


def test_fill_holes_matches_scipy():
    from scipy import ndimage

    from precise_baa.handcrop import fill_holes

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


def test_remove_edge_strips_keeps_a_forearm_crossing_the_edge():
    binary = np.zeros((100, 100), bool)
    binary[:5] = True  # strip along the top
    binary[40:, 35:65] = True  # forearm reaching the bottom edge (30 % of the width)
    out = remove_edge_strips(binary, depth=0.08, fraction=0.75)
    assert not out[:5].any()
    assert out[40:, 35:65].all()


# --------------------------------------------------------------------------------------------
# The stage contract, for both implementations
@pytest.fixture(params=["threshold", "unet-tiny"])
def segmenter(request, tiny_unet):
    return ThresholdSegmenter() if request.param == "threshold" else tiny_unet


def test_segmenter_contract_any_size(segmenter, phantom):
    assert isinstance(segmenter, Segmenter)
    assert segmenter.info.stage == "segment"
    images = [phantom.image, phantom.image[:200, :150], np.ascontiguousarray(phantom.image.T[:, :230])]
    results = segmenter.segment(images)
    assert len(results) == 3
    for image, r in zip(images, results):
        assert r.mask.shape == image.shape and r.mask.dtype == bool
        assert r.raw_mask.shape == image.shape
        b = r.crop_box
        assert 0 <= b.x0 < b.x1 <= image.shape[1] and 0 <= b.y0 < b.y1 <= image.shape[0]
        assert r.image.dtype == np.float32 and r.image.shape == (int(b.height), int(b.width))
        if r.rejected:
            assert r.flags and r.flags[0].code == "no_plausible_hand"


def test_segmenter_batch_equals_single(segmenter, phantom):
    images = [phantom.image, phantom.image[:, ::-1].copy(), phantom.image[30:, 10:]]
    together = segmenter.segment(images)
    for image, r in zip(images, together):
        alone = segmenter.segment([image])[0]
        assert np.array_equal(alone.mask, r.mask)
        assert alone.crop_box == r.crop_box


def test_no_hand_is_rejected_with_a_reason():
    dark = np.full((256, 256), 0.05, np.float32)
    dark[100:110, 100:110] = 0.9  # a marker, no hand
    r = ThresholdSegmenter().segment([dark])[0]
    assert r.rejected and "no plausible hand" in r.rejected
    assert r.flags[0].code == "no_plausible_hand" and r.flags[0].stage == "segment"
    assert r.crop_box.as_list() == [0, 0, 256, 256]


def test_bad_input_is_an_input_error(tiny_unet):
    with pytest.raises(InputError, match="2-D grey image"):
        tiny_unet.segment([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(InputError, match="float32"):
        tiny_unet.segment([np.zeros((64, 64), np.uint8)])
    assert tiny_unet.segment([]) == []


def test_letterbox_round_trip(phantom):
    mask = phantom.mask[:, :180].astype(np.float32)
    canvas, hw = letterbox(mask, 128)
    assert canvas.shape == (128, 128) and hw == (128, 90)
    assert not canvas[:, 90:].any()  # zero padding right of the image part
    back = unletterbox(canvas, hw, mask.shape)
    assert back.shape == mask.shape
    assert mask_metrics(back >= 0.5, mask > 0)["dice"] > 0.97


def test_augment_moves_image_and_mask_together(phantom):
    from precise_baa.segment.train import augment

    mask, hw = letterbox(phantom.mask[:, :200].astype(np.float32), 128)
    geometric = AugmentSettings(rotation=30, scale=(0.8, 1.2), shift=0.1, hflip=1.0, vflip=1.0,
                                photometric=Photometric(p=0))
    image, target = augment(mask.copy(), mask.copy(), hw, np.random.default_rng(0), geometric)
    assert np.allclose(image, target, atol=1e-6)
    assert mask_metrics(target >= 0.5, mask >= 0.5)["dice"] < 0.9  # it did move
    grey = AugmentSettings(rotation=0, scale=(1, 1), shift=0, hflip=0)
    canvas, hw = letterbox(phantom.image[:, :200], 128)
    image, target = augment(canvas, mask, hw, np.random.default_rng(1), grey)
    assert np.array_equal(target, mask)  # appearance changes leave the mask alone
    assert not np.allclose(image[: hw[0], : hw[1]], canvas[: hw[0], : hw[1]], atol=1e-3)
    assert not image[:, hw[1]:].any()  # and the padding stays zero


def test_augment_zoom_varies_the_hand_size(phantom):
    from precise_baa.segment.train import augment

    mask, hw = letterbox(phantom.mask.astype(np.float32), 128)
    for zoom in (0.6, 1.3):
        a = AugmentSettings(rotation=0, scale=(zoom, zoom), shift=0, hflip=0,
                            photometric=Photometric(p=0))
        _, target = augment(mask, mask, hw, np.random.default_rng(0), a)
        inside = (mask > 0.5).sum() * zoom**2  # area scales with zoom^2 (minus what leaves)
        assert (target > 0.5).sum() == pytest.approx(inside, rel=0.1 if zoom < 1 else 0.3)
    assert AugmentSettings().scale == (0.6, 1.3)
    assert AugmentSettings(scale=0.15).scale == pytest.approx((0.85, 1.15))  # older recipes
    with pytest.raises(ValueError, match="need 0 < low <= high <= 4"):
        AugmentSettings(scale=(1.2, 0.8))


def test_training_items_are_augmented(phantoms):
    from precise_baa.data import segmentation_pairs
    from precise_baa.segment.train import SegmentationDataset

    recipe = read_recipe("segment", TINY)
    assert recipe.training.augment.photometric == Photometric(keep_background=False)
    ds = SegmentationDataset(segmentation_pairs(phantoms)[:2], recipe, train=True, seed=0)
    x, y = ds[0]
    x0, y0 = ds.as_eval()[0]
    assert x.shape == x0.shape == (1, 64, 64) and y.shape == y0.shape and x.dtype == x0.dtype
    assert not np.allclose(x.numpy(), x0.numpy(), atol=1e-3)
    assert np.array_equal(x.numpy(), ds[0][0].numpy())  # same (seed, epoch, index), same item
    ds.epoch = 1
    assert not np.array_equal(x.numpy(), ds[0][0].numpy())


# --------------------------------------------------------------------------------------------
# Data helpers
def test_prepared_example_is_the_hand_crop_with_boxes_moved(phantoms):
    rec = load_coco(phantoms / "annotations.json").records[0]
    crop, boxes, box = prepared_example(rec)
    image, mask = read_pair(rec.path, rec.mask_path)
    expect, expect_box = hand_crop(image, mask, CleanupParams())
    assert box == expect_box and np.array_equal(crop, expect)
    assert sorted(boxes) == sorted(rec.boxes)
    for k, b in boxes.items():
        orig = rec.boxes[k]
        assert b.x0 == pytest.approx(orig.x0 - box.x0) and b.y1 == pytest.approx(orig.y1 - box.y0)
        assert 0 <= b.x0 < b.x1 <= crop.shape[1] and 0 <= b.y0 < b.y1 <= crop.shape[0]


def test_prepared_example_needs_a_mask(phantoms):
    from dataclasses import replace

    rec = replace(load_coco(phantoms / "annotations.json").records[0], mask_path=None)
    with pytest.raises(InputError, match="mask_file"):
        prepared_example(rec)


def test_read_mask_accepts_empty_and_rejects_wrong_size(tmp_path, phantoms):
    import cv2

    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((256, 256), np.uint8))
    assert read_mask(empty).shape == (256, 256) and not read_mask(empty).any()
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((100, 256), np.uint8))
    image = sorted((phantoms / "images").iterdir())[0]
    with pytest.raises(InputError, match="must match"):
        read_pair(image, small)


# --------------------------------------------------------------------------------------------
# Training, weights, evaluation
def test_a_few_training_steps_lower_the_loss(phantoms):
    import torch

    from precise_baa.data import segmentation_pairs
    from precise_baa.segment.train import SegmentationDataset, segment_loss
    from precise_baa.segment.unet import build_unet

    torch.manual_seed(0)
    recipe = read_recipe("segment", TINY)
    ds = SegmentationDataset(segmentation_pairs(phantoms)[:4], recipe, train=False)
    x, y = (torch.stack(v) for v in zip(*(ds[i] for i in range(4))))
    model = build_unet(recipe).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = segment_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_train_then_load_gives_identical_outputs(phantoms, tmp_path, phantom):
    from precise_baa.segment.train import train_segmenter
    from precise_baa.segment.unet import UnetSegmenter

    out = tmp_path / "seg"
    res = train_segmenter(TINY, phantoms, out, epochs=2, batch_size=4, seed=0, progress=False,
                          phantom=True)
    assert res.best_epoch in (1, 2) and 0.0 <= res.best_metric <= 1.0
    assert {"model.safetensors", "recipe.json", "card.json", "history.json"} <= {p.name for p in out.iterdir()}
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"]
    card = json.loads((out / "card.json").read_text())
    assert card["phantom_trained"] is True and card["input"]["channels"] == 1
    assert card["training_data"]["train"] + card["training_data"]["val"] == 8

    loaded = load_stage("segment", weights=out, device="cpu")
    assert isinstance(loaded, UnetSegmenter)
    assert loaded.info.sha256 == card["sha256"] and loaded.info.phantom_trained
    again = load_stage("segment", weights=out, device="cpu")
    images = [phantom.image, phantom.image[:180]]
    p1, p2 = loaded.probabilities(images), again.probabilities(images)
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))

    # save_pretrained of a segmenter in memory round-trips exactly too
    resaved = loaded.save_pretrained(tmp_path / "resaved")
    p3 = load_stage("segment", weights=resaved, device="cpu").probabilities(images)
    assert all(np.array_equal(a, b) for a, b in zip(p1, p3))


def test_loading_trained_weights_never_downloads_encoder_weights(tmp_path, tiny_unet, monkeypatch):
    import segmentation_models_pytorch as smp

    from precise_baa.weights import save_weights

    recipe = tiny_unet.recipe.model_copy(update={"encoder_weights": "imagenet"})
    save_weights(tmp_path / "w", tiny_unet.model.state_dict(), recipe)
    asked, unet = [], smp.Unet

    def spy(*args, **kwargs):
        asked.append(kwargs.get("encoder_weights"))
        return unet(*args, **kwargs)

    monkeypatch.setattr(smp, "Unet", spy)
    loaded = load_stage("segment", weights=tmp_path / "w", device="cpu")
    assert asked == [None]
    assert loaded.recipe.encoder_weights == "imagenet"


def test_evaluate_segmenter_reports_before_and_after_cleanup(phantoms, tmp_path):
    from precise_baa.segment.evaluate import evaluate_segmenter, format_report

    report = evaluate_segmenter(ThresholdSegmenter(), phantoms, out=tmp_path / "r.json",
                                progress=False)
    assert report["n_images"] == 8 and len(report["per_image"]) == 8
    for key in ("before_cleanup", "after_cleanup"):
        assert set(report[key]) == {"dice", "iou", "pixel_accuracy"}
    # on phantoms with markers the cleanup must help, and the threshold baseline must be decent
    assert report["after_cleanup"]["dice"] >= report["before_cleanup"]["dice"]
    assert report["after_cleanup"]["dice"] > 0.85
    assert json.loads((tmp_path / "r.json").read_text())["n_images"] == 8
    text = format_report(report)
    assert "before cleanup" in text and "after cleanup" in text


def test_cli_train_and_evaluate(cli, phantoms, tmp_path):
    out = tmp_path / "w"
    p = cli("train", "segment", "--recipe", str(TINY), "--data", str(phantoms), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "best validation Dice" in p.stdout and (out / "model.safetensors").is_file()
    p = cli("evaluate", "segment", "--weights", str(out), "--data", str(phantoms),
            "--out", str(tmp_path / "eval.json"), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "before cleanup" in p.stdout and "after cleanup" in p.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["segmenter"]["weights"] == str(out)


def test_cli_errors_are_one_line(cli, phantoms, tmp_path):
    p = cli("train", "segment", "--recipe", str(THRESHOLD), "--data", str(phantoms),
            "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "no weights to train" in p.stderr
    p = cli("evaluate", "segment", "--recipe", str(THRESHOLD), "--data", str(tmp_path))
    assert p.returncode == 2 and "images/ and masks/" in p.stderr


# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lite_recipe_learns_phantom_palms(tmp_path):
    """A short CPU training of unet-lite segments held-out phantoms well (full-size Dice)."""
    from precise_baa.segment.evaluate import evaluate_segmenter
    from precise_baa.segment.train import train_segmenter

    generate_dataset(tmp_path / "train", n=60, seed=11, size=256, progress=False)
    generate_dataset(tmp_path / "test", n=20, seed=12, size=256, progress=False)
    train_segmenter(ROOT / "stages" / "segment" / "unet-lite.yaml", tmp_path / "train",
                    tmp_path / "w", epochs=8, seed=0, progress=False)
    seg = load_stage("segment", weights=tmp_path / "w", device="cpu")
    report = evaluate_segmenter(seg, tmp_path / "test", progress=False)
    assert report["rejected"] == 0
    assert report["after_cleanup"]["dice"] > 0.92  # 0.958 when written; random weights ~0.3


@pytest.mark.gpu
def test_unet_on_cuda_matches_cpu(tmp_path, phantom):
    import torch

    torch.manual_seed(0)
    cpu = load_stage("segment", recipe=TINY, device="cpu")
    cpu.save_pretrained(tmp_path / "w")
    gpu = load_stage("segment", weights=tmp_path / "w", device="cuda")
    images = [phantom.image, phantom.image[:200]]
    for a, b in zip(cpu.probabilities(images), gpu.probabilities(images)):
        assert np.abs(a - b).max() < 1e-3
