"""Every config under configs/retrain and configs/search loads, builds and does what its
file name says (loss, data set, schedule, evaluator, search settings).

File names read ``<model>_<backbone>_<loss>_<gpus>xb<batch>-<iters>_<data>-<crop>.py``
with ``<loss>`` one of ``ce``, ``dice``, ``lovasz``, ``jml`` (Jaccard metric loss), ``ce+<one
of those>``, ``asl-<m>[+<m>]`` (AutoSegLoss with the published parameters) or
``search-<m>`` (a search's proxy training); the official
project's short names (``<m>_bezier_10k.py``, ``<m>_bezier_lr=0.2_eps=0.2.py``) are
aliases of the PASCAL VOC configs.
"""
import copy
import functools
import glob
import json
import os
import re

import pytest

pytest.importorskip('mmseg')

import torch  # noqa: E402
from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmseg.registry import METRICS, MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import asl.mmseg  # noqa: E402,F401  (registers the modules)
from asl.mmseg.loss import AutoSegLoss  # noqa: E402
from asl.loss.presets import PAPER_PRESETS  # noqa: E402
from asl.search.settings import parse_search_section  # noqa: E402
from asl.search.trial import check_surrogate, set_trial_loss  # noqa: E402

register_all_modules(init_default_scope=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
METRICS6 = ['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1']
SHORT = {m.lower(): m for m in METRICS6}

#: data set token -> (number of classes, retrain crop size, search hold-out size)
DATASETS = {
    'voc12aug': (21, (512, 512), 1500),
    'cityscapes': (19, (512, 1024), 500),
    'asldemo': (5, None, None),
    'camvid': (11, None, None),
}
PAPER_DATA = ('voc12aug', 'cityscapes')
CANONICAL = re.compile(r'(?P<model>[^_]+)_(?P<backbone>[^_]+)_(?P<loss>[^_]+)_'
                       r'(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iters>\d+k?)_'
                       r'(?P<data>[a-z0-9]+)-(?P<crop>\d+x\d+)')
RETRAIN_ALIAS = re.compile(r'(?P<m>[a-z0-9]+)_bezier_10k')
SEARCH_ALIAS = re.compile(r'(?P<m>[a-z0-9]+)_bezier_lr=0\.2_eps=0\.2')
SEARCH_KEYS = {'target_metric', 'parameterization', 'num_pieces', 'tol', 'drop_bg', 'init_mu',
               'sigma', 'lr', 'num_samples', 'num_steps', 'ppo_epochs', 'clip_eps', 'baseline',
               'holdout', 'trial_time_limit', 'max_retries', 'gpus_per_trial'}


def _list(kind):
    out = []
    for p in sorted(glob.glob(os.path.join(CONFIGS, kind, '**', '*.py'), recursive=True)):
        rel = os.path.relpath(p, CONFIGS)
        if not any(part.startswith('_') for part in rel.split(os.sep)):
            out.append(rel)
    return out


RETRAIN = _list('retrain')
SEARCH = _list('search')
ALL = RETRAIN + SEARCH


def alias_target(rel):
    """The canonical VOC config a short official name stands for (None if not an alias)."""
    kind, stem = rel.split(os.sep)[0], os.path.splitext(os.path.basename(rel))[0]
    if os.path.dirname(rel) != kind:
        return None
    if kind == 'retrain' and RETRAIN_ALIAS.fullmatch(stem):
        m = RETRAIN_ALIAS.fullmatch(stem)['m']
        return f'retrain/voc12aug/deeplabv3plus_r101-d8_asl-{m}_4xb8-10k_voc12aug-512x512.py'
    if kind == 'search' and SEARCH_ALIAS.fullmatch(stem):
        m = SEARCH_ALIAS.fullmatch(stem)['m']
        return f'search/voc12aug/deeplabv3plus_r50-d8_search-{m}_1xb32-1k_voc12aug-128x128.py'
    return None


def name_spec(rel):
    """What the file name of a config (or of its alias target) promises."""
    target = alias_target(rel) or rel
    stem = os.path.splitext(os.path.basename(target))[0]
    match = CANONICAL.fullmatch(stem)
    if match is None:
        raise ValueError(f'config name {rel!r} follows neither the MMSeg naming scheme nor '
                         f'one of the official short names')
    spec = match.groupdict()
    spec['kind'] = target.split(os.sep)[0]
    return spec


@functools.lru_cache(maxsize=None)
def load(rel):
    return Config.fromfile(os.path.join(CONFIGS, rel))


def _no_sync_bn(obj):
    """A copy of a config with every SyncBN replaced by BN (so it builds without a
    process group)."""
    if isinstance(obj, dict):
        out = {k: _no_sync_bn(v) for k, v in obj.items()}
        if out.get('type') == 'SyncBN':
            out['type'] = 'BN'
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_no_sync_bn(v) for v in obj)
    return obj


