# Search for the mIoU surrogate on CamVid at the CPU scale, built the way a user builds
# one for any dataset: the proxy training config (the CPU-scale CamVid re-training's
# model and data, a 300-iteration schedule) plus the search settings base, with the
# entries that differ. 3 steps x 4 candidates, 60 hold-out images carved from the 367
# training images.
_base_ = [
    '../../_base_/models/deeplabv3plus_r18tiny-d8.py',
    '../../_base_/datasets/camvid_96x128.py',
    '../../_base_/demo_runtime.py',
    '../../_base_/schedules/schedule_demo.py',
    '../../_base_/search/asl_search_miou.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
crop_size = (96, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=11),
    auxiliary_head=dict(num_classes=11))
proxy_iters = 300
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=proxy_iters, by_epoch=False)
]
train_cfg = dict(max_iters=proxy_iters, val_interval=proxy_iters)
default_hooks = dict(logger=dict(interval=100))
search = dict(
    num_samples=4,               # M candidates per step
    num_steps=3,                 # T steps
    holdout=dict(num=60, seed=0),  # of the 367 training images
    trial_time_limit=1200,       # seconds per proxy training
    max_retries=1,
    # the re-training config the search's result config inherits (relative to this file)
    retrain_config='../../retrain/camvid/deeplabv3plus_r18tiny-d8_ce_1xb8-3600_camvid-96x128.py',
)
