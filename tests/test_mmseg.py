"""AutoSegLoss and ASLMetric inside real MMSeg 1.x objects."""
import os
import socket

import numpy as np
import pytest
import torch

mmseg = pytest.importorskip('mmseg')

import asl.mmseg  # noqa: E402,F401  (registers the modules)
from mmengine.structures import PixelData  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import METRICS, MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from mmseg.utils import register_all_modules  # noqa: E402

from conftest import blob_labels  # noqa: E402

register_all_modules(init_default_scope=True)

METRICS6 = ['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1']
NUM_CLASSES = 4


def tiny_model(loss_decode, aux_loss=None):
    norm = dict(type='BN', requires_grad=True)
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.0] * 3, std=[1.0] * 3,
                               size=(32, 32), pad_val=0, seg_pad_val=255),
        backbone=dict(type='ResNetV1c', depth=18, base_channels=8, stem_channels=8,
                      num_stages=2, out_indices=(0, 1), strides=(1, 2), dilations=(1, 1),
                      norm_cfg=norm, contract_dilation=True),
        decode_head=dict(type='FCNHead', in_channels=16, in_index=1, channels=16, num_convs=1,
                         concat_input=False, num_classes=NUM_CLASSES, norm_cfg=norm,
                         align_corners=False, loss_decode=loss_decode),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    if aux_loss is not None:
        cfg['auxiliary_head'] = dict(type='FCNHead', in_channels=8, in_index=0, channels=8,
                                     num_convs=1, concat_input=False,
                                     num_classes=NUM_CLASSES, norm_cfg=norm,
                                     align_corners=False, loss_decode=aux_loss)
    return MODELS.build(cfg)


def fixed_batch(n=4, seed=0):
    label = blob_labels(n, NUM_CLASSES, 32, 32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(NUM_CLASSES + 1, 3, generator=g) * 255
    img = colors[torch.where(label == 255, NUM_CLASSES, label)].permute(0, 3, 1, 2)
    img = img + torch.randn(img.shape, generator=g) * 20
    samples = []
    for i in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[i:i + 1])
        s.set_metainfo(dict(img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32)))
        samples.append(s)
    return list(img), samples


def train_steps(model, steps=15):
    inputs, samples = fixed_batch()
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    history = []
    for _ in range(steps):
        losses = model.loss(data['inputs'], data['data_samples'])
        total = sum(v for k, v in losses.items() if 'loss' in k)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v) for k, v in losses.items() if 'loss' in k})
    return history


@pytest.mark.parametrize('metric', METRICS6)
def test_autosegloss_trains_encoder_decoder(metric):
    torch.manual_seed(0)
    loss = dict(type='AutoSegLoss', target_metric=metric, theta='paper', loss_weight=1.0)
    hist = train_steps(tiny_model(loss))
    values = [h['decode.loss_asl'] for h in hist]
    assert all(np.isfinite(values))
    assert values[-1] < values[0], values


@pytest.mark.parametrize('metric', METRICS6)
def test_autosegloss_with_cross_entropy_and_auxiliary_head(metric):
    torch.manual_seed(0)
    decode = [dict(type='CrossEntropyLoss', loss_weight=1.0),
              dict(type='AutoSegLoss', target_metric=metric, theta='paper', loss_weight=1.0)]
    aux = dict(type='AutoSegLoss', target_metric=metric, theta='paper', loss_weight=0.4)
    hist = train_steps(tiny_model(decode, aux), steps=10)
    keys = set(hist[0])
    assert {'decode.loss_ce', 'decode.loss_asl', 'aux.loss_asl'} <= keys
    for key in keys:
        assert all(np.isfinite(h[key]) for h in hist), key
    total = [sum(h.values()) for h in hist]
    assert total[-1] < total[0], total


def test_official_keyword_set_and_num_class_check():
    theta = asl.PAPER_PRESETS['mIoU']['theta']
    loss = MODELS.build(dict(type='AutoSegLoss', num_class=NUM_CLASSES, theta=theta,
                             parameterization='bezier', target_metric='mIoU', drop_bg=False,
                             tol=5, loss_weight=1.0))
    assert loss.loss_name == 'loss_asl'
    label = blob_labels(2, NUM_CLASSES, 16, 16)
    out = loss(torch.randn(2, NUM_CLASSES, 16, 16), label, ignore_index=255)
    assert out.dim() == 0 and 0 <= out.item() <= 1
    with pytest.raises(ValueError, match=r'num_class=4 but the logits have 5 classes'):
        loss(torch.randn(2, 5, 16, 16), label)
    with pytest.raises(ValueError, match=r"loss_name must start with 'loss_'"):
        MODELS.build(dict(type='AutoSegLoss', loss_name='asl'))
    with pytest.raises(ValueError, match=r'theta has 6 numbers, expected 12'):
        MODELS.build(dict(type='AutoSegLoss', theta=theta[:6]))


