# Cross-entropy baseline on CamVid at the GPU scale, the paper's re-training recipe:
# R101-DeepLabV3+ (output stride 8, SyncBN, ImageNet-pretrained), 4 GPUs x 8 images,
# 360x480 crops, 10k iterations (SGD lr 0.02, heads at 10x, poly), evaluated on the 101
# val images with all six metrics.
# Data: `python tools/convert_camvid.py SRC data/camvid_360x480 --size 360 480`.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    '../../_base_/datasets/camvid_360x480.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/schedule_10k_asl.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
crop_size = (360, 480)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # ImageNet-pretrained ResNetV1c-101 from the OpenMMLab model zoo. Nothing is
    # downloaded when the config is loaded or the model is built, only when training
    # initializes the weights. Offline, fetch the file once and point to it with
    # `--cfg-options model.pretrained=/path/to/resnet101_v1c.pth` (or set it here).
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11))
