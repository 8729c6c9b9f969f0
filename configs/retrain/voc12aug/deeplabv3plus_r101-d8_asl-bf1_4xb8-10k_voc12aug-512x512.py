# AutoSegLoss for BF1 with the published parameters (theta='paper') on
# PASCAL VOC 2012 aug; the auxiliary head uses the same loss at weight 0.4.
# Everything else as in the cross-entropy baseline.
# BF1's published parameters are one Bezier piece per curve, searched with
# drop_bg=False and tol=5; theta='paper' checks these options. A boundary-only
# loss collapses the region metrics (the paper's BF1 model: mIoU 1.93); see the
# asl-miou+bf1 config.
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_voc12aug-512x512.py'
model = dict(
    decode_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='BF1', theta='paper', num_pieces=1, drop_bg=False, tol=5,
        loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='BF1', theta='paper', num_pieces=1, drop_bg=False, tol=5,
        loss_weight=0.4, _delete_=True)))