def _find(pipeline, type_name):
    found = [t for t in pipeline if t['type'] == type_name]
    assert len(found) == 1, (type_name, pipeline)
    return found[0]


def _train_datasets(cfg):
    ds = cfg.train_dataloader.dataset
    return list(ds.datasets) if ds.type == 'ConcatDataset' else [ds]


def _is_identity(curve):
    x = torch.linspace(0, 1, 11)
    return torch.allclose(curve(x), x)


def _check_asl_loss(loss, metric, cfg, search, rel):
    assert isinstance(loss, AutoSegLoss), (rel, loss)
    sur = loss.surrogate
    assert sur.name == metric, (rel, sur.name)
    if search is None:  # the published parameters (theta='paper')
        preset = PAPER_PRESETS[metric]
        assert sur.parameterization == preset['parameterization']
        assert sur.num_pieces == preset['num_pieces']
        assert (sur.compiled.tol, sur.compiled.drop_bg) == (preset['tol'], preset['drop_bg'])
        coords = torch.cat([c.points.reshape(-1).double() for c in sur.curves])
        assert torch.allclose(coords, torch.tensor(preset['theta'], dtype=torch.float64),
                              atol=1e-6), rel
    else:  # a search's proxy: identity curves with the search's options
        assert sur.parameterization == search['parameterization']
        assert sur.num_pieces == search['num_pieces']
        assert (sur.compiled.tol, sur.compiled.drop_bg) == (search['tol'], search['drop_bg'])
        assert all(_is_identity(c) for c in sur.curves), rel
    # one small batch through the loss: a finite scalar with a gradient
    num_classes = DATASETS[name_spec(rel)['data']][0]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, num_classes, 24, 24, generator=g, requires_grad=True)
    label = torch.randint(0, num_classes, (2, 24, 24), generator=g)
    value = loss(logits, label, ignore_index=255)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_configs_found():
    names = {os.path.basename(r) for r in ALL}
    for data, crop in (('voc12aug', '512x512'), ('cityscapes', '512x1024')):
        for loss in ['ce'] + [f'asl-{m}' for m in SHORT] + ['asl-miou+biou', 'asl-miou+bf1']:
            assert f'deeplabv3plus_r101-d8_{loss}_4xb8-10k_{data}-{crop}.py' in names
        for m in SHORT:
            assert f'deeplabv3plus_r50-d8_search-{m}_1xb32-1k_{data}-128x128.py' in names
    for m in SHORT:
        assert f'{m}_bezier_10k.py' in names
        assert f'{m}_bezier_lr=0.2_eps=0.2.py' in names
    # a name must identify one config (ASL_retrain.sh and ASL_search.sh look names up)
    for group in (RETRAIN, SEARCH):
        base = [os.path.basename(r) for r in group]
        assert len(base) == len(set(base))


@pytest.mark.parametrize('rel', ALL)
def test_name_is_understood(rel):
    spec = name_spec(rel)
    assert spec['data'] in DATASETS, rel
    assert spec['kind'] == rel.split(os.sep)[0]
    assert spec['loss'].startswith('search-') == (spec['kind'] == 'search'), rel


@pytest.mark.parametrize('rel', [r for r in ALL if alias_target(r)])
def test_alias_equals_its_target(rel):
    target = alias_target(rel)
    assert os.path.isfile(os.path.join(CONFIGS, target)), target
    assert load(rel)._cfg_dict.to_dict() == load(target)._cfg_dict.to_dict()


_LAST_MODEL = {}


def _build_without_losses(model_cfg):
    """The model of a config with its heads' losses left out (they are built on their own),
    reused by the next config with the same model: configs that differ only in their
    losses build one R101 (about 3 s) between them."""
    bare = copy.deepcopy(model_cfg)
    for key in ('decode_head', 'auxiliary_head'):
        heads = bare.get(key)
        for head in (heads if isinstance(heads, list) else [heads] if heads else []):
            head.pop('loss_decode', None)
    key = json.dumps(bare, sort_keys=True, default=repr)
    if key not in _LAST_MODEL:
        _LAST_MODEL.clear()
        _LAST_MODEL[key] = MODELS.build(ConfigDict(bare))
    return _LAST_MODEL[key]


