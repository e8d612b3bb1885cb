# DetectoRS Cascade R-CNN R50 for the 13 RUS ROIs (the precise-BAA detector).
#
# Self-contained mmdet 3.x config, derived from mmdet 3.3's
# configs/detectors/detectors_cascade-rcnn_r50_1x_coco.py and its _base_ files (cascade-rcnn_r50_fpn,
# coco_detection, schedule_1x, default_runtime): Recursive Feature Pyramid (rfp_steps=2, ASPP),
# Switchable Atrous Convolution in stages 2-4 of both backbone passes, cascade IoU 0.5/0.6/0.7.
# Changes for hand radiographs:
# - 13 classes named by ROI key (precise_baa.rois.ROI_KEYS; the order is the label order);
# - input: the segmenter's hand crop (grayscale, repeated to 3 channels) resized into image_scale;
# - augmentation: small rotation/scale/shift and brightness/contrast, no flip (left hands);
# - no download unless asked: precise-baa drops the ImageNet `init_cfg`/`pretrained` entries
#   below unless the recipe says `pretrained: true`; without them the backbone trains from
#   scratch (frozen_stages=-1, norm_eval=False: nothing pretrained to freeze).
# Training data paths, epochs and batch size are filled in by `precise-baa train detect`.
# detectors-cascade-rcnn-lite.py differs only in the sizes below and its optimiser.

classes = ('radius', 'ulna', 'mc1', 'mc3', 'mc5', 'pp1', 'pp3', 'pp5', 'mp3', 'mp5', 'dp1',
           'dp3', 'dp5')
metainfo = dict(classes=classes)
num_classes = len(classes)
image_scale = (1024, 1024)  # the resized hand crop fits in this box (keep_ratio)
base_channels = 64  # ResNet-50 width (stage outputs 4x, 8x, 16x, 32x this)
fpn_channels = 256  # RFP/FPN width; ASPP gives fpn_channels // 4 per branch
fc_channels = 1024  # box head width
anchor_scale = 8  # anchor side = anchor_scale x stride (4..64)
rpn_proposals = (2000, 300)  # kept after NMS: training, testing (13 objects per hand: 300 is ample)
rcnn_samples = 512  # RoIs sampled per image and cascade stage in training
batch_size = 2
pretrained_backbone = 'torchvision://resnet50'
# a pretrained backbone keeps its stem and BatchNorm statistics; a random one trains them
frozen_stages = 1 if pretrained_backbone else -1
norm_eval = bool(pretrained_backbone)

default_scope = 'mmdet'

backbone = dict(
    type='DetectoRS_ResNet',
    depth=50,
    base_channels=base_channels,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    frozen_stages=frozen_stages,
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=norm_eval,
    style='pytorch',
    conv_cfg=dict(type='ConvAWS'),
    sac=dict(type='SAC', use_deform=True),
    stage_with_sac=(False, True, True, True),
    output_img=True,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained_backbone) if pretrained_backbone else None)

cascade_stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
cascade_ious = (0.5, 0.6, 0.7)

model = dict(
    type='CascadeRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=backbone,
    neck=dict(
        type='RFP',
        in_channels=[base_channels * 4, base_channels * 8, base_channels * 16,
                     base_channels * 32],
        out_channels=fpn_channels,
        num_outs=5,
        rfp_steps=2,
        aspp_out_channels=fpn_channels // 4,
        aspp_dilations=(1, 3, 6, 1),
        rfp_backbone=dict(
            rfp_inplanes=fpn_channels,
            type='DetectoRS_ResNet',
            depth=50,
            base_channels=base_channels,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            frozen_stages=frozen_stages,
            norm_cfg=dict(type='BN', requires_grad=True),
            norm_eval=norm_eval,
            conv_cfg=dict(type='ConvAWS'),
            sac=dict(type='SAC', use_deform=True),
            stage_with_sac=(False, True, True, True),
            pretrained=pretrained_backbone,
            style='pytorch')),
    rpn_head=dict(
        type='RPNHead',
        in_channels=fpn_channels,
        feat_channels=fpn_channels,
        anchor_generator=dict(
            type='AnchorGenerator',
            scales=[anchor_scale],
            ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        type='CascadeRoIHead',
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=fpn_channels,
            featmap_strides=[4, 8, 16, 32]),
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
        rpn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
                ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler',
                num=256,
                pos_fraction=0.5,
                neg_pos_ub=-1,
                add_gt_as_proposals=False),
            allowed_border=0,
            pos_weight=-1,
            debug=False),
        rpn_proposal=dict(
            nms_pre=rpn_proposals[0],
            max_per_img=rpn_proposals[0],
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=[
            dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=iou,
                    neg_iou_thr=iou,
                    min_pos_iou=iou,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=rcnn_samples,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)
            for iou in cascade_ious
        ]),
    test_cfg=dict(
        rpn=dict(
            nms_pre=rpn_proposals[1],
            max_per_img=rpn_proposals[1],
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(
            score_thr=0.05,
            nms=dict(type='nms', iou_threshold=0.5),
            max_per_img=100)))

# ------------------------------------------------------------------------------------ data
# Images are the hand crops of precise_baa.segment (written as 8-bit PNG for training; at
# inference the same crops are passed in memory). Background is 0, so affine borders are 0.
dataset_type = 'CocoDataset'
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomAffine', max_rotate_degree=8.0, max_translate_ratio=0.05,
         scaling_ratio_range=(0.85, 1.15), max_shear_degree=0.0, border_val=(0, 0, 0)),
    dict(type='Brightness', prob=0.5, min_mag=0.75, max_mag=1.25),
    dict(type='Contrast', prob=0.5, min_mag=0.75, max_mag=1.25),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root='',
        ann_file='train.json',
        data_prefix=dict(img='images/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root='',
        ann_file='val.json',
        data_prefix=dict(img='images/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file='val.json', metric='bbox', format_only=False,
                     backend_args=backend_args)
test_evaluator = val_evaluator

# -------------------------------------------------------------------------------- schedule
max_epochs = 24
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[16, 22], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=16)

# --------------------------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
