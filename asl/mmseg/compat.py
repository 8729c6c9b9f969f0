"""Compatibility of MMEngine 0.10.x checkpoints with torch >= 2.6 ``weights_only`` loading."""
import copyreg

import numpy as np
import torch

__all__ = ['allow_mmengine_checkpoints']


def allow_mmengine_checkpoints() -> None:
    """Allow the objects MMEngine stores in checkpoints (its ``HistoryBuffer`` in the
    message hub, numpy arrays, scalars and dtypes) under ``torch.load(weights_only=True)``,
    so that ``resume=True`` works on torch >= 2.6. Idempotent."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 does not restrict unpickling this way
        return
    from mmengine.logging.history_buffer import HistoryBuffer

    # MMEngine pickles a HistoryBuffer with its statistics methods, which needs the
    # builtin ``getattr`` on load; save it as a plain constructor call instead (its two
    # histories and max length), which needs nothing beyond the classes allowed below.
    # Checkpoints written without asl imported still need weights_only=False.
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    multiarray = getattr(getattr(np, '_core', None), 'multiarray', None)
    if multiarray is None:  # numpy < 2
        multiarray = np.core.multiarray
    allowed = [HistoryBuffer, np.dtype, np.ndarray, multiarray._reconstruct, multiarray.scalar]
    dtypes = getattr(np, 'dtypes', None)
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType'):
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    add(allowed)


def _reduce_history_buffer(buf):
    return type(buf), (buf._log_history, buf._count_history, buf.max_length)
