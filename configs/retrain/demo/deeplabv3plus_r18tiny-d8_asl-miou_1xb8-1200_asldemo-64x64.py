# AutoSegLoss for mIoU with the published (VOC-searched) parameters, on the demo data.
_base_ = './deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py'
model = dict(
    decode_head=dict(loss_decode=dict(type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(type='AutoSegLoss', target_metric='mIoU', theta='paper', loss_weight=0.4, _delete_=True)))
