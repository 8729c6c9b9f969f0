# CamVid (11 classes) at the CPU scale: images converted to 96x128 by
# `python tools/convert_camvid.py SRC data/camvid_96x128` (367 train, 101 val images;
# void is 255). Training: random rescale 0.75-1.5x, 96x128 crops, horizontal flips,
# 8 images per batch; evaluation on the val split as stored. The search carves its
# hold-out (reward) split out of the training names listed in `ann_file`.
dataset_type = 'CamVidDataset'
data_root = 'data/camvid_96x128'
crop_size = (96, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(128, 96), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        ann_file='splits/train.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        ann_file='splits/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# All six metrics, exactly; boundaries with a 2-pixel tolerance at this size.
val_evaluator = dict(
    type='ASLMetric', metric_names=['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'], tol=2)
test_evaluator = val_evaluator
