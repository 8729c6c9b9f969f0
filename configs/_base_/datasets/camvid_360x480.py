# CamVid (11 classes) at its full SegNet size for the GPU re-trainings: images
# converted by `python tools/convert_camvid.py SRC data/camvid_360x480 --size 360 480`
# (a copy stored at another size works too: every image is resized to 360x480 first).
# Training: random rescale 0.5-2x, 360x480 crops, flips, photometric distortion, 8
# images per GPU; evaluation on the 101 val images at 360x480, predictions scored at
# the stored size, all six metrics (boundaries: 5-pixel tolerance).
dataset_type = 'CamVidDataset'
data_root = 'data/camvid_360x480'
crop_size = (360, 480)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(480, 360), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')  # the model's data_preprocessor pads to 360x480
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(480, 360), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
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
