# MMSeg's default runtime, with settings for small CPU runs (gloo, no cudnn tuning).
_base_ = 'mmseg::_base_/default_runtime.py'
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0, deterministic=False)