def test_loss_under_autocast_is_float32():
    loss = MODELS.build(dict(type='AutoSegLoss', target_metric='mIoU', theta='paper'))
    logits = torch.randn(2, NUM_CLASSES, 16, 16).bfloat16().requires_grad_()
    label = blob_labels(2, NUM_CLASSES, 16, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(logits, label)
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(logits.grad.float()).all()


def random_predictions(n=6, seed=0, c=NUM_CLASSES, size=24):
    labels = blob_labels(n, c, size, size, seed=seed)
    preds = blob_labels(n, c, size, size, seed=seed + 100, ignore_frac=0, all_classes=False)
    return preds, labels


def test_exact_metric_agrees_with_iou_metric():
    preds, labels = random_predictions()
    areas = [IoUMetric.intersect_and_union(p, l, NUM_CLASSES, 255) for p, l in zip(preds, labels)]
    totals = [sum(a[i] for a in areas) for i in range(4)]
    ref = IoUMetric.total_area_to_metrics(*totals, metrics=['mIoU'], nan_to_num=None, beta=1)
    em = asl.ExactMetrics(['mIoU', 'mAcc', 'gAcc'], NUM_CLASSES)
    for p, l in zip(preds, labels):
        em.update(p, l)
    out = em.compute()
    assert out['mIoU'] == pytest.approx(float(np.nanmean(ref['IoU'])), abs=1e-6)
    assert out['mAcc'] == pytest.approx(float(np.nanmean(ref['Acc'])), abs=1e-6)
    assert out['gAcc'] == pytest.approx(float(ref['aAcc']), abs=1e-6)
    per_class = em.per_class()['mIoU']
    assert np.allclose(per_class, np.asarray(ref['IoU']), atol=1e-6, equal_nan=True)


def metric_samples(preds, labels):
    return [dict(pred_sem_seg=dict(data=p[None]), gt_sem_seg=dict(data=l[None]))
            for p, l in zip(preds, labels)]


def test_asl_metric_in_registry_matches_iou_metric_and_logs_table(tmp_path):
    from mmengine.logging import MMLogger
    log_file = tmp_path / 'eval.log'
    MMLogger.get_instance('asl_metric_test', log_file=str(log_file))
    preds, labels = random_predictions(seed=3)
    ours = METRICS.build(dict(type='ASLMetric'))
    ref = IoUMetric(iou_metrics=['mIoU'])
    meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    ours.dataset_meta = meta
    ref.dataset_meta = dict(meta, palette=[[0, 0, 0]] * NUM_CLASSES)
    samples = metric_samples(preds, labels)
    ours.process({}, samples)
    ref.process({}, samples)
    out = ours.evaluate(len(samples))
    expected = ref.evaluate(len(samples))
    assert set(out) == set(METRICS6)
    assert out['mIoU'] == pytest.approx(expected['mIoU'], abs=0.01)
    assert out['mAcc'] == pytest.approx(expected['mAcc'], abs=0.01)
    assert out['gAcc'] == pytest.approx(expected['aAcc'], abs=0.01)
    logged = log_file.read_text()
    assert 'per class results' in logged and 'BF1' in logged and 'c3' in logged


def test_asl_metric_rejects_bad_formula_at_build():
    with pytest.raises(ValueError, match="unknown name 'mIoUx'"):
        METRICS.build(dict(type='ASLMetric', metric_names=['mIoUx']))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _eval_rank(rank, world, port, path):
    import torch.distributed as dist
    import asl.mmseg  # noqa: F401
    from mmseg.registry import METRICS as REG
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    preds, labels = random_predictions(n=7, seed=11)
    metric = REG.build(dict(type='ASLMetric'))
    metric.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    idx = list(range(rank, 7, world))  # uneven shards, like a distributed sampler
    metric.process({}, metric_samples(preds[idx], labels[idx]))
    out = metric.evaluate(7)
    torch.save(out, f'{path}.{rank}')
    dist.destroy_process_group()


def test_asl_metric_multi_process(tmp_path):
    port = _free_port()
    torch.multiprocessing.spawn(_eval_rank, args=(2, port, str(tmp_path / 'out')), nprocs=2)
    outs = [torch.load(f'{tmp_path / "out"}.{r}') for r in range(2)]
    preds, labels = random_predictions(n=7, seed=11)
    single = METRICS.build(dict(type='ASLMetric'))
    single.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    single.process({}, metric_samples(preds, labels))
    expected = single.evaluate(7)
    for out in outs:
        for k, v in expected.items():
            assert out[k] == pytest.approx(v, abs=1e-9), k


def test_mmengine_checkpoint_contents_load_with_weights_only(tmp_path):
    """Resume on torch >= 2.6 loads MMEngine's message hub (HistoryBuffer, numpy)."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('asl_ckpt_test')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/loss', 0.25)
    hub.update_info('iter', np.int64(7))
    path = tmp_path / 'ckpt.pth'
    torch.save({'message_hub': hub.state_dict(), 'meta': {'seed': np.float64(1.0)}}, path)
    loaded = torch.load(path, weights_only=True)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert buf.current() == 0.25 and buf.mean() == pytest.approx(0.375)
    assert loaded['meta']['seed'] == 1.0
