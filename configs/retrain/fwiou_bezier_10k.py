# The official project's name for the PASCAL VOC FWIoU re-training (R101-DeepLabV3+,
# AutoSegLoss with the published parameters, 4 GPUs x 8 images, 10k iterations):
#   ./ASL_retrain.sh fwiou_bezier_10k.py 4
_base_ = './voc12aug/deeplabv3plus_r101-d8_asl-fwiou_4xb8-10k_voc12aug-512x512.py'
