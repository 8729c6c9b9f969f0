# Cityscapes (gtFine, 19 classes), 512x1024 crops, 8 images per GPU, evaluated on the
# 500 val images at full resolution with all six metrics (boundaries: 5-pixel tolerance).
_base_ = 'mmseg::_base_/datasets/cityscapes.py'
train_dataloader = dict(batch_size=8, num_workers=4)
val_evaluator = dict(
    type='ASLMetric',
    metric_names=['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'],
    tol=5,
    _delete_=True)
test_evaluator = val_evaluator
