# Test-size DetectoRS: the lite recipe's architecture (stages/detect/detectors-cascade-rcnn-lite.py)
# at toy sizes, with deformable SAC on (to exercise mmcv's op) and settings that let an untrained
# model still return boxes for every class (score threshold 0, enough boxes per image).
from mmengine.config import read_base

with read_base():
    from ...stages.detect._base_.detectors_cascade_rcnn import *  # noqa: F401,F403

image_scale = (160, 160)
base_channels = 8
fpn_channels = 32
fc_channels = 64
anchor_scale = 2
rpn_proposals = (200, 100)
rcnn_samples = 64
batch_size = 2
sac_deform = True
pretrained_backbone = None
max_epochs = 2

model = detectors_model(base_channels, fpn_channels, fc_channels, anchor_scale, rpn_proposals,
                        rcnn_samples, sac_deform, pretrained_backbone, test_score_thr=0.0,
                        test_max_per_img=100 * num_classes)
train_pipeline, test_pipeline = pipelines(image_scale)
train_dataloader, val_dataloader, test_dataloader = dataloaders(batch_size, train_pipeline,
                                                                test_pipeline, num_workers=0)
train_cfg, param_scheduler, optim_wrapper = adamw_schedule(max_epochs, lr=1e-3, warmup_iters=10)
default_hooks = hooks(log_interval=1)
