"""Carving a hold-out split (the search's rewards) out of a training dataset config.

The hold-out is a seeded subset of the *names* listed by the training dataset's
``ann_file`` (for a ``ConcatDataset``, of the union of its parts' lists). The proxy
trainings get the same dataset config with lists that leave those names out; the
rewards are measured on a dataset of the hold-out names with the validation
pipeline. The lists are written as files in the search's work directory, so every
trial of a search (and a resumed search) uses the same split.
"""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ['carve_holdout', 'read_names', 'split_dataset_config', 'HoldoutError']

_HOLDOUT_STREAM = 2  # stream id of the generator (the demo dataset uses the same)


class HoldoutError(ValueError):
    """The training dataset cannot be split (no ``ann_file``, missing file, too few)."""


def carve_holdout(names: Sequence[str], num: int, seed: int) -> List[str]:
    """A seeded subset of ``num`` names (sorted), independent of the input order.

    Args:
        names: training image names (duplicates are counted once).
        num (int): hold-out size.
        seed (int): seed.

    Raises:
        HoldoutError: ``num`` is not smaller than the number of distinct names.
    """
    pool = sorted(set(names))
    if not 1 <= num < len(pool):
        raise HoldoutError(f'hold-out size {num} must be at least 1 and smaller than the '
                           f'{len(pool)} training images')
    rng = np.random.default_rng([int(seed), _HOLDOUT_STREAM])
    picked = np.sort(rng.permutation(len(pool))[:num])
    return [pool[i] for i in picked]


def dataset_leaves(ds: Dict) -> List[Dict]:
    """The datasets with files inside a dataset config (through Concat/Repeat wrappers)."""
    if ds.get('type') == 'ConcatDataset':
        out = []
        for sub in ds['datasets']:
            out.extend(dataset_leaves(sub))
        return out
    if ds.get('type') in ('RepeatDataset', 'ClassBalancedDataset'):
        return dataset_leaves(ds['dataset'])
    return [ds]


def ann_path(ds: Dict) -> str:
    """The split file a dataset config lists its names in (raises without one)."""
    ann = ds.get('ann_file') or ''
    if not ann:
        raise HoldoutError(
            f'the training dataset {ds.get("type")!r} has no ann_file; the search carves its '
            f'hold-out from the names an ann_file lists, so give the dataset one')
    root = ds.get('data_root') or ''
    return ann if os.path.isabs(ann) or not root else os.path.join(root, ann)


def read_names(ann_file: str) -> List[str]:
    """The non-empty lines of a split file."""
    if not os.path.isfile(ann_file):
        raise HoldoutError(f'split file not found: {ann_file!r} (is the dataset prepared?)')
    with open(ann_file) as f:
        return [line.strip() for line in f if line.strip()]


def split_dataset_config(train_ds: Dict, val_pipeline: List, num: int, seed: int,
                         out_dir: str) -> Tuple[Dict, Dict, List[str]]:
    """Split a training dataset config into proxy-training and hold-out configs.

    Args:
        train_ds (dict): the ``train_dataloader.dataset`` config.
        val_pipeline (list): pipeline of the hold-out dataset.
        num (int): hold-out size.
        seed (int): hold-out seed.
        out_dir (str): where the name lists are written.

    Returns:
        tuple: ``(train_config, holdout_config, holdout_names)``.
    """
    train_ds = copy.deepcopy(dict(train_ds))
    leaves = dataset_leaves(train_ds)
    lists = [read_names(ann_path(leaf)) for leaf in leaves]
    held = carve_holdout([n for names in lists for n in names], num, seed)
    held_set = set(held)
    os.makedirs(out_dir, exist_ok=True)
    holdout_parts, assigned = [], set()
    for i, (leaf, names) in enumerate(zip(leaves, lists)):
        keep = [n for n in names if n not in held_set]
        mine = [n for n in names if n in held_set and n not in assigned]
        assigned.update(mine)
        train_list = os.path.abspath(os.path.join(out_dir, f'train_proxy_{i}.txt'))
        _write_lines(train_list, keep)
        part = copy.deepcopy(leaf)
        leaf['ann_file'] = train_list  # edits the copy inside train_ds
        if mine:
            held_list = os.path.abspath(os.path.join(out_dir, f'holdout_{i}.txt'))
            _write_lines(held_list, mine)
            part['ann_file'] = held_list
            part['pipeline'] = copy.deepcopy(list(val_pipeline))
            holdout_parts.append(part)
    _write_lines(os.path.join(out_dir, 'holdout.txt'), held)
    holdout = (holdout_parts[0] if len(holdout_parts) == 1 else
               dict(type='ConcatDataset', datasets=holdout_parts))
    return train_ds, holdout, held


def _write_lines(path: str, lines: Sequence[str]) -> None:
    from ..utils import atomic_write_text
    atomic_write_text(path, ''.join(f'{x}\n' for x in lines))
