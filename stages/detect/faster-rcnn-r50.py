# Faster R-CNN R50-FPN for the 13 RUS ROIs: a plain two-stage detector, to show how a detect
# stage is swapped (pipeline recipe line `detect: {recipe: stages/detect/faster-rcnn-r50.py}` or
# `--detect stages/detect/faster-rcnn-r50.py`). About a third of DetectoRS's parameters and
# several times faster; no RFP, no SAC, one box head. Derived from mmdet 3.3's
# configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py; the 13 ROI classes, hand-crop data,
# schedule and runtime are shared with the DetectoRS recipes (stages/detect/_base_/hand_rois.py).
from mmengine.config import read_base

with read_base():
    from ._base_.hand_rois import *  # noqa: F401,F403

image_scale = (512, 512)  # the resized hand crop fits in this box (keep_ratio); no AP gain above
# 256 px for the 13 ROIs with the lite backbone (benchmarks/detect_input_size.py), so twice that
fpn_channels = 256
fc_channels = 1024
anchor_scale = 8  # anchor side = anchor_scale x stride (4..64)
rpn_proposals = (2000, 1000)  # kept after NMS: training, testing
rcnn_samples = 512
batch_size = 2
pretrained_backbone = 'torchvision://resnet50'
max_epochs = 24

model = dict(
    type='FasterRCNN',
    data_preprocessor=data_preprocessor(),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        # a pretrained backbone keeps its stem and BatchNorm statistics; a random one trains them
        frozen_stages=1 if pretrained_backbone else -1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=bool(pretrained_backbone),
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained_backbone) if pretrained_backbone else None),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=fpn_channels,
        num_outs=5),
    rpn_head=rpn_head(fpn_channels, anchor_scale, loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=roi_extractor(fpn_channels),
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            in_channels=fpn_channels,
            fc_out_channels=fc_channels,
            roi_feat_size=7,
            num_classes=num_classes,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=rpn_train_cfg(allowed_border=-1),
        rpn_proposal=rpn_proposal_cfg(rpn_proposals[0]),
        rcnn=rcnn_train_cfg(0.5, rcnn_samples)),
    test_cfg=dict(
        rpn=rpn_proposal_cfg(rpn_proposals[1]),
        rcnn=rcnn_test_cfg()))
train_pipeline, test_pipeline = pipelines(image_scale)
train_dataloader, val_dataloader, test_dataloader = dataloaders(batch_size, train_pipeline,
                                                                test_pipeline)
train_cfg, param_scheduler, optim_wrapper = sgd_schedule(max_epochs)
