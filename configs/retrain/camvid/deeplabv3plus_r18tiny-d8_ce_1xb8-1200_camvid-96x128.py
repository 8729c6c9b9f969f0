# Cross-entropy baseline on CamVid at the CPU scale: the demo's small DeepLabV3+
# (ResNetV1c-18 with 16 base channels, from scratch), 96x128 images, batch 8, 1200
# iterations of SGD (lr 0.05, poly), evaluated on the 101 val images with all six
# metrics. Data: `python tools/convert_camvid.py SRC data/camvid_96x128`.
_base_ = [
    '../../_base_/models/deeplabv3plus_r18tiny-d8.py',
    '../../_base_/datasets/camvid_96x128.py',
    '../../_base_/demo_runtime.py',
    '../../_base_/schedules/schedule_demo.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
crop_size = (96, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11))
