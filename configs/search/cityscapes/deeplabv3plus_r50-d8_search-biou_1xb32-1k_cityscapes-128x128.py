# The paper's proxy search for BIoU on Cityscapes (ASL_search.sh / tools/search.py).
# Everything but the target (and its options) as in the mIoU search.
# BIoU's band leaves out the background's boundaries (drop_bg=True).
_base_ = './deeplabv3plus_r50-d8_search-miou_1xb32-1k_cityscapes-128x128.py'
search = dict(
    target_metric='BIoU',        # built-in metric name or a formula (the reward)
    parameterization='bezier',   # curve family
    num_pieces=2,                # Bezier pieces (BF1: 1)
    tol=5, drop_bg=True,         # metric options (BIoU: drop_bg=True)
    init_mu=None,                # None = identity curves
    sigma=0.2,                   # policy std
    lr=0.2,                      # Adam learning rate of the policy
    num_samples=32,              # M candidates per step
    num_steps=12,                # T steps
    ppo_epochs=60,               # Adam steps on the clipped objective per step
    clip_eps=0.2,                # PPO clipping range of the probability ratio
    baseline='mu',               # 'mu' or 'mean'
    holdout=dict(num=500, seed=0),  # VOC 1500, Cityscapes 500
    trial_time_limit=3600,       # seconds per proxy training
    max_retries=2,               # relaunches of a failed trial
    gpus_per_trial=1,            # GPUs (torch.distributed processes) per proxy training
    # re-training config of the result (from the repository root)
    retrain_config=('configs/retrain/cityscapes/'
                    'deeplabv3plus_r101-d8_asl-biou_4xb8-10k_cityscapes-512x1024.py'),
)
# The proxy's loss: the target's surrogate with identity curves (the search's starting
# point); each trial replaces the curves with its sampled parameters (raw_theta).
_loss = dict(
    type='AutoSegLoss',
    target_metric=search['target_metric'],
    parameterization=search['parameterization'],
    num_pieces=search['num_pieces'],
    tol=search['tol'],
    drop_bg=search['drop_bg'])
model = dict(
    decode_head=dict(loss_decode=dict(_loss, loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(_loss, loss_weight=0.4, _delete_=True)))
del _loss
