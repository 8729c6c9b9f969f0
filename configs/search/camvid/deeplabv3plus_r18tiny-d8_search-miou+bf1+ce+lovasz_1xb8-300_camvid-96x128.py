# The CamVid CPU-scale mIoU search beside a fixed boundary term: the searched mIoU
# surrogate trained with cross-entropy, the BF1 surrogate at its identity curves (one
# Bezier piece, tolerance 2; fixed, not searched) and Lovasz-softmax, in every proxy
# training and in the written re-training config. The reward is the hold-out mIoU.
# Proxies as in the mIoU search beside cross-entropy + Lovasz: 300 iterations on the first
# quarter of a 1200-iteration poly schedule, each started from the cross-entropy model the
# search trains once (warm start).
_base_ = './deeplabv3plus_r18tiny-d8_search-miou+ce+lovasz_1xb8-300_camvid-96x128.py'
search = dict(
    warm_start=dict(iters=300),
    extra_losses=[
        dict(type='AutoSegLoss', target_metric='BF1', theta=[0.5] * 8,
             parameterization='bezier', num_pieces=1, tol=2, drop_bg=False,
             loss_name='loss_asl_bf1', loss_weight=1.0),
        dict(type='LovaszLoss', loss_type='multi_class', classes='present', per_image=False,
             reduction='none', loss_weight=1.0),
    ])
