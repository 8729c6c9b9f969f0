# The CamVid CPU-scale boundary search: the BF1 surrogate (one Bezier piece per curve, as
# in the paper's BF1 search) trained beside cross-entropy (search.ce_weight=1, which keeps
# the region metrics), its 300-iteration proxies on the first quarter of a 1200-iteration
# poly schedule (the re-training's shape; the re-training itself now runs 3600, and the
# searches in docs/results.md ran with these proxies), each started from the
# cross-entropy model the search trains once (search.warm_start). The reward is the
# hold-out BF1 with the val evaluator's 2-pixel tolerance at 96x128, and the surrogate
# uses the same tolerance.
_base_ = './deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_camvid-96x128.py'
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=1200, by_epoch=False)
]
search = dict(
    target_metric='BF1',
    num_pieces=1,
    tol=2,
    ce_weight=1.0,
    warm_start=dict(iters=300),
)
