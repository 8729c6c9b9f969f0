"""Process-group set-up and config adaptation shared by ``tools/train.py`` and ``tools/test.py``.

MMEngine's own launchers call ``torch.cuda.set_device``, which fails on a CPU-only
torch. Here the process group is created before the Runner is built (the Runner then
skips its own initialisation), with NCCL when CUDA is present and gloo otherwise,
from torchrun's variables (``--launcher pytorch``) or from Slurm's
(``--launcher slurm``: one task per process, ``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID``, the first host of ``SLURM_JOB_NODELIST`` as the master). On CPU the
model wrapper gets ``device_ids=None`` and SyncBN layers become BN.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Any, Tuple

import torch
import torch.distributed as dist

__all__ = ['LAUNCHERS', 'setup_distributed', 'adapt_config', 'first_slurm_host',
           'slurm_master_port']

LAUNCHERS = ('none', 'pytorch', 'slurm')


def first_slurm_host(nodelist: str) -> str:
    """First host name of a Slurm node list (``node[01-04,07]`` -> ``node01``).

    Uses ``scontrol show hostnames`` when available and a small parser otherwise.
    """
    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], check=True,
                             capture_output=True, text=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r'([^,\[]+)(?:\[([^\]]+)\])?', nodelist)
    if m is None:
        raise ValueError(f'cannot parse SLURM_JOB_NODELIST={nodelist!r}')
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(',')[0].split('-')[0]
    return prefix + first


def slurm_master_port(job_id: str) -> int:
    """A port derived from the job id, so that concurrent jobs on a node differ."""
    return 20000 + int(re.sub(r'\D', '', job_id or '0') or 0) % 20000


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f'environment variable {name} is not set; is this process '
                           f'started by the launcher it was told to expect?')
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f'environment variable {name}={value!r} is not an integer') from None


def setup_distributed(launcher: str, port: int = None) -> Tuple[int, int]:
    """Create the default process group for ``launcher``; return ``(rank, world_size)``.

    Args:
        launcher (str): ``'none'``, ``'pytorch'`` (torchrun) or ``'slurm'`` (srun).
        port (int, optional): master port for ``'slurm'`` (default: ``MASTER_PORT`` or
            a port derived from the job id).

    Returns:
        tuple: rank and world size (``(0, 1)`` for ``'none'``).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    if launcher == 'none':
        return 0, 1
    if launcher == 'slurm':
        rank = _env_int('SLURM_PROCID')
        world = _env_int('SLURM_NTASKS')
        local_rank = _env_int('SLURM_LOCALID')
        nodelist = os.environ.get('SLURM_JOB_NODELIST') or os.environ.get('SLURM_NODELIST')
        if not nodelist:
            raise RuntimeError('SLURM_JOB_NODELIST is not set; run under srun/sbatch')
        os.environ.setdefault('MASTER_ADDR', first_slurm_host(nodelist))
        if port is not None:
            os.environ['MASTER_PORT'] = str(port)
        os.environ.setdefault('MASTER_PORT',
                              str(slurm_master_port(os.environ.get('SLURM_JOB_ID', '0'))))
        os.environ['RANK'] = str(rank)
        os.environ['WORLD_SIZE'] = str(world)
        os.environ['LOCAL_RANK'] = str(local_rank)
    else:
        rank = _env_int('RANK')
        world = _env_int('WORLD_SIZE')
        local_rank = _env_int('LOCAL_RANK')
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = 'nccl'
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, init_method='env://', rank=rank,
                            world_size=world)
    return rank, world


def _replace_sync_bn(obj: Any) -> int:
    """Turn ``SyncBN`` norm configs into ``BN`` in place; return how many changed."""
    n = 0
    if isinstance(obj, dict):
        if obj.get('type') == 'SyncBN':
            obj['type'] = 'BN'
            n += 1
        for v in obj.values():
            n += _replace_sync_bn(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            n += _replace_sync_bn(v)
    return n


def adapt_config(cfg, launcher: str) -> list:
    """Adapt a loaded MMEngine ``Config`` to the devices present; return notes to log.

    * ``cfg.launcher`` is set (the Runner treats any launcher but ``'none'`` as
      distributed).
    * Without CUDA: SyncBN becomes BN (SyncBN has no CPU kernels) and a distributed
      model wrapper gets ``device_ids=None``.
    """
    notes = []
    cfg.launcher = launcher
    if not torch.cuda.is_available():
        n = _replace_sync_bn(cfg._cfg_dict)
        if n:
            notes.append(f'no CUDA device: {n} SyncBN config(s) replaced by BN')
        if launcher != 'none':
            wrapper = dict(cfg.get('model_wrapper_cfg') or {})
            wrapper.setdefault('type', 'MMDistributedDataParallel')
            wrapper['device_ids'] = None
            cfg.model_wrapper_cfg = wrapper
            notes.append('no CUDA device: model wrapped without device_ids (gloo)')
    return notes