def _head_losses(head_cfg):
    loss = head_cfg['loss_decode']
    return [MODELS.build(ConfigDict(x)) for x in (loss if isinstance(loss, list) else [loss])]


# an alias is proven equal to its target (test_alias_equals_its_target): not built again
@pytest.mark.parametrize('rel', [r for r in ALL if not alias_target(r)])
def test_model_builds_with_the_named_losses(rel):
    spec, cfg = name_spec(rel), load(rel)
    assert cfg.custom_imports['imports'] == ['asl.mmseg']
    model_cfg = _no_sync_bn(cfg.model.to_dict())
    search = cfg.get('search') if spec['kind'] == 'search' else None
    if search is not None:  # a search's proxy loss comes from its search section
        settings = parse_search_section(search.to_dict(), rel)
        set_trial_loss(model_cfg, settings, check_surrogate(settings)[1])
    # built without init_weights(): no pretrained weights are downloaded
    model = _build_without_losses(model_cfg)
    num_classes = DATASETS[spec['data']][0]
    assert model.decode_head.num_classes == num_classes
    assert model.auxiliary_head.num_classes == num_classes
    if spec['backbone'] != 'r18tiny-d8':  # the CPU model is trained from scratch
        depth = int(re.fullmatch(r'r(\d+)-d8', spec['backbone'])[1])
        assert cfg.model.backbone.depth == depth
        assert cfg.model.pretrained == f'open-mmlab://resnet{depth}_v1c'
        assert cfg.model.backbone.norm_cfg.type == 'SyncBN'

    token = spec['loss']
    for head, weight in (('decode_head', 1.0), ('auxiliary_head', 0.4)):
        losses = _head_losses(model_cfg[head])
        names = [loss.loss_name for loss in losses]
        assert len(set(names)) == len(names) and all(n.startswith('loss_') for n in names)
        assert all(loss.loss_weight == pytest.approx(weight) for loss in losses), rel
        expected = {'ce': 'CrossEntropyLoss', 'dice': 'DiceLoss', 'lovasz': 'LovaszLoss',
                    'jml': 'JaccardMetricLoss'}  # 'ce+jml': both, in this order
        if token.startswith(('asl-', 'search-')):
            # the searched metric(s), then hand-designed losses trained beside them
            # ('search-miou+ce+lovasz': search.ce_weight and search.extra_losses)
            parts = token.split('-', 1)[1].split('+')
            # a fixed surrogate in search.extra_losses is named by its metric too
            fixed = [d['target_metric'].lower() for d in
                     (search.get('extra_losses') or []) if d['type'] == 'AutoSegLoss'] \
                if search is not None else []
            parts = [m for m in parts if m not in fixed]
            metrics = [SHORT[m] for m in parts if m in SHORT]
            extras = [expected[m] for m in parts if m not in SHORT]
            assert parts == [m.lower() for m in metrics] + [m for m in parts if m not in SHORT]
            assert len(losses) == len(metrics) + len(extras) + len(fixed), rel
            for loss, metric in zip(losses, metrics):
                _check_asl_loss(loss, metric, cfg, search, rel)
            rest = losses[len(metrics):]
            assert [type(loss).__name__ for loss in rest
                    if type(loss).__name__ != 'AutoSegLoss'] == extras, rel
            assert sum(type(loss).__name__ == 'AutoSegLoss' for loss in rest) == len(fixed)
        else:
            assert [type(loss).__name__ for loss in losses] == \
                [expected[t] for t in token.split('+')], rel


@pytest.mark.parametrize('rel', ALL)
def test_evaluates_all_six_metrics(rel):
    spec, cfg = name_spec(rel), load(rel)
    tol = 2 if spec['backbone'] == 'r18tiny-d8' else 5  # the CPU scale's small images
    for key in ('val_evaluator', 'test_evaluator'):
        ev = cfg[key]
        assert ev.type == 'ASLMetric' and list(ev.metric_names) == METRICS6, (rel, ev)
        assert ev.get('tol', 5) == tol
        METRICS.build(copy.deepcopy(ev))


