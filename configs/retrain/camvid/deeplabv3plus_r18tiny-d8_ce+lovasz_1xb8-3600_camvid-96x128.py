# Baseline on CamVid at the CPU scale: cross-entropy plus Lovasz-softmax (MMSeg
# LovaszLoss), classes present in the batch, equal weights (the combination
# practitioners train); the auxiliary head the same at weight 0.4. Everything else as in
# the cross-entropy config.
_base_ = './deeplabv3plus_r18tiny-d8_ce_1xb8-3600_camvid-96x128.py'
model = dict(
    decode_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        dict(type='LovaszLoss', loss_type='multi_class', classes='present',
             per_image=False, reduction='none', loss_weight=1.0),
    ]),
    auxiliary_head=dict(loss_decode=[
        dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
        dict(type='LovaszLoss', loss_type='multi_class', classes='present',
             per_image=False, reduction='none', loss_weight=0.4),
    ]))
