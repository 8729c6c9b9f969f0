# The official project's name for the PASCAL VOC BIoU search (R50-DeepLabV3+ proxy,
# PPO with policy lr 0.2 and clipping eps 0.2):
#   ./ASL_search.sh biou_bezier_lr=0.2_eps=0.2.py 8
_base_ = './voc12aug/deeplabv3plus_r50-d8_search-biou_1xb32-1k_voc12aug-128x128.py'
