# Cross-entropy baseline on the embedded demo data (CPU, about two minutes).
_base_ = [
    '../../_base_/models/deeplabv3plus_r18tiny-d8.py',
    '../../_base_/datasets/asl_demo.py',
    '../../_base_/demo_runtime.py',
    '../../_base_/schedules/schedule_demo.py',
]
custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)
