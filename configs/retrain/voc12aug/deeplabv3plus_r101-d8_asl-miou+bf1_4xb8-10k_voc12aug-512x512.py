# The paper's sum of two AutoSegLoss terms, mIoU + BF1, each with its
# published parameters, on PASCAL VOC 2012 aug: the boundary term alone degrades the
# region metrics. The auxiliary head uses both terms at weight 0.4.
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_voc12aug-512x512.py'
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
