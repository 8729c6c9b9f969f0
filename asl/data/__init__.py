from .camvid import (CAMVID_CLASSES, CAMVID_PALETTE, CamVidError, convert_camvid,
                     ensure_camvid)
from .demo import (DEFAULT_ROOT, DEFAULT_SIZES, DEMO_CLASSES, DEMO_PALETTE, GENERATOR_VERSION,
                   IGNORE_INDEX, DemoDataError, build_demo_data, dataset_stats,
                   demo_data_status, demo_names, ensure_demo_data, format_stats,
                   generate_sample, holdout_names, label_stats, prepare_demo_data, read_meta)
from .holdout import HoldoutError, carve_holdout, read_names, split_dataset_config

__all__ = [
    'CAMVID_CLASSES', 'CAMVID_PALETTE', 'CamVidError', 'convert_camvid', 'ensure_camvid',
    'DEFAULT_ROOT', 'DEFAULT_SIZES', 'DEMO_CLASSES', 'DEMO_PALETTE', 'GENERATOR_VERSION',
    'IGNORE_INDEX', 'DemoDataError', 'build_demo_data', 'dataset_stats', 'demo_data_status',
    'demo_names', 'ensure_demo_data', 'format_stats', 'generate_sample', 'holdout_names',
    'label_stats', 'read_meta', 'prepare_demo_data', 'HoldoutError', 'carve_holdout',
    'read_names', 'split_dataset_config'
]
