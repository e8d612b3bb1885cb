"""Radiograph appearance randomisation shared by the learned stages (domain randomisation).

The bundled weights learn from procedural phantoms, and real radiographs differ from them and
from each other in exposure, display curve, sharpness, noise and resolution. One random
appearance change, :func:`photometric_augment`, is applied to every training sample of every
learned stage (segment: the network's letterboxed view; detect: the resized hand crop, through
the mmdet transform ``RadiographAugment``; grade: the 13 ROI crops of one hand, one change per
radiograph), so that no stage leans on the phantoms' exact noise texture, contrast, sharpness or
intensity curve. Each change has a probability and a range in :class:`Photometric`, which
recipes carry (``photometric:`` blocks); ``p: 0`` turns a change off.

In the order applied (exposure, then detector, then display processing):

1. ``gradient``: a smooth intensity ramp across the image in a random direction (heel effect,
   uneven dose); ``grid``: faint anti-scatter grid lines.
2. ``blur``: Gaussian blur (focal spot, motion, scatter); ``resolution``: downscale then
   upscale (low-resolution or resized sources).
3. ``noise``: Gaussian plus signal-dependent (quantum) noise, its grain from fine to coarse.
4. ``sharpen``: unsharp masking (most systems edge-enhance their radiographs).
5. One tone curve: ``gamma``, an S-shaped (or inverse S) display curve ``s_curve``,
   ``contrast`` about the image's mean, ``brightness``, then ``clip_low`` / ``clip_high``
   saturating the darks and the highlights.

Settings import pydantic and numpy only (recipes stay light); OpenCV is imported when an image
is changed. Images are float32 in [0, 1], ``[H, W]`` or a stack ``[N, H, W]`` (one change for
the whole stack, noise drawn per pixel, so per crop). With ``keep_background`` pixels that are
exactly 0 (the hand crop's background outside the mask, padding) stay 0, as at inference.

>>> rng = np.random.default_rng(0)
>>> out = photometric_augment(np.full((64, 64), 0.5, np.float32), rng)
>>> out.shape, out.dtype, bool(0 <= out.min() and out.max() <= 1)
((64, 64), dtype('float32'), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Chance(_Settings):
    """A random change applied with probability ``p``; its strength uniform in ``range``."""

    p: float = Field(0.0, ge=0, le=1)
    range: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)}: the low end is above the high end")
        return self

    def sample(self, rng: np.random.Generator, *, log: bool = False) -> float | None:
        """The strength of this change for one sample, or None when it is off this time
        (log-uniform with ``log``). Always two draws, so one change's settings never shift
        the others' randomness."""
        on, u = rng.random(), rng.random()
        if on >= self.p:
            return None
        lo, hi = self.range
        if log:
            return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
        return float(lo + u * (hi - lo))


class Sharpen(Chance):
    """Unsharp masking ``x + amount * (x - blur(x, radius))``: ``range`` is the amount,
    ``radius`` the Gaussian sigma in pixels."""

    radius: tuple[float, float] = (1.0, 3.0)


class Noise(Chance):
    """Noise of std ``sqrt(sigma**2 + signal**2 * x)``: ``range`` is ``sigma`` (Gaussian),
    ``signal`` the signal-dependent part, ``grain`` the Gaussian sigma (pixels) that correlates
    it (0: white, per pixel)."""

    signal: tuple[float, float] = (0.0, 0.0)
    grain: tuple[float, float] = (0.0, 0.0)


class Grid(Chance):
    """Anti-scatter grid lines, vertical or horizontal: ``range`` is the amplitude, ``period``
    the line spacing in pixels."""

    period: tuple[float, float] = (2.5, 5.0)


# Allowed values per setting: (field, attribute) -> (low, high).
_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("gamma", "range"): (0.1, 10.0),
    ("s_curve", "range"): (-1.0, 1.0),
    ("contrast", "range"): (0.05, 5.0),
    ("brightness", "range"): (-1.0, 1.0),
    ("clip_low", "range"): (0.0, 0.45),
    ("clip_high", "range"): (0.0, 0.45),
    ("blur", "range"): (0.0, 20.0),
    ("sharpen", "range"): (0.0, 5.0),
    ("sharpen", "radius"): (0.3, 20.0),
    ("noise", "range"): (0.0, 0.5),
    ("noise", "signal"): (0.0, 0.5),
    ("noise", "grain"): (0.0, 5.0),
    ("resolution", "range"): (0.05, 1.0),
    ("gradient", "range"): (0.0, 0.5),
    ("grid", "range"): (0.0, 0.2),
    ("grid", "period"): (2.0, 100.0),
}

