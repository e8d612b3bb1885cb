# DetectoRS Cascade R-CNN R50 for the 13 RUS ROIs (the precise-BAA detector): Recursive Feature
# Pyramid (rfp_steps=2, ASPP), Switchable Atrous Convolution with deformable offsets in stages
# 2-4 of both backbone passes, cascade IoU 0.5/0.6/0.7, hand crops resized into 512 px, SGD 1x
# schedule. The whole recipe is the base config; see stages/detect/_base_/.
from mmengine.config import read_base

with read_base():
    from ._base_.detectors_cascade_rcnn import *  # noqa: F401,F403
