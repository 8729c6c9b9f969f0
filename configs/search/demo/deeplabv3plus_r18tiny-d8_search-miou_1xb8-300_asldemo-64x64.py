# Demo search for mIoU on the embedded data: 3 steps x 4 candidates of a 300-iteration
# proxy training of the small CPU DeepLabV3+ (about 10 minutes on 2 CPU cores).
_base_ = [
    '../../_base_/models/deeplabv3plus_r18tiny-d8.py',
    '../../_base_/datasets/asl_demo.py',
    '../../_base_/demo_runtime.py',
    '../../_base_/schedules/schedule_demo.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
proxy_iters = 300
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=proxy_iters, by_epoch=False)
]
train_cfg = dict(max_iters=proxy_iters, val_interval=proxy_iters)
default_hooks = dict(logger=dict(interval=100))
search = dict(
    target_metric='mIoU',        # built-in metric name or a formula (the reward)
    parameterization='bezier',   # curve family
    num_pieces=2,                # Bezier pieces per curve
    tol=5, drop_bg=False,        # metric options (boundary metrics)
    init_mu=None,                # None = identity curves
    sigma=0.2,                   # policy std
    lr=0.2,                      # Adam learning rate of the policy
    num_samples=4,               # M candidates per step
    num_steps=3,                 # T steps
    ppo_epochs=60,               # Adam steps on the clipped objective per step
    clip_eps=0.2,                # PPO2 clip range
    baseline='mu',               # 'mu' or 'mean'
    target_kl=1.0,               # an update stops before KL(old || new policy) exceeds this
    max_mu_change=0.1,           # largest change of a coordinate of the mean per update
    normalize_advantages=True,   # advantages divided by the std of the step's rewards
    rollback=0.5,                # back to the best mean's policy if the mean's reward < 0.5 x best
    reevaluate=dict(top=3, seeds=2),  # the 3 best step means trained again with 2 more seeds
    # reject, untrained, a candidate whose surrogate cannot fit free logits on 4 label maps
    # (score < 0.5 x the policy mean's); rejects nothing sane on the demo, ~0.05 s each
    prescreen=dict(images=4, steps=10, lr=0.5, threshold=0.5),
    holdout=dict(num=60, seed=0),  # images carved from the training split for rewards
    trial_time_limit=1200,       # seconds per proxy training (about 20 s on a quiet machine)
    max_retries=1,               # relaunches of a failed trial
    gpus_per_trial=1,            # GPUs per proxy training (when GPUs are present)
    # the re-training config the search's result config inherits (relative to this file)
    retrain_config='../../retrain/demo/deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py',
)