#: the flat fields of older recipes (gamma as a spread, contrast, brightness, noise sigma)
LEGACY_FIELDS = ("gamma", "contrast", "brightness", "noise")


class Photometric(_Settings):
    """Radiograph appearance randomisation (see the module docstring for each change).

    Defaults are sized for the networks' views (hand crop resized to a few hundred pixels, ROI
    crops of 64-128 px) and span what real radiographs show: from soft, clean and flat to
    edge-enhanced, noisy and contrasty.
    """

    #: chance that the image is changed at all (0: never, the identity)
    p: float = Field(1.0, ge=0, le=1)
    #: exponent of ``x ** gamma``, drawn log-uniformly in the range
    gamma: Chance = Chance(p=0.7, range=(0.6, 1.6))
    #: display curve strength: > 0 an S curve (mid-tones spread, darks and lights compressed),
    #: < 0 the inverse; its centre is drawn in [0.4, 0.6]
    s_curve: Chance = Chance(p=0.5, range=(-0.6, 0.8))
    #: contrast factor about the image's mean
    contrast: Chance = Chance(p=0.7, range=(0.6, 1.2))
    #: added intensity
    brightness: Chance = Chance(p=0.5, range=(-0.08, 0.08))
    #: share of the [0, 1] range saturated to black / to white
    clip_low: Chance = Chance(p=0.15, range=(0.0, 0.06))
    clip_high: Chance = Chance(p=0.15, range=(0.0, 0.08))
    #: Gaussian blur sigma (pixels)
    blur: Chance = Chance(p=0.25, range=(0.4, 1.3))
    #: unsharp-mask amount and radius
    sharpen: Sharpen = Sharpen(p=0.5, range=(0.3, 1.2), radius=(1.0, 3.0))
    #: noise sigma, signal-dependent part and grain
    noise: Noise = Noise(p=0.6, range=(0.0, 0.012), signal=(0.0, 0.025), grain=(0.0, 1.0))
    #: downscale factor before upscaling back (resolution drop)
    resolution: Chance = Chance(p=0.2, range=(0.4, 0.85))
    #: intensity offset at the image's edges of a linear ramp (heel effect)
    gradient: Chance = Chance(p=0.4, range=(0.0, 0.1))
    #: grid-line amplitude and period
    grid: Grid = Grid(p=0.1, range=(0.003, 0.015), period=(2.5, 5.0))
    #: pixels exactly 0 (background outside the hand mask, padding) stay 0
    keep_background: bool = True

    @model_validator(mode="after")
    def _within_bounds(self):
        for (name, attr), (lo, hi) in _BOUNDS.items():
            a, b = getattr(getattr(self, name), attr)
            if not lo <= a <= b <= hi:
                raise ValueError(f"{name}.{attr} [{a}, {b}]: must lie within [{lo}, {hi}]")
        return self

    @classmethod
    def off(cls, **changes: Any) -> Photometric:
        """Every change off (``p`` 0 each), then ``changes`` (e.g. ``noise=Noise(p=1, ...)``)."""
        off = {n: f.default.model_copy(update={"p": 0.0}) for n, f in cls.model_fields.items()
               if isinstance(f.default, Chance)}
        return cls(**{**off, **changes})

    @classmethod
    def from_legacy(cls, *, gamma: float = 1.0, contrast: float = 0.0, brightness: float = 0.0,
                    noise: float = 0.0, keep_background: bool = True) -> Photometric:
        """The settings equivalent to the flat ``gamma`` / ``contrast`` / ``brightness`` /
        ``noise`` fields of older recipes (gamma log-uniform in [1/gamma, gamma], contrast and
        brightness as spreads, a fixed Gaussian noise sigma), every other change off."""
        g = max(float(gamma), 1.0)
        return cls.off(
            gamma=Chance(p=1.0 if g > 1 else 0.0, range=(1 / g, g)),
            contrast=Chance(p=1.0 if contrast else 0.0, range=(1 - contrast, 1 + contrast)),
            brightness=Chance(p=1.0 if brightness else 0.0, range=(-brightness, brightness)),
            noise=Noise(p=1.0 if noise else 0.0, range=(noise, noise)),
            keep_background=keep_background)


