# AutoSegLoss for BIoU with the published parameters (theta='paper') on
# PASCAL VOC 2012 aug; the auxiliary head uses the same loss at weight 0.4.
# Everything else as in the cross-entropy baseline.
# BIoU's published parameters were searched with drop_bg=True (the band leaves out
# the background's boundaries) and tol=5; theta='paper' checks these options.
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_voc12aug-512x512.py'
model = dict(
    decode_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='BIoU', theta='paper', drop_bg=True, tol=5,
        loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='BIoU', theta='paper', drop_bg=True, tol=5,
        loss_weight=0.4, _delete_=True)))
