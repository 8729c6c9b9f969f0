# The paper's proxy search for BIoU on PASCAL VOC 2012 aug (ASL_search.sh / tools/search.py):
# the mIoU search with another target; only what differs is set here.
_base_ = './deeplabv3plus_r50-d8_search-miou_1xb32-1k_voc12aug-128x128.py'
search = dict(
    target_metric='BIoU',
    drop_bg=True,                # BIoU's band leaves out the background's boundaries
    retrain_config=('configs/retrain/voc12aug/'
                    'deeplabv3plus_r101-d8_asl-biou_4xb8-10k_voc12aug-512x512.py'),
)