def migrate_legacy(data: Any, *, keep_background: bool = True) -> Any:
    """A training-block mapping with the flat fields of older recipes (:data:`LEGACY_FIELDS`)
    moved into ``photometric`` (:meth:`Photometric.from_legacy`); anything else unchanged.

    Used by recipe models in a ``mode="before"`` validator, so weights folders written before
    the ``photometric`` block existed still load. Given both, ``photometric`` wins."""
    if not isinstance(data, Mapping) or not any(k in data for k in LEGACY_FIELDS):
        return data
    data = dict(data)
    old = {k: data.pop(k) for k in LEGACY_FIELDS if k in data}
    if "photometric" not in data:
        try:
            data["photometric"] = Photometric.from_legacy(
                **{k: float(v) for k, v in old.items()}, keep_background=keep_background)
        except (TypeError, ValueError) as e:
            raise ValueError(f"old-style fields {old}: {e}") from None
    return data


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """The drawn parameters of one change (None: that change is off this time)."""

    gradient: tuple[float, float] | None  # (offset, angle)
    grid: tuple[float, float, float, int] | None  # (amplitude, period, phase, axis)
    blur: float | None
    resolution: tuple[float, int] | None  # (factor, upscaling: 0 linear, 1 cubic)
    noise: tuple[float, float, float] | None  # (sigma, signal, grain)
    sharpen: tuple[float, float] | None  # (amount, radius)
    gamma: float | None
    s_curve: tuple[float, float] | None  # (strength, centre)
    contrast: float | None
    brightness: float | None
    clip: tuple[float, float] | None  # (low, high)


def _between(r: tuple[float, float], u: float) -> float:
    return float(r[0] + u * (r[1] - r[0]))


def _plan(s: Photometric, rng: np.random.Generator) -> _Plan:
    gradient = s.gradient.sample(rng)
    gradient_angle = rng.uniform(0, 2 * math.pi)
    grid = s.grid.sample(rng)
    grid_extra = rng.random(3)
    blur = s.blur.sample(rng)
    resolution = s.resolution.sample(rng)
    resolution_interp = int(rng.integers(2))
    noise = s.noise.sample(rng)
    noise_extra = rng.random(2)
    sharpen = s.sharpen.sample(rng)
    sharpen_radius = rng.random()
    gamma = s.gamma.sample(rng, log=True)
    s_curve = s.s_curve.sample(rng)
    s_centre = rng.uniform(0.4, 0.6)
    contrast = s.contrast.sample(rng)
    brightness = s.brightness.sample(rng)
    clip_low, clip_high = s.clip_low.sample(rng), s.clip_high.sample(rng)
    return _Plan(
        gradient=None if not gradient else (gradient, gradient_angle),
        grid=None if not grid else (grid, _between(s.grid.period, grid_extra[0]),
                                    2 * math.pi * grid_extra[1], int(grid_extra[2] < 0.5)),
        blur=blur if blur and blur >= 0.2 else None,
        resolution=None if resolution is None or resolution >= 0.999 else
        (resolution, resolution_interp),
        noise=None if noise is None else (noise, _between(s.noise.signal, noise_extra[0]),
                                          _between(s.noise.grain, noise_extra[1])),
        sharpen=None if not sharpen else (sharpen, _between(s.sharpen.radius, sharpen_radius)),
        gamma=gamma if gamma is not None and gamma != 1.0 else None,
        s_curve=None if not s_curve else (s_curve, float(s_centre)),
        contrast=contrast if contrast is not None and contrast != 1.0 else None,
        brightness=brightness or None,
        clip=None if not (clip_low or clip_high) else (clip_low or 0.0, clip_high or 0.0),
    )


def _each(stack: np.ndarray, fn) -> np.ndarray:
    """``fn`` on every 2-D image of a ``[N, H, W]`` stack (in place)."""
    for i in range(stack.shape[0]):
        stack[i] = fn(stack[i])
    return stack


def _s_curve(t: np.ndarray, strength: float, centre: float, k: float = 8.0) -> np.ndarray:
    """``t`` moved towards a logistic S curve through (0, 0), (1, 1) (``strength`` > 0) or its
    inverse (< 0) by ``|strength|``."""
    a, b = 1 / (1 + math.exp(k * centre)), 1 / (1 + math.exp(-k * (1 - centre)))
    if strength > 0:
        curve = (1 / (1 + np.exp(-k * (t - centre))) - a) / (b - a)
    else:
        q = np.clip(a + t * (b - a), 1e-6, 1 - 1e-6)
        curve = centre + np.log(q / (1 - q)) / k
    return t + abs(strength) * (curve - t)


def _tone_curve(plan: _Plan, pivot: float, n: int = 1024) -> np.ndarray | None:
    """The pointwise changes (gamma, S curve, contrast, brightness, clipping) as one lookup
    table over [0, 1] (None: identity)."""
    if all(v is None for v in (plan.gamma, plan.s_curve, plan.contrast, plan.brightness,
                               plan.clip)):
        return None
    t = np.linspace(0.0, 1.0, n)
    p = np.array([pivot])
    curves = []
    if plan.gamma is not None:
        curves.append(lambda x: x ** plan.gamma)
    if plan.s_curve is not None:
        curves.append(lambda x: np.clip(_s_curve(x, *plan.s_curve), 0, 1))
    for f in curves:
        t, p = f(t), f(p)
    if plan.contrast is not None:
        t = p[0] + plan.contrast * (t - p[0])
    if plan.brightness is not None:
        t = t + plan.brightness
    if plan.clip is not None:
        lo, hi = plan.clip
        t = (t - lo) / max(1.0 - lo - hi, 1e-3)
    return np.clip(t, 0.0, 1.0).astype(np.float32)


