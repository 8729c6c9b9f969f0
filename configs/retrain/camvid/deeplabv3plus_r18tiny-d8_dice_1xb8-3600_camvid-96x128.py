# Baseline on CamVid at the CPU scale: the Dice loss (MMSeg DiceLoss, softmax, per
# class); the auxiliary head the same at weight 0.4. Everything else as in the cross-
# entropy config.
_base_ = './deeplabv3plus_r18tiny-d8_ce_1xb8-3600_camvid-96x128.py'
model = dict(
    decode_head=dict(loss_decode=dict(type='DiceLoss', use_sigmoid=False, loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(type='DiceLoss', use_sigmoid=False, loss_weight=0.4, _delete_=True)))
