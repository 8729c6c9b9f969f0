# PASCAL VOC 2012 with the SBD augmented annotations (MMSeg's 10582 train images:
# ImageSets/Segmentation/train.txt + aug.txt), 512x512 crops, 8 images per GPU,
# evaluated on the 1449 val images with all six metrics (boundaries: 5-pixel tolerance).
_base_ = 'mmseg::_base_/datasets/pascal_voc12_aug.py'
train_dataloader = dict(batch_size=8, num_workers=4)
val_evaluator = dict(
    type='ASLMetric',
    metric_names=['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'],
    tol=5,
    _delete_=True)
test_evaluator = val_evaluator
