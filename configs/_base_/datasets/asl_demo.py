# The embedded demo dataset (generated on first use, see asl/data/demo.py):
# 64x64 RGB, 5 classes, 240 train (60 of them the search hold-out) + 80 val images.
dataset_type = 'BaseSegDataset'
data_root = 'data/asl_demo'
# tools/train.py and tools/test.py generate the data from this entry when it is missing.
demo_data = dict(root=data_root, seed=0)
metainfo = dict(
    classes=('background', 'blob', 'building', 'line', 'spot'),
    palette=[[0, 0, 0], [220, 20, 60], [70, 130, 180], [250, 170, 30], [0, 220, 120]])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomFlip', prob=0.5, direction='vertical'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]


def _split(img, ann, split_file, pipeline):
    return dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                data_prefix=dict(img_path=img, seg_map_path=ann), ann_file=split_file,
                img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False,
                pipeline=pipeline)


train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=_split('img_dir/train', 'ann_dir/train', 'splits/train.txt', train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=_split('img_dir/val', 'ann_dir/val', 'splits/val.txt', test_pipeline))
test_dataloader = val_dataloader
# All six metrics, exactly; boundaries with a 2-pixel tolerance on these 64x64 images
# (the paper's 5 pixels on 512x512 VOC images is ~8x coarser).
val_evaluator = dict(type='ASLMetric', metric_names=['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'],
                     tol=2)
test_evaluator = val_evaluator
del _split
