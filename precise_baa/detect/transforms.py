"""precise-baa's mmdet data transforms (registered by :func:`.config.register_mmdet`).

``RadiographAugment`` brings the shared radiograph appearance randomisation
(:func:`precise_baa.augment.photometric_augment`) into an mmdet training pipeline::

    dict(type='RadiographAugment')                                   # the library defaults
    dict(type='RadiographAugment', noise=dict(p=0.8, range=(0.0, 0.02)), keep_background=True)

Its keyword arguments are the fields of :class:`precise_baa.augment.Photometric` (checked when
the pipeline is built: an unknown or out-of-range field fails with its name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mmcv.transforms import BaseTransform
from pydantic import ValidationError

from ..augment import Photometric, photometric_augment
from ..errors import RecipeError
from ..schemas import format_validation_error


class RadiographAugment(BaseTransform):
    """One random radiograph appearance change of ``results['img']``.

    The image (uint8 or float in 0-255, ``H x W`` or ``H x W x C`` with the grey hand crop
    repeated in the channels) is changed as one grey image and written back to every channel
    in its dtype; boxes are untouched. Randomness comes from numpy's global generator, which
    mmengine seeds per run and data worker, so training runs repeat.
    """

    def __init__(self, **settings: Any):
        try:
            self.settings = Photometric(**settings)
        except ValidationError as e:
            raise RecipeError(format_validation_error(e, "RadiographAugment (mmdet pipeline)")
                              ) from None

    def transform(self, results: dict) -> dict:
        img = results["img"]
        grey = img if img.ndim == 2 else img.mean(axis=2, dtype=np.float32)
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        out = photometric_augment(np.asarray(grey, np.float32) / 255.0, rng, self.settings) * 255.0
        if img.dtype == np.uint8:
            out = np.rint(out).astype(np.uint8)
        else:
            out = out.astype(img.dtype)
        if img.ndim == 3:
            out = np.repeat(out[:, :, None], img.shape[2], axis=2)
        results["img"] = out
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"
