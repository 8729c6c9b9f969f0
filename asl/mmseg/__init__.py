from .compat import allow_mmengine_checkpoints
from .loss import AutoSegLoss
from .metric import ASLMetric

__all__ = ['AutoSegLoss', 'ASLMetric', 'allow_mmengine_checkpoints']

allow_mmengine_checkpoints()
