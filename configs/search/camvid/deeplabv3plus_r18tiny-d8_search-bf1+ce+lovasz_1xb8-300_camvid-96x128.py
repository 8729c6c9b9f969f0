# The CamVid CPU-scale boundary search beside the best hand-designed combination measured
# there: the BF1 surrogate (one Bezier piece per curve, tolerance 2, as in the bf1+ce
# search this inherits) trained with cross-entropy + Lovasz-softmax (as in the ce+lovasz
# re-training config) in every proxy training and in the written re-training config.
# Proxies as in the bf1+ce search: 300 iterations on the first quarter of a 1200-iteration
# poly schedule, each started from the cross-entropy model the search trains once; the
# reward is the hold-out BF1.
_base_ = './deeplabv3plus_r18tiny-d8_search-bf1+ce_1xb8-300_camvid-96x128.py'
search = dict(
    extra_losses=[
        dict(type='LovaszLoss', loss_type='multi_class', classes='present', per_image=False,
             reduction='none', loss_weight=1.0),
    ])
