# Baseline on CamVid at the GPU scale: the Jaccard metric loss (Wang & Blaschko, NeurIPS
# 2023), JML1 over the classes present in the batch; the auxiliary head the same at
# weight 0.4. Everything else as in the cross-entropy config.
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_camvid-360x480.py'
model = dict(
    decode_head=dict(loss_decode=dict(type='JaccardMetricLoss', loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(type='JaccardMetricLoss', loss_weight=0.4, _delete_=True)))
