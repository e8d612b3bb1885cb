# What every precise-baa detector config shares: the 13 ROI classes, the hand-crop data
# pipelines and loaders, COCO evaluation, schedules and runtime. mmengine pure-Python config
# (inherited with `read_base()`); the builders below are plain functions so a config that
# changes a size rebuilds the blocks that depend on it (an inherited dict would keep the old
# value). Derived from mmdet 3.3's configs/_base_/ (coco_detection, schedule_1x,
# default_runtime). Changes for hand radiographs:
# - 13 classes named by ROI key (precise_baa.rois.ROI_KEYS; the order is the label order);
# - input: the segmenter's hand crop (grayscale, repeated to 3 channels) resized into image_scale;
# - augmentation: rotation, zoom 0.7-1.25 and shift, and the shared radiograph appearance
#   randomisation (RadiographAugment, registered by precise-baa), no flip (left hands);
# - no download unless asked: precise-baa drops ImageNet `init_cfg`/`pretrained` entries unless
#   the recipe says `pretrained: true` (then nothing pretrained is frozen either).
# Training data paths, epochs and batch size are filled in by `precise-baa train detect`.

classes = ('radius', 'ulna', 'mc1', 'mc3', 'mc5', 'pp1', 'pp3', 'pp5', 'mp3', 'mp5', 'dp1',
           'dp3', 'dp5')
metainfo = dict(classes=classes)
num_classes = len(classes)
default_scope = 'mmdet'


# ------------------------------------------------------------------------------------ model
def data_preprocessor():
    return dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32)


def rpn_head(fpn_channels, anchor_scale, loss_bbox):
    return dict(
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
        loss_bbox=loss_bbox)


def roi_extractor(fpn_channels):
    return dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
        out_channels=fpn_channels,
        featmap_strides=[4, 8, 16, 32])


def rpn_train_cfg(allowed_border):
    return dict(
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
        allowed_border=allowed_border,
        pos_weight=-1,
        debug=False)


def rpn_proposal_cfg(proposals):
    return dict(
        nms_pre=proposals,
        max_per_img=proposals,
        nms=dict(type='nms', iou_threshold=0.7),
        min_bbox_size=0)


def rcnn_train_cfg(iou, samples):
    return dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=iou,
            neg_iou_thr=iou,
            min_pos_iou=iou,
            match_low_quality=False,
            ignore_iof_thr=-1),
        sampler=dict(
            type='RandomSampler',
            num=samples,
            pos_fraction=0.25,
            neg_pos_ub=-1,
            add_gt_as_proposals=True),
        pos_weight=-1,
        debug=False)


def rcnn_test_cfg(score_thr=0.05, max_per_img=100):
    return dict(score_thr=score_thr, nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=max_per_img)


# ------------------------------------------------------------------------------------ data
# Images are the hand crops of precise_baa.segment (written as 8-bit PNG for training; at
# inference the same crops are passed in memory). Background is 0, so affine borders are 0.
dataset_type = 'CocoDataset'
backend_args = None


def pipelines(image_scale):
    """(train_pipeline, test_pipeline) for hand crops resized into ``image_scale``, then
    padded with zeros (bottom/right) to one fixed square canvas: an image's result never
    depends on the other images of its batch (DetectoRS pools over the whole padded map)."""
    canvas = (max(image_scale), max(image_scale))
    train = [
        dict(type='LoadImageFromFile', backend_args=backend_args),
        dict(type='LoadAnnotations', with_bbox=True),
        # hand size, position and angle in the crop vary (boxes of rotated bones grow, so
        # rotation stays moderate; the phantoms' poses rotate the hand itself)
        dict(type='RandomAffine', max_rotate_degree=10.0, max_translate_ratio=0.1,
             scaling_ratio_range=(0.7, 1.25), max_shear_degree=0.0, border_val=(0, 0, 0)),
        dict(type='Resize', scale=image_scale, keep_ratio=True),
        # radiograph appearance at the network's scale (precise_baa.augment; fields of
        # Photometric may be given here); the black background stays black
        dict(type='RadiographAugment'),
        dict(type='Pad', size=canvas, pad_val=dict(img=0)),
        dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1), keep_empty=False),
        dict(type='PackDetInputs'),
    ]
    test = [
        dict(type='LoadImageFromFile', backend_args=backend_args),
        dict(type='Resize', scale=image_scale, keep_ratio=True),
        dict(type='Pad', size=canvas, pad_val=dict(img=0)),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ]
    return train, test


def dataloaders(batch_size, train_pipeline, test_pipeline, num_workers=2):
    """(train_dataloader, val_dataloader, test_dataloader)."""
    workers = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    train = dict(
        batch_size=batch_size,
        **workers,
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
    val = dict(
        batch_size=1,
        **workers,
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
    return train, val, val


val_evaluator = dict(type='CocoMetric', ann_file='val.json', metric='bbox', format_only=False,
                     backend_args=backend_args)
test_evaluator = val_evaluator


# -------------------------------------------------------------------------------- schedules
def sgd_schedule(max_epochs, lr=0.02, milestones=(16, 22), warmup_iters=500):
    """mmdet's 1x-style schedule: SGD, linear warm-up, steps at ``milestones``.
    Returns (train_cfg, param_scheduler, optim_wrapper)."""
    train = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
    scheduler = [
        dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=warmup_iters),
        dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
             milestones=list(milestones), gamma=0.1),
    ]
    optim = dict(
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=lr, momentum=0.9, weight_decay=0.0001),
        clip_grad=dict(max_norm=35, norm_type=2))
    return train, scheduler, optim


def adamw_schedule(max_epochs, lr=1e-3, warmup_iters=200):
    """AdamW + cosine, for training from scratch. Returns (train_cfg, param_scheduler,
    optim_wrapper)."""
    train = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
    scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
        dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.02, begin=0,
             end=max_epochs, by_epoch=True),
    ]
    optim = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
        clip_grad=dict(max_norm=35, norm_type=2))
    return train, scheduler, optim


val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)


# --------------------------------------------------------------------------------- runtime
def hooks(log_interval=50):
    return dict(
        timer=dict(type='IterTimerHook'),
        logger=dict(type='LoggerHook', interval=log_interval),
        param_scheduler=dict(type='ParamSchedulerHook'),
        checkpoint=dict(type='CheckpointHook', interval=1),
        sampler_seed=dict(type='DistSamplerSeedHook'),
        visualization=dict(type='DetVisualizationHook'))


default_hooks = hooks()
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
