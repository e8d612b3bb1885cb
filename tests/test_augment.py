"""Radiograph appearance randomisation (precise_baa.augment): determinism, range, background,
every change has an effect, settings validation and old recipes' migration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from precise_baa.augment import (
    Chance,
    Grid,
    Noise,
    Photometric,
    Sharpen,
    migrate_legacy,
    photometric_augment,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hand() -> np.ndarray:
    """A phantom hand crop as the pipeline makes it: normalised inside the mask, 0 outside."""
    from precise_baa.handcrop import CleanupParams, hand_crop
    from precise_baa.synth import render_phantom

    p = render_phantom(4, 256, style="preprocessed")
    crop, _ = hand_crop(p.image, p.mask, CleanupParams())
    return crop


def _all_on() -> Photometric:
    """Every change, always."""
    d = Photometric()
    return Photometric(**{n: getattr(d, n).model_copy(update={"p": 1.0})
                          for n, f in Photometric.model_fields.items()
                          if isinstance(f.default, Chance)})


def test_same_rng_same_result_and_seeds_differ(hand):
    a = photometric_augment(hand, np.random.default_rng(3))
    b = photometric_augment(hand, np.random.default_rng(3))
    c = photometric_augment(hand, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    never = Photometric(p=0)
    assert np.array_equal(hand, photometric_augment(hand, np.random.default_rng(3), never))


@pytest.mark.parametrize("settings", [Photometric(), _all_on()], ids=["defaults", "all-on"])
def test_output_is_float32_in_unit_range_with_background_kept(hand, settings):
    background = hand == 0
    assert background.mean() > 0.2  # the crop has a black background to keep
    for seed in range(12):
        out = photometric_augment(hand, np.random.default_rng(seed), settings)
        assert out.shape == hand.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert not out[background].any()


def test_background_changes_when_not_kept(hand):
    s = Photometric.off(brightness=Chance(p=1, range=(0.05, 0.1)), keep_background=False)
    out = photometric_augment(hand, np.random.default_rng(0), s)
    assert out[hand == 0].min() >= 0.05


def test_integer_and_out_of_range_input_and_bad_shapes():
    x = np.linspace(-0.5, 1.5, 64 * 64).reshape(64, 64)  # float64, outside [0, 1]
    out = photometric_augment(x, np.random.default_rng(0), _all_on())
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    for bad in (np.zeros(5), np.zeros((2, 2, 2, 2)), np.zeros((0, 4))):
        with pytest.raises(ValueError, match=r"\[H, W\] image or an \[N, H, W\] stack"):
            photometric_augment(bad, np.random.default_rng(0))


CHANGES = {
    "gamma": Chance(p=1, range=(1.5, 1.6)),
    "s_curve": Chance(p=1, range=(0.8, 1.0)),
    "contrast": Chance(p=1, range=(0.6, 0.7)),
    "brightness": Chance(p=1, range=(0.05, 0.1)),
    "clip_low": Chance(p=1, range=(0.05, 0.1)),
    "clip_high": Chance(p=1, range=(0.05, 0.1)),
    "blur": Chance(p=1, range=(1.0, 1.5)),
    "sharpen": Sharpen(p=1, range=(1.0, 1.5), radius=(1.0, 2.0)),
    "noise": Noise(p=1, range=(0.01, 0.02), signal=(0.01, 0.02), grain=(0.5, 1.0)),
    "resolution": Chance(p=1, range=(0.3, 0.4)),
    "gradient": Chance(p=1, range=(0.05, 0.1)),
    "grid": Grid(p=1, range=(0.01, 0.02), period=(3.0, 4.0)),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_each_change_has_an_effect(hand, name):
    rng = np.random.default_rng(1)
    out = photometric_augment(hand, rng, Photometric.off(**{name: CHANGES[name]}))
    fg = hand > 0
    assert np.abs(out - hand)[fg].mean() > 0.003, name
    assert not out[~fg].any()
    off = Photometric.off(**{name: CHANGES[name].model_copy(update={"p": 0.0})})
    assert np.array_equal(photometric_augment(hand, np.random.default_rng(1), off), hand)


def test_specific_effects(hand):
    fg = hand > 0
    rng = np.random.default_rng

    def run(**change):
        return photometric_augment(hand, rng(0), Photometric.off(**change))

    mid = fg & (hand < 0.8)
    assert run(brightness=Chance(p=1, range=(0.1, 0.1)))[mid].mean() > hand[mid].mean() + 0.09
    assert run(contrast=Chance(p=1, range=(0.5, 0.5)))[fg].std() < 0.6 * hand[fg].std()
    assert (run(clip_high=Chance(p=1, range=(0.2, 0.2))) == 1).mean() > (hand == 1).mean() + 0.02
    inner = fg[:, 1:-1] & fg[:, 2:] & fg[:, :-2]

    def grad(im):
        return np.abs(np.diff(im, axis=1))[:, :-1][inner].mean()

    assert grad(run(blur=Chance(p=1, range=(1.5, 1.5)))) < 0.8 * grad(hand)
    assert grad(run(sharpen=Sharpen(p=1, range=(1.5, 1.5), radius=(2, 2)))) > 1.3 * grad(hand)
    flat = np.full((128, 128), 0.5, np.float32)
    white = photometric_augment(flat, rng(0), Photometric.off(noise=Noise(p=1, range=(0.02, 0.02))))
    assert white.std() == pytest.approx(0.02, rel=0.1)
    grainy = photometric_augment(flat, rng(0), Photometric.off(
        noise=Noise(p=1, range=(0.02, 0.02), grain=(1.5, 1.5))))
    assert grainy.std() == pytest.approx(0.02, rel=0.2)  # the same strength, coarser
    assert np.abs(np.diff(grainy, axis=1)).mean() < 0.5 * np.abs(np.diff(white, axis=1)).mean()
    ramp = photometric_augment(flat, rng(0),
                               Photometric.off(gradient=Chance(p=1, range=(0.1, 0.1))))
    assert ramp.max() - ramp.min() == pytest.approx(0.2, abs=0.01)  # +-0.1 at the far corners


def test_a_stack_shares_one_change_with_noise_per_crop(hand):
    stack = np.stack([hand[:64, :64], hand[:64, :64], hand[:64, :64]])
    tone = Photometric.off(gamma=CHANGES["gamma"], contrast=CHANGES["contrast"],
                           sharpen=CHANGES["sharpen"])
    out = photometric_augment(stack, np.random.default_rng(2), tone)
    assert out.shape == stack.shape
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
    noisy = photometric_augment(stack, np.random.default_rng(2),
                                Photometric.off(noise=CHANGES["noise"]))
    assert not np.array_equal(noisy[0], noisy[1])


def test_default_cost_is_a_few_ms_at_512px(hand):
    import cv2

    image = cv2.resize(hand, (512, 512))
    rng = np.random.default_rng(0)
    times = []
    for _ in range(15):
        t = time.perf_counter()
        photometric_augment(image, rng)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 0.05  # ~3-10 ms on one free core; generous for shared machines


# --------------------------------------------------------------------------------------------
# Settings
@pytest.mark.parametrize("change, words", [
    ({"gamma": {"p": 1, "range": (0.0, 2.0)}}, "gamma.range [0.0, 2.0]: must lie within"),
    ({"noise": {"p": 1, "range": (0.0, 0.01), "grain": (0.0, 9.0)}}, "noise.grain"),
    ({"grid": {"p": 1, "range": (0.0, 0.01), "period": (1.0, 3.0)}}, "grid.period"),
    ({"blur": {"p": 1, "range": (2.0, 1.0)}}, "low end is above the high end"),
    ({"blur": {"p": 1.5, "range": (1.0, 2.0)}}, "less than or equal to 1"),
    ({"nosie": {"p": 1}}, "Extra inputs are not permitted"),
])
def test_settings_errors_name_the_field(change, words):
    with pytest.raises(ValidationError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Photometric(**change)


def test_legacy_fields_migrate():
    old = {"epochs": 3, "gamma": 1.5, "contrast": 0.15, "brightness": 0.08, "noise": 0.01}
    new = migrate_legacy(old)
    assert "gamma" not in new and new["epochs"] == 3
    p = new["photometric"]
    assert p == Photometric.from_legacy(gamma=1.5, contrast=0.15, brightness=0.08, noise=0.01)
    assert p.gamma.p == 1 and p.gamma.range == pytest.approx((1 / 1.5, 1.5))
    assert p.contrast.range == pytest.approx((0.85, 1.15)) and p.noise.range == (0.01, 0.01)
    assert p.sharpen.p == 0 and p.blur.p == 0  # nothing the old recipe did not do
    assert migrate_legacy({"epochs": 3}) == {"epochs": 3}
    assert migrate_legacy({"gamma": 1.2, "photometric": {"p": 0.5}}) == {"photometric": {"p": 0.5}}


@pytest.mark.parametrize("stage, folder", [("segment", "segment-unet-lite"),
                                           ("grade", "grade-densenet-attention-lite")])
def test_recipes_from_before_the_photometric_block_still_parse(stage, folder):
    """Weights folders written before the photometric block (tests/fixtures/legacy-recipes:
    the recipe.json of the bundled weights of 2026-11-23) still load, migrated."""
    from precise_baa.registry import parse_recipe

    data = json.loads((ROOT / "tests/fixtures/legacy-recipes" / f"{folder}.json").read_text())
    assert "photometric" not in json.dumps(data)
    recipe = parse_recipe(stage, data, folder)
    t = recipe.training
    photometric = t.augment.photometric if stage == "segment" else t.photometric
    assert photometric.sharpen.p == 0 and photometric.gamma.p == 1  # what they were trained with
    again = parse_recipe(stage, json.loads(recipe.model_dump_json()), folder)  # and round-trips
    assert again == recipe


@pytest.mark.parametrize("stage, folder", [("segment", "segment-unet-lite"),
                                           ("grade", "grade-densenet-attention-lite")])
def test_bundled_weights_recipes_parse_and_round_trip(stage, folder):
    from precise_baa.registry import parse_recipe

    data = json.loads((ROOT / "weights" / folder / "recipe.json").read_text())
    recipe = parse_recipe(stage, data, folder)
    t = recipe.training
    photometric = t.augment.photometric if stage == "segment" else t.photometric
    assert photometric.p == 1.0 and photometric.sharpen.p > 0  # trained with randomisation
    assert parse_recipe(stage, json.loads(recipe.model_dump_json()), folder) == recipe


def test_settings_import_neither_opencv_nor_stages():
    """augment.py is a foundation module: no stage imports; the recipes stay light."""
    import ast

    tree = ast.parse((ROOT / "precise_baa" / "augment.py").read_text())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert local <= {None}, local
    code = ("import sys, precise_baa.augment, precise_baa.segment.recipes, "
            "precise_baa.grade.recipes; print('cv2' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["False", "False"], r.stderr
