# Two AutoSegLoss terms, mIoU + BIoU (the paper's sums), published parameters, demo data.
_base_ = './deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py'
model = dict(
    decode_head=dict(loss_decode=[dict(type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=1.0, loss_name='loss_asl_miou'), dict(type='AutoSegLoss', target_metric='BIoU', theta='paper', loss_weight=1.0, loss_name='loss_asl_biou')]),
    auxiliary_head=dict(loss_decode=[dict(type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=0.4, loss_name='loss_asl_miou'), dict(type='AutoSegLoss', target_metric='BIoU', theta='paper', loss_weight=0.4, loss_name='loss_asl_biou')]))
