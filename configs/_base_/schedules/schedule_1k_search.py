# The paper's proxy training for the search: the re-training optimizer (SGD lr 0.02,
# momentum 0.9, weight decay 5e-4, heads at 10x lr, poly 0.9 to 1e-4) for 1000
# iterations, evaluated once at the end (the reward), one checkpoint at the end.
_base_ = './schedule_10k_asl.py'
max_iters = 1000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
