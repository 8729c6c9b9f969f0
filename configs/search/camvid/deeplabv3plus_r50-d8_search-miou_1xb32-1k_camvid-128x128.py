# Search for the mIoU surrogate on CamVid at the GPU scale, with the paper's proxy:
# R50-DeepLabV3+, 128x128 crops, batch 32 on one GPU, 1000 iterations (SGD lr 0.02,
# heads at 10x, poly 0.9 to 1e-4), scored on 60 hold-out images carved from the 367
# training images; the search settings base's budget (M=32 x T=12, asl's safeguards),
# 4 proxy trainings at once per GPU. The result re-trains the R101 config at 360x480.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    '../../_base_/datasets/camvid_128x128.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/schedule_1k_search.py',
    '../../_base_/search/asl_search_miou.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # ImageNet-pretrained ResNetV1c-50 (MMSeg's default); nothing is downloaded before
    # a training initializes the weights (`--cfg-options model.pretrained=/path` offline)
    pretrained='open-mmlab://resnet50_v1c',
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11))
search = dict(
    holdout=dict(num=60, seed=0),  # of the 367 training images
    trials_per_gpu=4,            # proxy trainings at once per GPU (official num_models_per_gpu=4)
    # the re-training config the search's result config inherits (relative to this file)
    retrain_config='../../retrain/camvid/deeplabv3plus_r101-d8_ce_4xb8-10k_camvid-360x480.py',
)
