# The search's proxy data on CamVid at the GPU scale, as the paper's proxies on VOC and
# Cityscapes: images resized to a 128-pixel short side (171x128), randomly rescaled
# 0.5-2x for training, 128x128 crops, 32 per batch. The data is the 360x480 conversion
# of the re-trainings (`data/camvid_360x480`). The search carves its hold-out (reward)
# split out of the 367 training names in `ann_file` and evaluates it with
# `test_pipeline`; the val split here is only used when a config is trained on its own.
dataset_type = 'CamVidDataset'
data_root = 'data/camvid_360x480'
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        ann_file='splits/train.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        ann_file='splits/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='ASLMetric', metric_names=['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'], tol=5)
test_evaluator = val_evaluator