@pytest.mark.parametrize('rel', [r for r in RETRAIN if name_spec(r)['data'] in PAPER_DATA])
def test_retrain_schedule(rel):
    spec, cfg = name_spec(rel), load(rel)
    assert (spec['gpus'], spec['batch'], spec['iters']) == ('4', '8', '10k')
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 10000
    assert [s.type for s in cfg.param_scheduler] == ['PolyLR']
    poly = cfg.param_scheduler[0]
    assert (poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == \
        (0.9, 1e-4, 0, 10000, False)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.02, 0.9, 5e-4)
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys.decode_head.lr_mult == 10 and keys.auxiliary_head.lr_mult == 10
    crop = DATASETS[spec['data']][1]
    assert spec['crop'] == f'{crop[0]}x{crop[1]}'
    assert tuple(cfg.model.data_preprocessor.size) == crop
    for ds in _train_datasets(cfg):
        assert tuple(_find(ds.pipeline, 'RandomCrop').crop_size) == crop


@pytest.mark.parametrize('rel', SEARCH)
def test_search_section(rel):
    spec, cfg = name_spec(rel), load(rel)
    metric = SHORT[spec['loss'].split('-', 1)[1].split('+')[0]]  # (then losses beside it)
    search = cfg.search
    assert isinstance(search, dict) and SEARCH_KEYS <= set(search), rel
    assert search['target_metric'] == metric
    # the training image list comes from ann_file: the search carves its hold-out there
    for ds in _train_datasets(cfg):
        assert ds.get('ann_file'), rel


@pytest.mark.parametrize('rel', [r for r in SEARCH if name_spec(r)['data'] in PAPER_DATA])
def test_paper_search_settings(rel):
    spec, cfg = name_spec(rel), load(rel)
    metric = SHORT[spec['loss'].split('-', 1)[1]]
    expected = dict(target_metric=metric, parameterization='bezier',
                    num_pieces=1 if metric == 'BF1' else 2, tol=5,
                    drop_bg=metric == 'BIoU', init_mu=None, sigma=0.2, lr=0.2,
                    num_samples=32, num_steps=12, ppo_epochs=60, clip_eps=0.2, baseline='mu',
                    # the paper's update and choice: asl's safeguards off
                    target_kl=None, max_mu_change=None, normalize_advantages=False,
                    rollback=None, reevaluate=None,
                    holdout=dict(num=DATASETS[spec['data']][2], seed=0),
                    trial_time_limit=3600, max_retries=2, gpus_per_trial=1,
                    # the official num_models_per_gpu=4
                    trials_per_gpu=4)
    search = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.search.items()}
    # the re-training config the search's result inherits: the matching R101 config
    retrain = search.pop('retrain_config')
    assert os.path.isfile(os.path.join(ROOT, retrain)), retrain
    assert f'_asl-{spec["loss"].split("-", 1)[1]}_' in retrain and 'r101' in retrain
    assert search == expected
    # the proxy training
    assert (spec['gpus'], spec['batch'], spec['iters'], spec['crop']) == \
        ('1', '32', '1k', '128x128')
    assert cfg.model.backbone.depth == 50
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.train_cfg.max_iters == 1000 and cfg.train_cfg.val_interval == 1000
    assert cfg.default_hooks.checkpoint.interval == 1000
    assert [s.type for s in cfg.param_scheduler] == ['PolyLR']
    poly = cfg.param_scheduler[0]
    assert (poly.power, poly.eta_min, poly.end) == (0.9, 1e-4, 1000)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.02, 0.9, 5e-4)
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert keys.decode_head.lr_mult == 10 and keys.auxiliary_head.lr_mult == 10
    assert tuple(cfg.model.data_preprocessor.size) == (128, 128)
    for ds in _train_datasets(cfg):
        assert tuple(_find(ds.pipeline, 'RandomCrop').crop_size) == (128, 128)
        assert tuple(_find(ds.pipeline, 'RandomResize').scale) == (512, 128)
    resize = _find(cfg.val_dataloader.dataset.pipeline, 'Resize')
    assert tuple(resize.scale) == (512, 128) and resize.keep_ratio


@pytest.mark.parametrize('rel', [
    'retrain/voc12aug/deeplabv3plus_r101-d8_ce_4xb8-10k_voc12aug-512x512.py',
    'search/cityscapes/deeplabv3plus_r50-d8_search-miou_1xb32-1k_cityscapes-128x128.py',
])
def test_heads_learn_ten_times_faster(rel):
    # the schedule's optimizer on the small demo model (same head names, fast to build)
    demo = load('retrain/demo/deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')
    model = MODELS.build(ConfigDict(_no_sync_bn(demo.model.to_dict())))
    wrapper = build_optim_wrapper(model, copy.deepcopy(load(rel).optim_wrapper))
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lrs.setdefault(names[id(p)].split('.')[0], set()).add(round(group['lr'], 10))
    assert lrs == {'backbone': {0.02}, 'decode_head': {0.2}, 'auxiliary_head': {0.2}}
