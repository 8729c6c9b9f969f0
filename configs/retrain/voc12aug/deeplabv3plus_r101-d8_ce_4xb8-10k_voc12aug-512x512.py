# Cross-entropy baseline of the paper's re-training on PASCAL VOC 2012 aug:
# R101-DeepLabV3+ (output stride 8, SyncBN), 4 GPUs x 8 images, 512x512 crops, 10k
# iterations (SGD lr 0.02, heads at 10x, poly), evaluated with all six metrics.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    '../../_base_/datasets/pascal_voc12_aug_asl.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/schedule_10k_asl.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # ImageNet-pretrained ResNetV1c-101 from the OpenMMLab model zoo. Nothing is
    # downloaded when the config is loaded or the model is built, only when training
    # initializes the weights. Offline, fetch the file once and point to it with
    # `--cfg-options model.pretrained=/path/to/resnet101_v1c.pth` (or set it here).
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(num_classes=21),
    auxiliary_head=dict(num_classes=21))
