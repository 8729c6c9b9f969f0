# The paper's proxy search for gAcc on Cityscapes (ASL_search.sh / tools/search.py):
# the mIoU search with another target; only what differs is set here.
_base_ = './deeplabv3plus_r50-d8_search-miou_1xb32-1k_cityscapes-128x128.py'
search = dict(
    target_metric='gAcc',
    retrain_config=('configs/retrain/cityscapes/'
                    'deeplabv3plus_r101-d8_asl-gacc_4xb8-10k_cityscapes-512x1024.py'),
)
