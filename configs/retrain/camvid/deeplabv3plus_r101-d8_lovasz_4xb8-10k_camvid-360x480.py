# Baseline on CamVid at the GPU scale: Lovasz-softmax (MMSeg LovaszLoss), classes
# present in the batch; the auxiliary head the same at weight 0.4. Everything else as in
# the cross-entropy config.
_base_ = './deeplabv3plus_r101-d8_ce_4xb8-10k_camvid-360x480.py'
model = dict(
    decode_head=dict(loss_decode=dict(type='LovaszLoss', loss_type='multi_class', classes='present',
             per_image=False, reduction='none', loss_weight=1.0, _delete_=True)),
    auxiliary_head=dict(loss_decode=dict(type='LovaszLoss', loss_type='multi_class', classes='present',
             per_image=False, reduction='none', loss_weight=0.4, _delete_=True)))
