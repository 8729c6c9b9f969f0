"""``CamVidDataset``: CamVid's 11 classes as converted by ``tools/convert_camvid.py``."""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

__all__ = ['CamVidDataset']


@DATASETS.register_module()
class CamVidDataset(BaseSegDataset):
    """CamVid in the 11-class version of SegNet, in the ``img_dir/ann_dir`` layout that
    ``tools/convert_camvid.py`` writes: ``.png`` images and label maps, labels 0-10 the
    classes and 255 void (``ignore_index``); the split's names in ``ann_file``
    (``splits/<split>.txt``).
    """

    METAINFO = dict(classes=CAMVID_CLASSES, palette=CAMVID_PALETTE)

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
