# Search settings only: the `search` section of a search config, for the mIoU surrogate,
# and nothing else (no dataset, model, schedule or runtime keys), so that it composes
# with any MMSeg training config:
#
#   _base_ = ['my_dataset.py', 'my_model.py', 'my_runtime.py', 'my_proxy_schedule.py',
#             '<asl>/configs/_base_/search/asl_search_miou.py']
#   search = dict(holdout=dict(num=60), retrain_config='my_retrain_config.py')
#
# A child overrides single entries (MMEngine merges the dicts). The hold-out is carved
# from the names the training dataset's `ann_file` lists; set `holdout.num` for your
# data (about 15% of the training split: VOC 1500, Cityscapes 500, CamVid 60).
# The budget is the paper's (M=32 candidates x T=12 steps); asl's safeguards for a
# search that holds are on (docs/search.md, "A search that holds").
search = dict(
    target_metric='mIoU',        # built-in metric name or a formula (the reward)
    parameterization='bezier',   # curve family
    num_pieces=2,                # Bezier pieces per curve (BF1: 1)
    tol=5, drop_bg=False,        # metric options (boundary metrics)
    init_mu=None,                # None = identity curves
    sigma=0.2,                   # policy std
    lr=0.2,                      # Adam learning rate of the policy
    num_samples=32,              # M candidates per step
    num_steps=12,                # T steps
    ppo_epochs=60,               # Adam steps on the clipped objective per step
    clip_eps=0.2,                # PPO2 clip range
    baseline='mu',               # 'mu' or 'mean'
    target_kl=1.0,               # an update stops before KL(old || new policy) exceeds this
    max_mu_change=0.1,           # largest change of a coordinate of the mean per update
    normalize_advantages=True,   # advantages divided by the std of the step's rewards
    rollback=0.5,                # back to the best mean's policy if the mean's reward < 0.5 x best
    reevaluate=dict(top=3, seeds=2),  # the 3 best step means trained again with 2 more seeds
    # reject, untrained, a candidate whose surrogate cannot fit free logits on 4 label maps
    prescreen=dict(images=4, steps=10, lr=0.5, threshold=0.5),
    holdout=dict(num=500, seed=0),  # images carved from the training split for rewards
    trial_time_limit=3600,       # seconds per proxy training
    max_retries=2,               # relaunches of a failed trial
    gpus_per_trial=1,            # GPUs per proxy training
    trials_per_gpu=1,            # proxy trainings at once per GPU
    # the config the search's result config inherits (relative to the search config);
    # None = the search config itself (set your re-training config here)
    retrain_config=None,
)
