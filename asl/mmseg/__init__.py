from .compat import allow_mmengine_checkpoints
from .hooks import ASLFaultInjectionHook, ASLTrialHook, NonFiniteLossError
from .loss import AutoSegLoss
from .metric import ASLMetric

__all__ = ['AutoSegLoss', 'ASLMetric', 'ASLTrialHook', 'ASLFaultInjectionHook',
           'NonFiniteLossError', 'allow_mmengine_checkpoints']

allow_mmengine_checkpoints()
