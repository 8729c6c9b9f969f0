# AutoSegLoss for mIoU with the published parameters (theta='paper') on
# Cityscapes; the auxiliary head uses the same loss at weight 0.4.
# Everything else as in the cross-entropy baseline.
# The published parameters were searched on VOC; to use parameters searched on
# Cityscapes (configs/search/cityscapes/), replace theta='paper' by the
# search's output (theta=[...] plus the search's num_pieces/tol/drop_bg).
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_cityscapes-512x1024.py'
model = dict(
    decode_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(
        type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=0.4, _delete_=True)))
