# DetectoRS Cascade R-CNN R50 for the 13 RUS ROIs (the precise-BAA detector): Recursive Feature
# Pyramid (rfp_steps=2, ASPP), Switchable Atrous Convolution in stages 2-4 of both backbone
# passes, cascade IoU 0.5/0.6/0.7. Derived from mmdet 3.3's
# configs/detectors/detectors_cascade-rcnn_r50_1x_coco.py and its _base_ files
# (cascade-rcnn_r50_fpn); data, schedules and runtime come from hand_rois.py.
# `detectors_model(...)` builds the model from the sizes below; a config inheriting this one
# changes a size and calls it again (stages/detect/detectors-cascade-rcnn-lite.py).
from mmengine.config import read_base

with read_base():
    from .hand_rois import *  # noqa: F401,F403

image_scale = (512, 512)  # the resized hand crop fits in this box (keep_ratio); no AP gain above
# 256 px for the 13 ROIs with the lite backbone (benchmarks/detect_input_size.py), so twice that
base_channels = 64  # ResNet-50 width (stage outputs 4x, 8x, 16x, 32x this)
fpn_channels = 256  # RFP/FPN width; ASPP gives fpn_channels // 4 per branch
fc_channels = 1024  # box head width
anchor_scale = 8  # anchor side = anchor_scale x stride (4..64)
rpn_proposals = (2000, 300)  # kept after NMS: training, testing (13 objects per hand: 300 is ample)
rcnn_samples = 512  # RoIs sampled per image and cascade stage in training
batch_size = 2
sac_deform = True  # SAC's deformable offsets
pretrained_backbone = 'torchvision://resnet50'
max_epochs = 24

cascade_stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
cascade_ious = (0.5, 0.6, 0.7)


def detectors_backbone(base_channels, sac_deform, pretrained_backbone, rfp_inplanes=None):
    """DetectoRS ResNet-50 (the first pass, or with ``rfp_inplanes`` the RFP's second)."""
    # a pretrained backbone keeps its stem and BatchNorm statistics; a random one trains them
    net = dict(
        type='DetectoRS_ResNet',
        depth=50,
        base_channels=base_channels,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1 if pretrained_backbone else -1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=bool(pretrained_backbone),
        style='pytorch',
        conv_cfg=dict(type='ConvAWS'),
        sac=dict(type='SAC', use_deform=sac_deform),
        stage_with_sac=(False, True, True, True))
    if rfp_inplanes is None:
        net.update(output_img=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained_backbone)
                   if pretrained_backbone else None)
    else:
        net.update(rfp_inplanes=rfp_inplanes, pretrained=pretrained_backbone)
    return net


def detectors_model(base_channels, fpn_channels, fc_channels, anchor_scale, rpn_proposals,
                    rcnn_samples, sac_deform, pretrained_backbone, test_score_thr=0.05,
                    test_max_per_img=100):
    return dict(
        type='CascadeRCNN',
        data_preprocessor=data_preprocessor(),
        backbone=detectors_backbone(base_channels, sac_deform, pretrained_backbone),
        neck=dict(
            type='RFP',
            in_channels=[base_channels * 4, base_channels * 8, base_channels * 16,
                         base_channels * 32],
            out_channels=fpn_channels,
            num_outs=5,
            rfp_steps=2,
            aspp_out_channels=fpn_channels // 4,
            aspp_dilations=(1, 3, 6, 1),
            rfp_backbone=detectors_backbone(base_channels, sac_deform, pretrained_backbone,
                                            rfp_inplanes=fpn_channels)),
        rpn_head=rpn_head(fpn_channels, anchor_scale,
                          loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(
            type='CascadeRoIHead',
            num_stages=3,
            stage_loss_weights=[1, 0.5, 0.25],
            bbox_roi_extractor=roi_extractor(fpn_channels),
            bbox_head=[
                dict(
                    type='Shared2FCBBoxHead',
                    in_channels=fpn_channels,
                    fc_out_channels=fc_channels,
                    roi_feat_size=7,
                    num_classes=num_classes,
                    bbox_coder=dict(
                        type='DeltaXYWHBBoxCoder',
                        target_means=[0., 0., 0., 0.],
                        target_stds=stds),
                    reg_class_agnostic=True,
                    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                    loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
                for stds in cascade_stds
            ]),
        train_cfg=dict(
            rpn=rpn_train_cfg(allowed_border=0),
            rpn_proposal=rpn_proposal_cfg(rpn_proposals[0]),
            rcnn=[rcnn_train_cfg(iou, rcnn_samples) for iou in cascade_ious]),
        test_cfg=dict(
            rpn=rpn_proposal_cfg(rpn_proposals[1]),
            rcnn=rcnn_test_cfg(test_score_thr, test_max_per_img)))


model = detectors_model(base_channels, fpn_channels, fc_channels, anchor_scale, rpn_proposals,
                        rcnn_samples, sac_deform, pretrained_backbone)
train_pipeline, test_pipeline = pipelines(image_scale)
train_dataloader, val_dataloader, test_dataloader = dataloaders(batch_size, train_pipeline,
                                                                test_pipeline)
train_cfg, param_scheduler, optim_wrapper = sgd_schedule(max_epochs)
