"""The detector's inference form (precise_baa.detect.fast): same outputs, the original untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precise_baa.detect.config import build_model, load_config, with_test_proposals
from precise_baa.detect.fast import FrozenSAC, inference_copy
from precise_baa.detect.model import MmdetDetector
from precise_baa.detect.recipe import DetectRecipe
from precise_baa.errors import RecipeError
from precise_baa.handcrop import hand_crop
from precise_baa.registry import trusted_recipes
from precise_baa.synth import render_phantom

torch.set_num_threads(1)


def _config(recipe: DetectRecipe):
    with trusted_recipes():  # the test recipe lives outside stages/
        return load_config(recipe)


def _tiny(detect_tiny, *, deform: bool):
    """The test-size DetectoRS with every parameter randomised (the initial switch, context and
    offset weights are zeros, which would hide a wrong rewrite) and BatchNorm statistics
    gathered on random images (so activations stay finite through both backbone passes)."""
    recipe = DetectRecipe(config=str(detect_tiny))
    cfg = _config(recipe)
    for backbone in (cfg.model.backbone, cfg.model.neck.rfp_backbone):
        backbone.sac.use_deform = deform
    model = build_model(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration batches
        model.train()
        for _ in range(2):
            model.extract_feat(torch.randn(2, 3, 160, 160, generator=g) * 50)
    return model.eval(), recipe, cfg


@pytest.fixture(scope="module")
def crops():
    return [hand_crop(p.image, p.mask)[0] for p in (render_phantom(s, size=320) for s in (5, 6))]


@pytest.mark.parametrize("deform", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_form_gives_the_same_features_and_boxes(detect_tiny, crops, deform, channels_last):
    model, recipe, cfg = _tiny(detect_tiny, deform=deform)
    fast = inference_copy(model, channels_last=channels_last)
    # the rewrite happened: SAC frozen, standardised convolutions plain, BatchNorms folded
    assert any(isinstance(m, FrozenSAC) for m in fast.modules())
    assert not any(type(m).__name__ in ("SAConv2d", "ConvAWS2d") for m in fast.modules())
    bn = lambda m: sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    assert bn(fast) < bn(model) // 2
    roi = [m for m in fast.modules() if type(m).__name__ == "RoIAlign"]
    assert roi and all(m.use_torchvision for m in roi)
    assert not any(m.use_torchvision for m in model.modules() if type(m).__name__ == "RoIAlign")

    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1)) * 50
    with torch.inference_mode():
        ref, got = model.extract_feat(x), fast.extract_feat(x)
    for a, b in zip(ref, got, strict=True):
        assert b.is_contiguous()  # mmcv's RoIAlign reads NCHW memory
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))

    det = MmdetDetector(model, cfg, recipe.model_copy(update={"fast_inference": False}))
    slow_raw = det.predict_raw(crops)
    det.recipe = det.recipe.model_copy(update={"fast_inference": True})
    fast_raw = det.predict_raw(crops)
    for s, f in zip(slow_raw, fast_raw, strict=True):
        top = np.argsort(-s.scores)[:20]
        assert len(f.scores) == len(s.scores)
        np.testing.assert_allclose(f.scores[top], s.scores[top], atol=1e-4)
        np.testing.assert_allclose(f.bboxes[top], s.bboxes[top], atol=0.05)


def test_the_original_model_is_untouched_and_a_changed_model_is_refrozen(detect_tiny, crops):
    model, recipe, cfg = _tiny(detect_tiny, deform=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    det = MmdetDetector(model, cfg, recipe)
    first = det.predict_raw(crops[:1])[0]
    fast = det.inference_model()
    assert fast is not det.model and det.inference_model() is fast  # built once, then reused
    after = det.model.state_dict()
    assert after.keys() == before.keys()  # saving writes the trainable model's tensors
    for k, v in before.items():
        assert torch.equal(after[k], v), k
        assert after[k].is_contiguous(), k
    # weights changed in place (loading, an optimiser step): the inference form follows
    with torch.no_grad():
        for p in det.model.roi_head.parameters():
            p.mul_(1.5)
    assert det.inference_model() is not fast
    changed = det.predict_raw(crops[:1])[0]
    det.recipe = det.recipe.model_copy(update={"fast_inference": False})
    assert det.inference_model() is det.model
    slow = det.predict_raw(crops[:1])[0]
    np.testing.assert_allclose(np.sort(changed.scores)[-10:], np.sort(slow.scores)[-10:], atol=1e-4)
    assert not np.allclose(np.sort(first.scores)[-10:], np.sort(changed.scores)[-10:], atol=1e-4)


def test_test_proposals_override(detect_tiny):
    cfg = _config(DetectRecipe(config=str(detect_tiny), proposals=40))
    assert cfg.model.test_cfg.rpn.max_per_img == 40 and cfg.rpn_proposals[1] == 40
    assert cfg.model.train_cfg.rpn_proposal.max_per_img != 40  # training untouched
    with pytest.raises(RecipeError, match="test_cfg.rpn"):
        with_test_proposals({"model": {"type": "RetinaNet", "test_cfg": {"nms_pre": 1000}}}, 50)
    with pytest.raises(ValueError):
        DetectRecipe(config=str(detect_tiny), proposals=5)  # fewer than the 13 ROIs


def test_a_model_built_under_inference_mode_still_predicts(detect_tiny, crops):
    from precise_baa.detect.fast import tensor_versions

    with torch.inference_mode():  # e.g. a worker that builds its stages inside inference mode
        model, recipe, cfg = _tiny(detect_tiny, deform=False)
        det = MmdetDetector(model, cfg, recipe)
        assert isinstance(tensor_versions(det.model), int)
        raw = det.predict_raw(crops[:1])[0]
    assert len(raw.scores) > 0