def photometric_augment(image: np.ndarray, rng: np.random.Generator,
                        settings: Photometric | None = None) -> np.ndarray:
    """One random radiograph-appearance change of ``image`` (float32 [0, 1], ``[H, W]`` or
    ``[N, H, W]``), drawn from ``settings`` (default :class:`Photometric`) with ``rng``.

    Returns a new float32 array of the same shape in [0, 1]; the same ``rng`` state gives the
    same result. A stack gets one change (same curve, blur, sharpening, ...) with noise drawn
    per pixel. Cost: about 5-10 ms for a 512 px image on one core.
    """
    import cv2  # here, so that recipes can import the settings without OpenCV

    s = settings if settings is not None else Photometric()
    x = np.asarray(image, dtype=np.float32)
    if x.ndim not in (2, 3) or x.size == 0:
        raise ValueError(f"photometric_augment expects an [H, W] image or an [N, H, W] stack, "
                         f"got shape {x.shape}")
    if rng.random() >= s.p:
        return np.clip(x, 0.0, 1.0)
    plan = _plan(s, rng)
    stack = x.reshape((-1,) + x.shape[-2:]).copy()
    np.clip(stack, 0.0, 1.0, out=stack)
    background = (stack == 0) if s.keep_background else None
    if background is not None and not background.any():
        background = None
    h, w = stack.shape[1:]
    fg = stack[~background] if background is not None else stack
    pivot = float(fg.mean()) if fg.size else 0.5

    if plan.gradient is not None:
        offset, angle = plan.gradient
        cos, sin = math.cos(angle), math.sin(angle)
        gain = offset / (abs(cos) + abs(sin))  # +-offset at the far corners
        u = np.linspace(-gain * cos, gain * cos, w, dtype=np.float32)
        v = np.linspace(-gain * sin, gain * sin, h, dtype=np.float32)
        stack += u[None, None, :] + v[None, :, None]
    if plan.grid is not None:
        amplitude, period, phase, axis = plan.grid
        n = w if axis else h
        lines = amplitude * np.sin(2 * math.pi * np.arange(n, dtype=np.float32) / period + phase)
        stack += lines[None, None, :] if axis else lines[None, :, None]
    if plan.blur is not None:
        sigma = plan.blur
        _each(stack, lambda im: cv2.GaussianBlur(im, (0, 0), sigma,
                                                 borderType=cv2.BORDER_REFLECT))
    if plan.resolution is not None:
        factor, cubic = plan.resolution
        interp = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
        small = (max(2, round(w * factor)), max(2, round(h * factor)))
        _each(stack, lambda im: cv2.resize(cv2.resize(im, small, interpolation=cv2.INTER_AREA),
                                           (w, h), interpolation=interp))
    if plan.noise is not None:
        sigma, signal, grain = plan.noise
        field = rng.standard_normal(stack.shape, dtype=np.float32)
        if grain >= 0.3:  # correlated noise, rescaled to unit std
            ksize = 2 * math.ceil(3 * grain) + 1
            gain = np.float32(1.0 / float((cv2.getGaussianKernel(ksize, grain) ** 2).sum()))
            _each(field, lambda f: cv2.GaussianBlur(f, (ksize, ksize), grain,
                                                    borderType=cv2.BORDER_REFLECT))
            field *= gain
        if signal > 0:
            std = np.sqrt(np.float32(sigma ** 2) + np.float32(signal ** 2) * np.clip(stack, 0, 1))
            field *= std
        else:
            field *= np.float32(sigma)
        stack += field
    if plan.sharpen is not None:
        amount, radius = plan.sharpen
        _each(stack, lambda im: cv2.addWeighted(
            im, 1 + amount, cv2.GaussianBlur(im, (0, 0), radius, borderType=cv2.BORDER_REFLECT),
            -amount, 0.0))
    np.clip(stack, 0.0, 1.0, out=stack)
    lut = _tone_curve(plan, pivot)
    if lut is not None:
        idx = stack * np.float32(len(lut) - 1)
        idx += np.float32(0.5)
        stack = lut[idx.astype(np.int32)]
    if background is not None:
        stack[background] = 0.0
    return stack.reshape(x.shape)
