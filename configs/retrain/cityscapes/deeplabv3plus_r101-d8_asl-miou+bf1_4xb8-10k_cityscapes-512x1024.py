# The paper's sum of two AutoSegLoss terms, mIoU + BF1, each with its
# published parameters, on Cityscapes: the boundary term alone degrades the
# region metrics. The auxiliary head uses both terms at weight 0.4.
# The published parameters were searched on VOC; to use parameters searched on
# Cityscapes (configs/search/cityscapes/), replace theta='paper' by the
# search's output (theta=[...] plus the search's num_pieces/tol/drop_bg).
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_cityscapes-512x1024.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(
            type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=1.0,
            loss_name='loss_asl_miou'),
        dict(
            type='AutoSegLoss', target_metric='BF1', theta='paper', num_pieces=1, drop_bg=False,
            tol=5, loss_weight=1.0, loss_name='loss_asl_bf1')
    ]),
    auxiliary_head=dict(loss_decode=[
        dict(
            type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=0.4,
            loss_name='loss_asl_miou'),
        dict(
            type='AutoSegLoss', target_metric='BF1', theta='paper', num_pieces=1, drop_bg=False,
            tol=5, loss_weight=0.4, loss_name='loss_asl_bf1')
    ]))
