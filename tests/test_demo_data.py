"""Tests of the synthetic demo dataset (asl.data.demo and tools/make_demo_data.py)."""
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from asl.data import demo
from asl.data.demo import (DEFAULT_SIZES, DEMO_CLASSES, DEMO_PALETTE, IGNORE_INDEX,
                           DemoDataError, build_demo_data, dataset_stats, ensure_demo_data,
                           generate_sample, read_meta)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=12, num_val=4, num_holdout=3, size=64)


def file_hashes(root):
    """{relative path: sha256} of every file below ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def read_list(root, split):
    with open(os.path.join(root, 'splits', f'{split}.txt')) as f:
        return [line.strip() for line in f if line.strip()]


def load_label(root, folder, name):
    with Image.open(os.path.join(root, 'ann_dir', folder, name + '.png')) as im:
        assert im.mode == 'L'
        return np.asarray(im)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    """The default-size dataset (seed 0)."""
    root = str(tmp_path_factory.mktemp('a') / 'asl_demo')
    ensure_demo_data(root, seed=0)
    return root


def test_same_seed_gives_identical_files(demo_root, tmp_path):
    other = str(tmp_path / 'asl_demo')
    build_demo_data(other, seed=0)
    a, b = file_hashes(demo_root), file_hashes(other)
    n = DEFAULT_SIZES['num_train'] + DEFAULT_SIZES['num_val']
    assert len(a) == 2 * n + 4 + 1  # images, labels, 4 split lists, meta.json
    assert a == b


def test_content_does_not_depend_on_counts_or_order(demo_root, tmp_path):
    small = str(tmp_path / 'small')
    build_demo_data(small, seed=0, **SMALL)
    a, b = file_hashes(demo_root), file_hashes(small)
    pngs = [k for k in b if k.endswith('.png')]
    assert len(pngs) == 2 * (SMALL['num_train'] + SMALL['num_val'])
    assert all(a[k] == b[k] for k in pngs)
    # generating a single sample out of order gives the same pixels
    img, lab = generate_sample(0, 'val', 3)
    with Image.open(os.path.join(demo_root, 'img_dir', 'val', 'val_0003.png')) as im:
        np.testing.assert_array_equal(np.asarray(im), img)
    np.testing.assert_array_equal(load_label(demo_root, 'val', 'val_0003'), lab)


def test_different_seed_gives_different_data(demo_root, tmp_path):
    other = str(tmp_path / 'seed1')
    build_demo_data(other, seed=1, **SMALL)
    a, b = file_hashes(demo_root), file_hashes(other)
    pngs = [k for k in b if k.endswith('.png')]
    assert pngs and all(a[k] != b[k] for k in pngs)
    assert read_meta(other)['seed'] == 1
    assert read_list(other, 'holdout') != read_list(demo_root, 'holdout')[:SMALL['num_holdout']]


def test_layout_and_meta(demo_root):
    meta = read_meta(demo_root)
    for k, v in DEFAULT_SIZES.items():
        assert meta[k] == v
    assert meta['seed'] == 0
    assert meta['generator_version'] == demo.GENERATOR_VERSION
    assert meta['classes'] == list(DEMO_CLASSES)
    assert meta['palette'] == [list(p) for p in DEMO_PALETTE]
    assert len(DEMO_PALETTE) == len(DEMO_CLASSES)
    assert meta['ignore_index'] == IGNORE_INDEX == 255
    assert set(meta['splits']) == {'train', 'train_proxy', 'holdout', 'val'}
    for split, stats in meta['splits'].items():
        assert stats['num_images'] == len(read_list(demo_root, split))
        assert sum(stats['class_freq'].values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 < stats['ignore_fraction'] < 0.1
    for split in ('train', 'val'):
        for name in read_list(demo_root, split):
            path = os.path.join(demo_root, 'img_dir', split, name + '.png')
            with Image.open(path) as im:
                assert im.mode == 'RGB' and im.size == (64, 64)
            with open(path, 'rb') as f:
                data = f.read()
            assert b'tIME' not in data and b'tEXt' not in data  # no metadata chunks
            assert load_label(demo_root, split, name).shape == (64, 64)
    with open(os.path.join(demo_root, 'meta.json')) as f:
        assert json.load(f) == meta


def test_splits_do_not_overlap(demo_root):
    train = read_list(demo_root, 'train')
    holdout = read_list(demo_root, 'holdout')
    proxy = read_list(demo_root, 'train_proxy')
    val = read_list(demo_root, 'val')
    assert len(train) == DEFAULT_SIZES['num_train'] and len(val) == DEFAULT_SIZES['num_val']
    assert len(holdout) == DEFAULT_SIZES['num_holdout']
    for names in (train, holdout, proxy, val):
        assert len(set(names)) == len(names)
    assert set(holdout) <= set(train)
    assert set(proxy) == set(train) - set(holdout)
    assert not set(proxy) & set(holdout)
    assert not set(train) & set(val)
    assert holdout == sorted(holdout) and proxy == sorted(proxy)
    assert holdout == demo.holdout_names(0, len(train), len(holdout))
    # no identical image (or image file) in two places
    hashes = file_hashes(os.path.join(demo_root, 'img_dir'))
    assert len(set(hashes.values())) == len(hashes) == len(train) + len(val)
    by_split = {s: {hashes[os.path.join('train' if s != 'val' else 'val', n + '.png')]
                    for n in read_list(demo_root, s)}
                for s in ('holdout', 'train_proxy', 'val')}
    assert not by_split['holdout'] & by_split['train_proxy']
    assert not (by_split['holdout'] | by_split['train_proxy']) & by_split['val']


def test_label_values_classes_and_ignore(demo_root):
    num_classes = len(DEMO_CLASSES)
    allowed = set(range(num_classes)) | {IGNORE_INDEX}
    seen = {}
    for split in ('train', 'val'):
        present = np.zeros(256, np.int64)
        for name in read_list(demo_root, split):
            lab = load_label(demo_root, split, name)
            assert lab.dtype == np.uint8
            present += np.bincount(lab.ravel(), minlength=256)
        assert set(np.flatnonzero(present)) <= allowed
        seen[split] = present
    # every class appears in train (and in val), background dominates, some pixels ignored
    for split in ('train', 'val'):
        counts = seen[split][:num_classes]
        assert (counts > 0).all(), (split, counts)
        assert counts.argmax() == 0 and counts[0] > 0.6 * counts.sum()
        assert seen[split][IGNORE_INDEX] > 0
    # the hold-out and the proxy training set also contain every class
    for split in ('holdout', 'train_proxy'):
        assert all(v > 0 for v in read_meta(demo_root)['splits'][split]['class_pixels'].values())
    # imbalance: thin and small classes are rare
    freq = read_meta(demo_root)['splits']['train']['class_freq']
    assert freq['spot'] < freq['line'] < freq['building'] < freq['blob'] < freq['background']
    assert freq['spot'] < 0.01


def test_meta_statistics_match_files(demo_root):
    assert dataset_stats(demo_root) == read_meta(demo_root)['splits']


def test_ignore_bands_are_thin_and_next_to_objects(demo_root):
    total = near_total = 0
    for name in read_list(demo_root, 'train')[:60]:
        lab = load_label(demo_root, 'train', name)
        ign = lab == IGNORE_INDEX
        assert ign.mean() < 0.15, name
        # ignored pixels form 1-2 px bands around blobs and buildings (a band may also
        # swallow a small occluded sliver of another object, hence "almost all")
        near = demo._dilate((lab == 1) | (lab == 2), 2)
        total += int(ign.sum())
        near_total += int((ign & near).sum())
    assert total > 0 and near_total >= 0.95 * total


def test_ensure_is_idempotent_and_refuses_mismatch(tmp_path):
    root = str(tmp_path / 'd')
    meta = ensure_demo_data(root, seed=3, **SMALL)
    before = file_hashes(root)
    mtime = os.stat(os.path.join(root, 'meta.json')).st_mtime_ns
    assert ensure_demo_data(root, seed=3, **SMALL) == meta
    assert os.stat(os.path.join(root, 'meta.json')).st_mtime_ns == mtime
    with pytest.raises(DemoDataError, match='seed'):
        ensure_demo_data(root, seed=4, **SMALL)
    with pytest.raises(DemoDataError, match='num_val'):
        ensure_demo_data(root, seed=3, **{**SMALL, 'num_val': 5})
    assert file_hashes(root) == before
    meta4 = ensure_demo_data(root, seed=4, force=True, **SMALL)
    assert meta4['seed'] == 4 and read_meta(root) == meta4
    assert sorted(os.listdir(tmp_path)) == ['d']  # no temporary directories left
    # a deleted file makes the dataset incomplete, which is a mismatch too
    os.remove(os.path.join(root, 'img_dir', 'val', 'val_0000.png'))
    with pytest.raises(DemoDataError, match='img_dir/val'):
        ensure_demo_data(root, seed=4, **SMALL)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    original = demo.generate_sample

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(demo, 'generate_sample', flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(str(tmp_path / 'd'), seed=0, **SMALL)
    assert os.listdir(tmp_path) == []


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError):
        ensure_demo_data(str(tmp_path / 'd'), seed=0, num_train=10, num_val=2, num_holdout=10)
    with pytest.raises(ValueError):
        ensure_demo_data(str(tmp_path / 'd'), seed=-1)
    assert os.listdir(tmp_path) == []


def _load_tool():
    path = os.path.join(REPO, 'tools', 'make_demo_data.py')
    spec = importlib.util.spec_from_file_location('make_demo_data', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli(tmp_path, capsys):
    tool = _load_tool()
    out = str(tmp_path / 'asl_demo')
    args = ['--out', out, '--num-train', '12', '--num-val', '4', '--num-holdout', '3']
    assert tool.main(args) == 0
    text = capsys.readouterr().out
    assert 'generating' in text and 'background' in text and 'spot' in text
    hashes = file_hashes(out)
    assert read_meta(out)['num_train'] == 12

    assert tool.main(args) == 0
    assert 'nothing to do' in capsys.readouterr().out
    assert file_hashes(out) == hashes

    assert tool.main(args + ['--seed', '1']) == 1
    captured = capsys.readouterr()
    assert 'seed' in captured.err and '--force' in captured.err
    assert file_hashes(out) == hashes

    assert tool.main(args + ['--seed', '1', '--force']) == 0
    assert read_meta(out)['seed'] == 1
    assert file_hashes(out) != hashes
    assert sorted(os.listdir(tmp_path)) == ['asl_demo']


def test_more_classes_are_variants_of_the_object_kinds(tmp_path):
    """``--classes 21`` (the paper's proxy task has 21): every class is drawn, each label
    is a class or the ignore label, and the five-class images are the demo's own."""
    root = str(tmp_path / 'c21')
    meta = build_demo_data(root, seed=0, num_train=24, num_val=4, num_holdout=4, size=96,
                           num_classes=21)
    assert meta['num_classes'] == 21 and len(meta['classes']) == 21
    assert len(meta['palette']) == 21 and meta['classes'][:5] == list(DEMO_CLASSES)
    assert meta['classes'][5:9] == ['blob2', 'building2', 'line2', 'spot2']
    seen = set()
    for name in read_list(root, 'train'):
        label = load_label(root, 'train', name)
        seen |= set(np.unique(label).tolist())
    assert seen == set(range(21)) | {IGNORE_INDEX}
    # a variant has its own colour: the mean colour of blob2 pixels differs from blob's
    img, lab = zip(*(generate_sample(0, 'train', i, 96, 21) for i in range(24)))
    img, lab = np.stack(img).reshape(-1, 3), np.stack(lab).reshape(-1)
    assert np.abs(img[lab == 1].mean(0) - img[lab == 5].mean(0)).max() > 20
    for i in range(3):
        a, b = generate_sample(0, 'val', i, 64), generate_sample(0, 'val', i, 64, 5)
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    with pytest.raises(ValueError, match='num_classes must be in'):
        build_demo_data(str(tmp_path / 'bad'), seed=0, num_classes=4)


def test_datasets_written_before_num_classes_still_match(tmp_path):
    root = str(tmp_path / 'old')
    build_demo_data(root, **SMALL)
    meta = read_meta(root)
    del meta['num_classes']  # as written by the earlier generator
    with open(os.path.join(root, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    assert demo.demo_data_status(root, 0, **SMALL)[0] == 'match'
    status, _, diffs = demo.demo_data_status(root, 0, num_classes=21, **SMALL)
    assert status == 'mismatch' and diffs == ['num_classes: existing 5, requested 21']
