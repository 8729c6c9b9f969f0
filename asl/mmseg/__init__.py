from .compat import allow_mmengine_checkpoints
from .datasets import CamVidDataset
from .hooks import ASLTrialHook, NonFiniteLossError
from .jaccard import JaccardMetricLoss
from .loss import AutoSegLoss
from .metric import ASLMetric

__all__ = ['AutoSegLoss', 'ASLMetric', 'ASLTrialHook',
           'NonFiniteLossError', 'allow_mmengine_checkpoints', 'JaccardMetricLoss',
           'CamVidDataset']

allow_mmengine_checkpoints()
