"""Compatibility of MMEngine 0.10.x checkpoints with torch >= 2.6 ``weights_only`` loading."""
import numpy as np
import torch

__all__ = ['allow_mmengine_checkpoints']


def allow_mmengine_checkpoints() -> None:
    """Allow the objects MMEngine stores in checkpoints (its ``HistoryBuffer`` in the
    message hub, numpy scalars and dtypes) under ``torch.load(weights_only=True)``, so
    that ``resume=True`` works on torch >= 2.6. Idempotent."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4: nothing to do
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = [HistoryBuffer, np.dtype, np.ndarray, np.core.multiarray._reconstruct
               if hasattr(np, 'core') else None]
    scalar = getattr(np.core.multiarray, 'scalar', None) if hasattr(np, 'core') else None
    allowed.append(scalar)
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType'):
        allowed.append(getattr(getattr(np, 'dtypes', None), name, None))
    add([a for a in allowed if a is not None])
