# The paper's proxy search for mIoU on Cityscapes (ASL_search.sh / tools/search.py).
# Each trial trains this config with a sampled surrogate: R50-DeepLabV3+, 128x128 crops,
# batch 32 on one GPU, 1000 iterations (SGD lr 0.02, heads at 10x, poly 0.9 to 1e-4),
# evaluated once at the end on the hold-out carved from the 2975 training images;
# the reward is `target_metric` there. The paper ran 4 trials per GPU on 8 GPUs.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
    '../../_base_/datasets/cityscapes_128x128.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/schedule_1k_search.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
search = dict(
    target_metric='mIoU',        # built-in metric name or a formula (the reward)
    parameterization='bezier',   # curve family
    num_pieces=2,                # Bezier pieces (BF1: 1)
    tol=5, drop_bg=False,        # metric options (BIoU: drop_bg=True)
    init_mu=None,                # None = identity curves
    sigma=0.2,                   # policy std
    lr=0.2,                      # Adam learning rate of the policy
    num_samples=32,              # M candidates per step
    num_steps=12,                # T steps
    ppo_epochs=60,               # Adam steps on the clipped objective per step
    clip_eps=0.2,                # PPO clipping range of the probability ratio
    baseline='mu',               # 'mu' or 'mean'
    # the paper's update and choice (asl's defaults guard a search with few candidates
    # per step: target_kl=1.0, max_mu_change=0.1, normalize_advantages=True, rollback=0.5,
    # reevaluate=dict(top=3, seeds=2); see docs/search.md, "A search that holds")
    target_kl=None, max_mu_change=None, normalize_advantages=False, rollback=None,
    reevaluate=None,
    holdout=dict(num=500, seed=0),  # VOC 1500, Cityscapes 500
    trial_time_limit=3600,       # seconds per proxy training
    max_retries=2,               # relaunches of a failed trial
    gpus_per_trial=1,            # GPUs (torch.distributed processes) per proxy training
    trials_per_gpu=4,            # proxy trainings at once on each GPU (official num_models_per_gpu=4)
    # re-training config of the result (from the repository root)
    retrain_config=('configs/retrain/cityscapes/'
                    'deeplabv3plus_r101-d8_asl-miou_4xb8-10k_cityscapes-512x1024.py'),
)
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # ImageNet-pretrained ResNetV1c-50 (MMSeg's default). Nothing is downloaded when the
    # config is loaded or the model is built, only when a training initializes the
    # weights. Offline, fetch the file once and point to it with
    # `--cfg-options model.pretrained=/path/to/resnet50_v1c.pth` (or set it here).
    pretrained='open-mmlab://resnet50_v1c',
    # the loss of every trial is the target's surrogate with the trial's parameters,
    # derived from `search` (asl.search.trial.make_trial_config)
    decode_head=dict(num_classes=19),
    auxiliary_head=dict(num_classes=19))
